"""PlainAdapter: plain chat for small models that cannot keep DSPy's field markers or JSON.

Measured on the embedded SmolLM2-135M (810 calls): DSPy's ChatAdapter format was kept 0-2% of the time and the
JSON fallback mostly returned dicts or copied the ``{answer}`` placeholder, while a plain chat message got a
usable text answer 100% of the time. This adapter sends the instruction as the system message and the inputs
as plain text, and takes the whole reply as the value of the signature's single output field.
"""

from typing import Any

from dspy.adapters.chat_adapter import ChatAdapter
from dspy.adapters.utils import parse_value
from dspy.signatures.signature import Signature
from dspy.utils.exceptions import AdapterParseError

# The instruction DSPy writes for a signature that has none: it describes field names, not the task, and only
# confuses a small model; the model's chat template supplies its own default system prompt instead.
_DSPY_DEFAULT_INSTRUCTION = "Given the fields"


def render_inputs(inputs: dict[str, Any]) -> str:
    """Inputs as plain text: one field is its value alone; several are ``Name:`` blocks, in order."""
    if len(inputs) == 1:
        return str(next(iter(inputs.values())))
    return "\n\n".join(f"{name.replace('_', ' ').capitalize()}:\n{value}" for name, value in inputs.items())


class PlainAdapter(ChatAdapter):
    """Formats a single-output signature as a plain chat turn, and reads the whole reply as that output.

    Signatures with several output fields (e.g. ChainOfThought's ``reasoning`` + ``answer``) are beyond it: it
    raises ``AdapterParseError`` for them unless the reply happens to use DSPy's ``[[ ## field ## ]]`` markers.
    For the fusor, build it with ``compare=False`` so that the task's answer is its only output.

    Example:
        >>> lm = scripted_lm(lambda call: "Red.")   # a small model's plain reply, no field markers
        >>> with dspy.context(lm=lm, adapter=PlainAdapter()):
        ...     dspy.Predict("question -> answer")(question="Name a primary color.").answer
        'Red.'
        >>> lm.engine.calls[0].user
        'Name a primary color.'
    """

    def __init__(self, callbacks: list | None = None):
        super().__init__(callbacks=callbacks, use_json_adapter_fallback=False)

    def format(self, signature: type[Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict]:
        messages = super().format(signature, demos, inputs)
        return [m for m in messages if not (m["role"] == "system" and not m["content"])]

    def format_system_message(self, signature: type[Signature]) -> str:
        instructions = (signature.instructions or "").strip()
        return "" if instructions.startswith(_DSPY_DEFAULT_INSTRUCTION) else instructions

    def format_user_message_content(
        self,
        signature: type[Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        names = [name for name in signature.input_fields if name in inputs]
        # A small model answers what it read last: a fusor's candidates first, the task's own inputs after them.
        names.sort(key=lambda name: name != "candidates")
        body = render_inputs({name: inputs[name] for name in names})
        return "\n\n".join(part for part in (prefix, body, suffix) if part).strip()

    def format_assistant_message_content(
        self, signature: type[Signature], outputs: dict[str, Any], missing_field_message: str | None = None
    ) -> str:
        if len(signature.output_fields) == 1:
            return str(outputs.get(next(iter(signature.output_fields)), missing_field_message or ""))
        return super().format_assistant_message_content(signature, outputs, missing_field_message)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        if len(signature.output_fields) != 1:
            return super().parse(signature, completion)
        name, field = next(iter(signature.output_fields.items()))
        text = completion.strip()
        if not text:
            raise AdapterParseError(adapter_name="PlainAdapter", signature=signature, lm_response=completion,
                                    message="The reply was empty.")  # fmt: skip
        try:
            return {name: parse_value(text, field.annotation)}
        except ValueError as error:
            raise AdapterParseError(adapter_name="PlainAdapter", signature=signature, lm_response=completion,
                                    message=f"The reply is not a valid {field.annotation}: {error}") from error

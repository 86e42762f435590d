"""MemoChatAdapter: DSPy's ChatAdapter's messages, without rebuilding on each call what does not change.

DSPy's ``ChatAdapter`` renders every value through a pydantic ``TypeAdapter`` built for it on the spot (~0.15 ms
each): the placeholders of the system message (the field list, the ``[[ ## field ## ]]`` layout, the task),
rebuilt from the signature on every call, and each input value of the user message. At N = 3 that was an eighth
of the server's CPU for a fused request (``benchmarks/serve.py`` profiled with py-spy). This adapter writes the
same messages with less work:

- the system message depends on nothing but the signature's fields and instructions, so the last few are kept,
  keyed by the signature class and its instructions (DSPy's ``Signature.instructions`` setter changes them in
  place; its field edits, ``with_updated_fields`` and the like, return a new class);
- a text input is written as it is, which is what the ``TypeAdapter`` returns for a ``str``; a user message with
  any other value is ChatAdapter's own.

The parsing and the JSON fallback are ChatAdapter's. ``tests/test_memo_adapter.py`` holds the messages to
ChatAdapter's, for signatures of several kinds.

It is the default of the calls the server makes (``FusionRun``), where no adapter was chosen. It is not
``dspy.ChatAdapter`` by name, which is the name DSPy's ``StreamListener`` looks for: ``stream_adapter`` gives a
listener the adapter whose replies it knows how to read.
"""

from functools import lru_cache
from typing import Any

import dspy
from dspy.signatures.signature import Signature


class MemoChatAdapter(dspy.ChatAdapter):
    """``dspy.ChatAdapter`` whose system message is built once per signature (and instructions), then reused.

    Example:
        >>> lm = scripted_lm(lambda call: {"answer": "4"})
        >>> with dspy.context(lm=lm, adapter=MemoChatAdapter()):
        ...     dspy.Predict("question -> answer")(question="2 + 2?").answer
        '4'
        >>> lm.engine.calls[0].system == dspy.ChatAdapter().format_system_message(dspy.Signature("question -> answer"))
        True
    """

    def format_system_message(self, signature: type[Signature]) -> str:
        return _system_message(type(self), signature, signature.instructions)

    def format_user_message_content(self, signature: type[Signature], inputs: dict[str, Any], prefix: str = "",
                                    suffix: str = "", main_request: bool = False) -> str:  # fmt: skip
        given = [name for name in signature.input_fields if name in inputs]
        if any(type(inputs[name]) is not str for name in given):
            return super().format_user_message_content(signature, inputs, prefix, suffix, main_request)
        parts = [prefix, *(f"[[ ## {name} ## ]]\n{inputs[name]}" for name in given)]
        requirements = self.user_message_output_requirements(signature) if main_request else None
        return "\n\n".join([*parts, *([requirements] if requirements is not None else []), suffix]).strip()


@lru_cache(maxsize=64)  # bounded: a program that builds a signature per call (tools, say) only misses
def _system_message(adapter: type[dspy.ChatAdapter], signature: type[Signature], instructions: str) -> str:
    return dspy.ChatAdapter.format_system_message(adapter(), signature)


def stream_adapter(adapter: dspy.Adapter | None) -> dspy.Adapter | None:
    """The adapter DSPy's ``StreamListener`` reads ``adapter``'s replies as (it knows DSPy's Chat, JSON and XML
    adapters by class name), or ``None`` when it cannot read them (a ``PlainAdapter``'s plain text, say).

    Args:
        adapter: The adapter the streamed call formats with; ``None`` is DSPy's default, the ChatAdapter.
    """
    if adapter is None or type(adapter) is MemoChatAdapter:
        return dspy.ChatAdapter()
    return adapter if type(adapter).__name__ in ("ChatAdapter", "JSONAdapter", "XMLAdapter") else None

"""An adapter that holds every reply to a contract before it counts: a candidate, a fusion, a retry alike.

``CheckedAdapter`` wraps any DSPy adapter. It adds the contract's LM arguments to each call (``tool_choice``...),
lets the wrapped adapter format, call and parse as usual, then hands each parsed output to the contract, which
may normalize it (cut a reply at a stop sequence) and lists what breaks it. An output that breaks it raises
``InvalidOutputError``, an ``AdapterParseError``: the sample is dropped (and reported), a fusion is retried, then
falls back to a valid candidate, as ``FusionOfN``'s ``fallback`` says. So no invalid answer counts as a result.
"""

from collections.abc import Callable
from typing import Any, Protocol

import dspy

from fusion_dspy.errors import InvalidOutputError


class Contract(Protocol):
    """What a checked call promises: LM arguments to send, and a review of each parsed output."""

    def lm_kwargs(self) -> dict[str, Any]:
        """Arguments added to every LM call (the call's own win)."""
        ...

    def review(self, output: dict[str, Any], signature: type[dspy.Signature]) -> list[str]:
        """Normalize ``output`` in place; return what makes it invalid (``[]``: valid)."""
        ...


class CheckedAdapter(dspy.Adapter):
    """Wraps ``adapter``; every parsed output must pass ``contract.review`` or the call raises ``InvalidOutputError``.

    Args:
        adapter: The adapter that formats and parses (e.g. ``dspy.ChatAdapter(use_native_function_calling=True)``).
        contract: The ``Contract`` each output is held to.

    Example:
        >>> class Short:
        ...     def lm_kwargs(self): return {}
        ...     def review(self, output, signature): return [] if len(output["answer"]) < 5 else ["too long"]
        >>> lm = scripted_lm(lambda call: {"answer": "a long answer"})
        >>> with dspy.context(adapter=CheckedAdapter(dspy.ChatAdapter(), Short())):
        ...     dspy.Predict("question -> answer")(question="Hi?", lm=lm)
        Traceback (most recent call last):
        ...
        fusion_dspy.errors.InvalidOutputError: ...too long...
    """

    def __init__(self, adapter: dspy.Adapter, contract: Contract):
        super().__init__(callbacks=adapter.callbacks, use_native_function_calling=adapter.use_native_function_calling)
        self.adapter, self.contract = adapter, contract

    def _kwargs(self, lm_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**self.contract.lm_kwargs(), **lm_kwargs}

    def _checked(self, outputs: list[dict[str, Any]], signature: type[dspy.Signature]) -> list[dict[str, Any]]:
        for output in outputs:
            problems = self.contract.review(output, signature)
            if problems:
                raise InvalidOutputError(problems, signature, lm_response=repr(output))
        return outputs

    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature],
                 demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
        return self._checked(self.adapter(lm, self._kwargs(lm_kwargs), signature, demos, inputs), signature)

    async def acall(self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature],
                    demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
        outputs = await self.adapter.acall(lm, self._kwargs(lm_kwargs), signature, demos, inputs)
        return self._checked(outputs, signature)

    def format(self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]) -> Any:
        return self.adapter.format(signature, demos, inputs)

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        return self.adapter.parse(signature, completion)

    def __getattr__(self, name: str) -> Callable[..., Any]:  # the rest of the wrapped adapter's interface
        if name == "adapter":
            raise AttributeError(name)
        return getattr(self.adapter, name)

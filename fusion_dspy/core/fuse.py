"""Fuse: the fusor writes one new answer from the task inputs and all candidates (Fusion-of-N's second stage)."""

from collections.abc import Sequence
from typing import Any

import dspy
from dspy.clients.base_lm import BaseLM
from dspy.signatures.signature import Signature, ensure_signature
from dspy.utils.exceptions import AdapterParseError

import fusion_dspy.tracing as tracing
from fusion_dspy.core import truncation
from fusion_dspy.core.context import check_fits
from fusion_dspy.core.pool import Pool, predictions
from fusion_dspy.core.signatures import fuse_signature, presentation_order, render_candidates
from fusion_dspy.core.steps import Call, Steps, adapter_override, arun, run

RETRY_TEMPERATURE = 0.7


class Fuse(dspy.Module):
    """The fusor: reads the task inputs and N candidates, compares them, and writes one new answer.

    Its signature is derived from the task's: the task inputs plus ``candidates`` in, a ``comparison`` and then
    the task's own output fields out (typed fields and ``reasoning`` included). The instruction follows the
    Fusion-of-N paper (compare, then synthesize, discarding wrong or unsafe parts) and is an ordinary predictor
    instruction, so DSPy's optimizers can tune it (``fuse.predict.signature.instructions``). Beside the task's
    fields, the result says ``fusor_truncated``: the reply was cut at ``max_tokens`` (finish_reason ``"length"``,
    read by ``fusion_dspy.core.truncation``), which a ``FusionOfN`` report turns into its ``finish_reason``.

    Args:
        signature: The task signature whose outputs the fused answer must have.
        instructions: Replaces the default fusor instruction.
        lm: The fusor's LM. Defaults to the predictor's own LM, then the context LM. Kept out of saved state,
            so saved programs carry no endpoints or keys.
        shuffle: Present the candidates in an order shuffled per input (seeded, so reruns hit the cache), to
            spread position bias. The result's ``candidate_order`` lists the order shown (indices into the
            candidates).
        adapter: The DSPy adapter for the fusor's calls (default: the context's).
        compare: Have the fusor write a ``comparison`` of the candidates before its answer (the paper's two
            steps). Turn off for small fusors that cannot write two fields (with ``PlainAdapter``).
        retries: Times to ask again when the output cannot be parsed even after DSPy's adapter fallback. A retry
            is a fresh sample (new ``rollout_id``, temperature at least ``RETRY_TEMPERATURE``): the identical
            request would return the identical broken answer, from the model or from the cache.
        context_window: Tokens the fusor reads at once (default: litellm's model info; unknown: no check).
            Before each call the prompt is counted, and one that cannot fit with the answer's ``max_tokens``
            raises ``ContextOverflowError`` (naming N, the sizes and the fixes) instead of being sent.

    Example:
        >>> fusor = scripted_lm(lambda call: {"comparison": "Both say Paris.", "answer": "Paris, France"})
        >>> fuse = Fuse("question -> answer", lm=fusor)
        >>> fused = fuse(candidates=[dspy.Prediction(answer="Paris"), dspy.Prediction(answer="paris, France")],
        ...              question="Capital of France?")
        >>> fused.answer, fused.fusor_truncated
        ('Paris, France', False)
    """

    def __init__(
        self,
        signature: str | type[Signature],
        instructions: str | None = None,
        lm: BaseLM | None = None,
        shuffle: bool = False,
        adapter: dspy.Adapter | None = None,
        retries: int = 1,
        compare: bool = True,
        context_window: int | None = None,
    ):
        super().__init__()
        self.task_signature = ensure_signature(signature)
        self.predict = dspy.Predict(fuse_signature(self.task_signature, instructions, compare=compare))
        self.fusor_lm = lm
        self.shuffle = shuffle
        self.adapter = adapter
        self.retries = retries
        self.context_window = context_window

    def _request(self, candidates: Pool | Sequence[Any], inputs: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        pool = predictions(candidates)
        task_inputs = {name: inputs[name] for name in self.task_signature.input_fields if name in inputs}
        order = presentation_order(len(pool), self.shuffle, task_inputs)
        request = {**task_inputs, "candidates": render_candidates(pool, list(self.task_signature.output_fields), order)}
        lm = self.fusor_lm or self.predict.lm or dspy.settings.lm
        check_fits(lm, self.predict, request, len(pool), self.context_window, self.adapter)
        if self.fusor_lm is not None:
            request["lm"] = self.fusor_lm
        return request, order

    def _retry_config(self, attempt: int) -> dict[str, Any]:
        if attempt == 0:
            return {}
        lm = self.fusor_lm or self.predict.lm or dspy.settings.lm
        temperature = max(getattr(lm, "kwargs", {}).get("temperature") or 0.0, RETRY_TEMPERATURE)
        return {"config": {"rollout_id": attempt, "temperature": temperature}}

    def _fuse(self, candidates: Pool | Sequence[Any], inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        lm = self.fusor_lm or self.predict.lm or dspy.settings.lm
        with tracing.span("fusion_dspy.fuse", {"gen_ai.operation.name": "chat", "fusion.candidates": len(candidates)},
                          model=getattr(lm, "model", None), tokens=True):  # fmt: skip
            return (yield from self._attempts(candidates, inputs))

    def _attempts(self, candidates: Pool | Sequence[Any], inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        request, order = self._request(candidates, inputs)
        with dspy.context(**adapter_override(self.adapter)):
            for attempt in range(self.retries + 1):
                try:
                    with truncation.watch() as cut:  # this attempt's reply only: a retry may be whole
                        fused = yield Call(self.predict, {**request, **self._retry_config(attempt)})
                    fused["candidate_order"] = order  # the order shown: for position-bias reports
                    fused["fusor_truncated"] = bool(cut)  # cut at max_tokens: the report's finish_reason "length"
                    return fused
                except AdapterParseError:
                    if attempt == self.retries:
                        raise

    def forward(self, candidates: Pool | Sequence[Any], **inputs) -> dspy.Prediction:
        return run(self._fuse(candidates, inputs))

    async def aforward(self, candidates: Pool | Sequence[Any], **inputs) -> dspy.Prediction:
        return await arun(self._fuse(candidates, inputs))

"""FusionOfN = Sample -> Fuse and BestOfN = Sample -> Select: the two ways to spend N samples."""

import logging
from collections.abc import Sequence
from typing import Any, Literal

import dspy
from dspy.clients.base_lm import BaseLM
from dspy.signatures.signature import Signature
from dspy.utils.exceptions import AdapterParseError

from fusion_dspy.errors import FusionError
from fusion_dspy.fuse import Fuse, candidate_list
from fusion_dspy.meter import StageMeter
from fusion_dspy.sample import Sample, as_module
from fusion_dspy.select import RewardFn, Select
from fusion_dspy.signatures import check_reserved_fields, task_signature
from fusion_dspy.store import CandidateStore

logger = logging.getLogger(__name__)


class _SampleThenCombine(dspy.Module):
    """Shared by FusionOfN and BestOfN: sample N candidates (or take given ones), then one combining stage."""

    stage_name = "combine"

    def __init__(self, module, signature, sample: Sample | None, **sample_options):
        super().__init__()
        if sample is None:
            if module is None:
                raise ValueError("Pass the module (or signature) to sample from, or an existing sample=Sample(...).")
            sample = Sample(as_module(module), **sample_options)
        self.sample = sample
        self.task_signature = task_signature(self.sample.module, signature)
        check_reserved_fields(self.task_signature)

    def forward(self, candidates: Sequence[Any] | dspy.Prediction | None = None, **inputs) -> dspy.Prediction:
        meter = StageMeter()
        with meter.stage("sample"):
            pool = self.sample(**inputs) if candidates is None else candidates
        with meter.stage(self.stage_name):
            combined = self._combine(pool, inputs)
        return self._result(combined, pool, meter)

    async def aforward(self, candidates: Sequence[Any] | dspy.Prediction | None = None, **inputs) -> dspy.Prediction:
        meter = StageMeter()
        with meter.stage("sample"):
            pool = await self.sample.acall(**inputs) if candidates is None else candidates
        with meter.stage(self.stage_name):
            combined = await self._acombine(pool, inputs)
        return self._result(combined, pool, meter)

    def _result(self, combined: dspy.Prediction, pool: Any, meter: StageMeter) -> dspy.Prediction:
        fields = combined.toDict()
        fields["candidates"] = candidate_list(pool)
        if isinstance(pool, dspy.Prediction) and "models" in pool:  # drawn by a Sample: say where from
            fields["candidate_models"], fields["sample_failures"] = pool.models, pool.failures
        fields["stage_usage"] = meter.usage
        fields["stage_seconds"] = meter.seconds
        fields["stage_tokens"] = meter.tokens()
        return dspy.Prediction(**fields)


class FusionOfN(_SampleThenCombine):
    """Fusion-of-N: sample N candidates, then have a fusor LM write one answer that combines their strengths.

    Works over any module or signature and keeps the task's own output fields, so it drops into a larger
    program where the module was. Pass ``candidates=`` to fuse a pool you already have (for example the one a
    ``BestOfN`` sharing the same ``Sample`` just drew), skipping the sampling stage.

    Args:
        module: The generator: any DSPy module, or a signature for a ``dspy.Predict``.
        n: Number of candidates (default 5; one per teacher when ``lms`` is given).
        temperature: Sampling temperature of the candidates (the paper: 0.7 for test-time scaling).
        lm: The generator LM (default: the context LM).
        lms: A pool of teacher LMs to spread the samples over (the paper's synthetic-data setting).
        fusor_lm: The fusor's LM, settable apart from the generators' (good proposers can be bad fusors).
            Defaults to ``lm``, then to the fusor predictor's own LM, then the context LM.
        instructions: Replaces the default, paper-style fusor instruction.
        signature: The module's task signature when it cannot be inferred (multi-predictor modules).
        min_candidates: Fewest successful samples to fuse; failed samples are dropped with a warning.
        max_concurrency: Most samples in flight at once (default ``n``).
        fallback: What to do when the fusor's output cannot be parsed even after DSPy's adapter fallback:
            ``"raise"`` a ``FusionError``, or ``"select"`` the majority-vote candidate and say so in
            ``fusion_error``.
        shuffle: Shuffle the order candidates are shown to the fusor (seeded per input).
        retries: Fresh fusor samples to try when its output cannot be parsed (see ``Fuse``).
        compare: The fusor compares the candidates in a ``comparison`` field before answering (see ``Fuse``).
        store: A ``CandidateStore`` that keeps candidates across calls and runs (see ``Sample``).
        sample: An existing ``Sample`` to draw from, to share one candidate pool with a ``BestOfN``.

    Example:
        >>> qa = dspy.ChainOfThought("question -> answer")
        >>> fused = FusionOfN(qa, n=5)
        >>> p = fused(question="What causes tides?")
        >>> p.answer, len(p.candidates), p.stage_tokens
    """

    stage_name = "fuse"

    def __init__(
        self,
        module: dspy.Module | str | type[Signature] | None = None,
        n: int | None = None,
        temperature: float | None = 0.7,
        lm: BaseLM | None = None,
        lms: Sequence[BaseLM] | None = None,
        fusor_lm: BaseLM | None = None,
        instructions: str | None = None,
        signature: str | type[Signature] | None = None,
        min_candidates: int = 1,
        max_concurrency: int | None = None,
        fallback: Literal["raise", "select"] = "raise",
        shuffle: bool = False,
        retries: int = 1,
        compare: bool = True,
        store: CandidateStore | None = None,
        sample: Sample | None = None,
    ):
        super().__init__(module, signature, sample, n=n, temperature=temperature, lm=lm, lms=lms, store=store,
                         min_candidates=min_candidates, max_concurrency=max_concurrency)  # fmt: skip
        if fallback not in ("raise", "select"):
            raise ValueError(f"fallback must be 'raise' or 'select', got {fallback!r}.")
        self.fuse = Fuse(self.task_signature, instructions=instructions, lm=fusor_lm or lm, shuffle=shuffle,
                         retries=retries, compare=compare)  # fmt: skip
        self.fallback = fallback

    def _combine(self, pool: Any, inputs: dict[str, Any]) -> dspy.Prediction:
        try:
            return self.fuse(candidates=pool, **inputs)
        except AdapterParseError as error:  # unreachable servers and the like propagate unchanged
            return self._fallback(pool, inputs, error)

    async def _acombine(self, pool: Any, inputs: dict[str, Any]) -> dspy.Prediction:
        try:
            return await self.fuse.acall(candidates=pool, **inputs)
        except AdapterParseError as error:
            return self._fallback(pool, inputs, error)

    def _fallback(self, pool: Any, inputs: dict[str, Any], error: Exception) -> dspy.Prediction:
        reason = f"{type(error).__name__}: {error}"
        if self.fallback == "raise":
            raise FusionError(
                f"The fusor's output could not be used ({reason}). Use a stronger fusor_lm, or pass "
                "fallback='select' to return the majority-vote candidate instead."
            ) from error
        logger.warning("Fusion failed (%s); falling back to the majority-vote candidate.", reason)
        chosen = Select(self.task_signature)(candidates=pool, **inputs)
        return dspy.Prediction(**chosen.toDict(), fusion_error=reason)


class BestOfN(_SampleThenCombine):
    """Best-of-N: sample N candidates, then keep one, by reward function, LLM judge or majority vote.

    Unlike ``dspy.BestOfN`` it samples concurrently, has ``aforward``, keeps traces on the original predictors
    (so optimizers see them), never returns ``None`` and works in programs that use several LMs.

    Args:
        module: The generator: any DSPy module, or a signature for a ``dspy.Predict``.
        n: Number of candidates (default 5; one per teacher when ``lms`` is given).
        reward_fn: ``reward_fn(inputs: dict, prediction) -> float``, as in ``dspy.BestOfN``.
        judge: ``"listwise"`` or ``"pointwise"`` to select with an LLM judge instead.
        judge_lm: The judge's LM. Defaults to ``lm``, then the judge predictor's own LM, then the context LM.
        vote: Without reward_fn or judge: ``"majority"`` (exact answers) or ``"consensus"`` (free text); see
            ``Select``.
        temperature, lm, lms, signature, min_candidates, max_concurrency, store, sample: as in ``FusionOfN``.

    Example:
        >>> best = BestOfN(dspy.ChainOfThought("question -> answer"), n=5,
        ...                reward_fn=lambda inputs, pred: float(len(pred.answer.split()) == 1))
        >>> best(question="Capital of Belgium?").answer
    """

    stage_name = "select"

    def __init__(
        self,
        module: dspy.Module | str | type[Signature] | None = None,
        n: int | None = None,
        reward_fn: RewardFn | None = None,
        judge: Literal["listwise", "pointwise"] | None = None,
        judge_lm: BaseLM | None = None,
        vote: Literal["majority", "consensus"] = "majority",
        temperature: float | None = 0.7,
        lm: BaseLM | None = None,
        lms: Sequence[BaseLM] | None = None,
        signature: str | type[Signature] | None = None,
        min_candidates: int = 1,
        max_concurrency: int | None = None,
        store: CandidateStore | None = None,
        sample: Sample | None = None,
    ):
        super().__init__(module, signature, sample, n=n, temperature=temperature, lm=lm, lms=lms, store=store,
                         min_candidates=min_candidates, max_concurrency=max_concurrency)  # fmt: skip
        self.select = Select(self.task_signature, reward_fn=reward_fn, judge=judge, judge_lm=judge_lm or lm, vote=vote)

    def _combine(self, pool: Any, inputs: dict[str, Any]) -> dspy.Prediction:
        return self.select(candidates=pool, **inputs)

    async def _acombine(self, pool: Any, inputs: dict[str, Any]) -> dspy.Prediction:
        return await self.select.acall(candidates=pool, **inputs)

"""FusionOfN = Sample -> Fuse and BestOfN = Sample -> Select: the two ways to spend N samples."""

import logging
from collections.abc import Sequence
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from fusion_dspy.core.adaptive import Adaptive
from fusion_dspy.core.batching import BatchSamples
from fusion_dspy.core.concurrency import awithin, within
from fusion_dspy.core.fuse import Fuse
from fusion_dspy.core.layers import Layers
from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.permute import Permutations, judge_in_orders
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.sample import Sample, as_module
from fusion_dspy.core.select import RewardFn, Select
from fusion_dspy.core.signatures import check_reserved_fields, task_signature
from fusion_dspy.core.steps import Call, Steps, arun, run
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.core.structured import fuse_structured
from fusion_dspy.core.windowed import check_group_size
from fusion_dspy.errors import FusionError

logger = logging.getLogger(__name__)


class _Unset:
    def __repr__(self) -> str:
        return "<Sample's default>"


UNSET: Any = _Unset()  # a sampling option not given: Sample's own default applies


def build_sample(owner: str, module: Any, sample: Sample | None, **options: Any) -> Sample:
    """The ``Sample`` a FusionOfN/BestOfN draws from: the one given, or one built from the sampling options."""
    given = {name: value for name, value in options.items() if value is not UNSET}
    if sample is not None:
        if given:
            raise ValueError(f"{owner} got sample= and also the sampling option(s) {sorted(given)}, which only a new "
                             "Sample would use. Set them on the Sample you pass, or drop sample=.")  # fmt: skip
        return sample
    if module is None:
        raise ValueError(f"{owner} needs the module (or signature) to sample from, or an existing sample=Sample(...).")
    return Sample(as_module(module), **given)


class _SampleThenCombine(dspy.Module):
    """Shared by FusionOfN and BestOfN: sample N candidates (or take given ones), then one combining stage."""

    stage_name = "combine"

    def __init__(self, sample: Sample, signature: str | type[dspy.Signature] | None, deadline_s: float | None):
        super().__init__()
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}.")
        self.deadline_s = deadline_s
        self.sample = sample
        self.task_signature = task_signature(self.sample.module, signature)
        check_reserved_fields(self.task_signature)

    def _combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        raise NotImplementedError

    def _steps(self, candidates: Pool | Sequence[Any] | None, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        meter = StageMeter()
        with meter.stage("sample"):
            pool = (yield Call(self.sample, inputs)) if candidates is None else Pool.of(candidates)
        with meter.stage(self.stage_name):
            combined = yield from self._combine(pool.require(), inputs)
        return self._result(combined, pool, meter)

    def forward(self, candidates: Pool | Sequence[Any] | None = None, **inputs) -> dspy.Prediction:
        if self.deadline_s is None:
            return run(self._steps(candidates, inputs))
        return within(lambda: run(self._steps(candidates, inputs)), self.deadline_s, type(self).__name__)

    async def aforward(self, candidates: Pool | Sequence[Any] | None = None, **inputs) -> dspy.Prediction:
        if self.deadline_s is None:
            return await arun(self._steps(candidates, inputs))
        return await awithin(arun(self._steps(candidates, inputs)), self.deadline_s, type(self).__name__)

    def _result(self, combined: dspy.Prediction, pool: Pool, meter: StageMeter) -> dspy.Prediction:
        fields = combined.toDict()
        fields["candidates"] = pool.predictions
        if any(model is not None for model in pool.models):  # drawn by a Sample: say where from
            fields["candidate_models"], fields["sample_failures"] = pool.models, pool.failures
            fields["truncated"] = pool.truncated  # candidates kept although their reply was cut at max_tokens
            fields["stragglers"], fields["samples_drawn"], fields["stop_reason"] = (pool.stragglers, pool.drawn,
                                                                                   pool.stop_reason)  # fmt: skip
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
        temperature: Sampling temperature of the candidates (default 0.7, the paper's for test-time scaling).
        lm: The generator LM (default: the context LM); also the fusor's when ``fusor_lm`` is not given.
        lms: A pool of teacher LMs to spread the samples over (the paper's synthetic-data setting).
        fusor_lm: The fusor's LM, settable apart from the generators' (good proposers can be bad fusors).
            Defaults to ``lm``, then to the fusor predictor's own LM, then the context LM.
        instructions: Replaces the default, paper-style fusor instruction.
        signature: The module's task signature when it cannot be inferred (multi-predictor modules).
        min_candidates: Fewest successful samples to fuse (default 1); failed samples are dropped with a warning.
        max_concurrency: Most samples in flight at once (default ``n``; at most 64 threads in ``forward``).
        fallback: What to do when fusion fails — the fusor's output cannot be parsed even after DSPy's adapter
            fallback and ``retries``, or the fusor is unreachable, times out or keeps failing after its retries:
            ``"raise"`` a ``FusionError`` naming the cause, or ``"select"`` the majority-vote candidate and say
            why in ``fusion_error`` (the gateways' rule: the panel's answers are never thrown away).
        shuffle: Shuffle the order candidates are shown to the fusor (seeded per input).
        retries: Fresh fusor samples to try when its output cannot be parsed (see ``Fuse``).
        compare: The fusor compares the candidates in a ``comparison`` field before answering (see ``Fuse``).
        context_window: Tokens the fusor reads at once: a pool that does not fit is fused in groups (see
            ``group_size``), and every fusor prompt is counted before it is sent (see ``Fuse``).
        deadline_s: Seconds the whole call (sampling and fusion, retries included) may take; past it the call
            raises ``DeadlineExceeded`` at once and abandons what is still in flight. ``None``: no deadline.
        adapter: The DSPy adapter of the generator's calls (default: the context's).
        fusor_adapter: The DSPy adapter of the fusor's calls (default: the context's), e.g. ``PlainAdapter``.
        store: A ``CandidateStore`` that keeps candidates across calls and runs (see ``Sample``).
        sample: An existing ``Sample`` to draw from, to share one candidate pool with a ``BestOfN``. The
            sampling options (``n``, ``temperature``, ``lm``, ``lms``, ``min_candidates``, ``max_concurrency``,
            ``adapter``, ``store``, ``batch_samples``, ``quorum``, ``straggler_grace_s``, ``adaptive``) then belong
            to that Sample: passing them too is an error.
        batch_samples, quorum, straggler_grace_s, adaptive: see ``Sample``. The result then also has
            ``stragglers`` (beside ``sample_failures``), ``samples_drawn`` and ``stop_reason``.
        group_size: Fuse in groups of this many, then fuse the fused (``fusion_dspy.core.windowed``), or
            ``"auto"``: groups as large as the fusor's ``context_window`` holds. ``None`` (default): automatic
            when ``context_window`` is given, else one fusor call.
        layers: Mixture-of-Agents proposer layers (``fusion_dspy.core.layers``): 1 (default) is plain
            Fusion-of-N; each further layer's proposers read the previous layer's answers; the last is fused.
        permutations: Fuse the candidates in this many orders and keep one fusion (``fusion_dspy.core.permute``);
            the prediction's ``fusion_orders`` lists the orders used.
        permutation_pick: How the fusion is kept: ``"consensus"`` (default), ``"majority"`` or ``"listwise"``
            (an LLM judge, ``judge_lm``).
        judge_lm: The judge of ``permutation_pick="listwise"`` (default: ``lm``, then the context LM).

    Example:
        >>> lm = scripted_lm(lambda call: {"comparison": "All agree.", "answer": "4"} if call.wants("comparison")
        ...                  else {"answer": "4"})
        >>> fused = FusionOfN(dspy.Predict("question -> answer"), n=3, lm=lm)
        >>> p = fused(question="2 + 2?")
        >>> p.answer, len(p.candidates), sorted(p.stage_tokens)
        ('4', 3, ['fuse', 'sample'])
    """

    stage_name = "fuse"

    def __init__(
        self,
        module: dspy.Module | str | type[dspy.Signature] | None = None,
        n: int | None = UNSET,
        temperature: float | None = UNSET,
        lm: dspy.BaseLM | None = None,
        lms: Sequence[dspy.BaseLM] | None = UNSET,
        fusor_lm: dspy.BaseLM | None = None,
        instructions: str | None = None,
        signature: str | type[dspy.Signature] | None = None,
        min_candidates: int = UNSET,
        max_concurrency: int | None = UNSET,
        fallback: Literal["raise", "select"] = "raise",
        shuffle: bool = False,
        retries: int = 1,
        compare: bool = True,
        context_window: int | None = None,
        deadline_s: float | None = None,
        adapter: dspy.Adapter | None = UNSET,
        fusor_adapter: dspy.Adapter | None = None,
        store: CandidateStore | None = UNSET,
        sample: Sample | None = None,
        batch_samples: BatchSamples = UNSET,
        quorum: int | None = UNSET,
        straggler_grace_s: float = UNSET,
        adaptive: Adaptive | bool | None = UNSET,
        group_size: int | Literal["auto"] | None = None,
        layers: int = 1,
        permutations: int = 1,
        permutation_pick: Literal["consensus", "majority", "listwise"] = "consensus",
        judge_lm: dspy.BaseLM | None = None,
    ):
        if fallback not in ("raise", "select"):
            raise ValueError(f"fallback must be 'raise' or 'select', got {fallback!r}.")
        generator_lm = UNSET if lm is None else lm
        super().__init__(build_sample("FusionOfN", module, sample, n=n, temperature=temperature, lm=generator_lm,
                                      lms=lms, min_candidates=min_candidates, max_concurrency=max_concurrency,
                                      adapter=adapter, store=store, batch_samples=batch_samples, quorum=quorum,
                                      straggler_grace_s=straggler_grace_s, adaptive=adaptive),
                         signature, deadline_s)  # fmt: skip
        self.fuse = Fuse(self.task_signature, instructions=instructions, lm=fusor_lm or lm, shuffle=shuffle,
                         adapter=fusor_adapter, retries=retries, compare=compare,
                         context_window=context_window)  # fmt: skip
        self.fallback = fallback
        self.group_size, self.context_window = check_group_size(group_size, context_window), context_window
        self.layers = Layers(self.sample, self.task_signature, layers) if layers != 1 else None
        self.permute = (Permutations(self.task_signature, permutations, permutation_pick, judge_lm or lm)
                        if permutations != 1 else None)  # fmt: skip

    def _combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        try:
            return (yield from fuse_structured(self.fuse, pool, inputs, self.layers, self.group_size,
                                               self.context_window, self.permute))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - unusable output, or a fusor unreachable, timing out, overloaded
            return self._fallback(pool, inputs, error)

    def _fallback(self, pool: Pool, inputs: dict[str, Any], error: Exception) -> dspy.Prediction:
        reason = f"{type(error).__name__}: {error}"
        unusable = isinstance(error, AdapterParseError)
        if self.fallback == "raise":
            if isinstance(error, FusionError):  # already says what to fix (e.g. a pool over the context window)
                raise error
            what = "The fusor's output could not be used" if unusable else "The fusor failed"
            fix = "Use a stronger fusor_lm" if unusable else "Check that the fusor LM is reachable"
            raise FusionError(f"{what} ({reason}). {fix}, or pass fallback='select' to return the majority-vote "
                              "candidate instead: the candidates are not lost.") from error  # fmt: skip
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
        judge_adapter: The DSPy adapter of the judge's calls (default: the context's).
        fallback: When the judge fails (down, timing out, unusable answer): ``"raise"`` a ``SelectionError``
            naming the cause, or ``"select"`` by ``vote`` instead, saying why in ``selection_error``.
        deadline_s: Seconds the whole call may take (see ``FusionOfN``).
        permutations: With ``judge="listwise"``: judge in this many orders (shown, reversed, shuffles) and count
            only wins that survive the swaps (``fusion_dspy.core.permute.judge_in_orders``).
        temperature, lm, lms, signature, min_candidates, max_concurrency, adapter, store, sample, batch_samples,
            quorum, straggler_grace_s, adaptive: as in ``FusionOfN``.

    Example:
        >>> lm = scripted_lm(lambda call: {"answer": ["Brussels", "Brussels, Belgium"][call.index % 2]})
        >>> best = BestOfN(dspy.Predict("question -> answer"), n=2, lm=lm,
        ...                reward_fn=lambda inputs, pred: float(len(pred.answer.split()) == 1))
        >>> best(question="Capital of Belgium?").answer
        'Brussels'
    """

    stage_name = "select"

    def __init__(
        self,
        module: dspy.Module | str | type[dspy.Signature] | None = None,
        n: int | None = UNSET,
        reward_fn: RewardFn | None = None,
        judge: Literal["listwise", "pointwise"] | None = None,
        judge_lm: dspy.BaseLM | None = None,
        vote: Literal["majority", "consensus"] = "majority",
        temperature: float | None = UNSET,
        lm: dspy.BaseLM | None = None,
        lms: Sequence[dspy.BaseLM] | None = UNSET,
        signature: str | type[dspy.Signature] | None = None,
        min_candidates: int = UNSET,
        max_concurrency: int | None = UNSET,
        adapter: dspy.Adapter | None = UNSET,
        judge_adapter: dspy.Adapter | None = None,
        fallback: Literal["raise", "select"] = "raise",
        deadline_s: float | None = None,
        store: CandidateStore | None = UNSET,
        sample: Sample | None = None,
        batch_samples: BatchSamples = UNSET,
        quorum: int | None = UNSET,
        straggler_grace_s: float = UNSET,
        adaptive: Adaptive | bool | None = UNSET,
        permutations: int = 1,
    ):
        if fallback not in ("raise", "select"):
            raise ValueError(f"fallback must be 'raise' or 'select', got {fallback!r}.")
        if permutations != 1 and (judge != "listwise" or permutations < 2):
            raise ValueError(f"permutations={permutations} needs judge='listwise' and at least 2 orders: votes, "
                             "rewards and pointwise scores do not depend on the order of the candidates.")
        generator_lm = UNSET if lm is None else lm
        super().__init__(build_sample("BestOfN", module, sample, n=n, temperature=temperature, lm=generator_lm,
                                      lms=lms, min_candidates=min_candidates, max_concurrency=max_concurrency,
                                      adapter=adapter, store=store, batch_samples=batch_samples, quorum=quorum,
                                      straggler_grace_s=straggler_grace_s, adaptive=adaptive),
                         signature, deadline_s)  # fmt: skip
        self.select = Select(self.task_signature, reward_fn=reward_fn, judge=judge, judge_lm=judge_lm or lm,
                             vote=vote, adapter=judge_adapter, fallback="vote" if fallback == "select" else "raise")
        self.permutations = permutations

    def _combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        if self.permutations > 1:
            return (yield from judge_in_orders(self.select, pool, inputs, self.permutations))
        return (yield Call(self.select, {"candidates": pool, **inputs}))

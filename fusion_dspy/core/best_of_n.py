"""BestOfN = Sample -> Select: N samples, then keep one, by reward function, LLM judge or majority vote."""

from collections.abc import Sequence
from typing import Any, Literal

import dspy

from fusion_dspy.core.adaptive import Adaptive
from fusion_dspy.core.batching import BatchSamples
from fusion_dspy.core.permute import judge_in_orders
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.sample import Sample
from fusion_dspy.core.select import RewardFn, Select
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.core.two_stage import UNSET, SampleThenCombine, build_sample


class BestOfN(SampleThenCombine):
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

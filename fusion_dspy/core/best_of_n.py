"""BestOfN = Sample -> Select: N samples, then keep one, by reward function, LLM judge or majority vote."""

from collections.abc import Sequence
from typing import Any

import dspy

from fusion_dspy.core.options import (
    DEFAULT_TEMPERATURE,
    Fallback,
    SampleOptions,
    SelectOptions,
    fallback_selection,
    legacy_options,
    merged,
)
from fusion_dspy.core.permute import judge_in_orders
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.sample import Sample
from fusion_dspy.core.select import RewardFn, Select, select_arguments
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.core.two_stage import SampleThenCombine, build_sample


class BestOfN(SampleThenCombine):
    """Best-of-N: sample N candidates, then keep one, by reward function, LLM judge or majority vote.

    Unlike ``dspy.BestOfN`` it samples concurrently, has ``aforward``, keeps traces on the original predictors
    (so optimizers see them), never returns ``None`` and works in programs that use several LMs.

    Args:
        module: The generator: any DSPy module, or a signature for a ``dspy.Predict``.
        n: Number of candidates (default 5; one per teacher when ``lms`` is given).
        reward_fn: ``reward_fn(inputs: dict, prediction) -> float``, as in ``dspy.BestOfN``.
        temperature, lm, lms, signature, deadline_s, sample, sampling: as in ``FusionOfN``.
        fallback: When the judge fails (down, timing out, unusable answer): ``"raise"`` a ``SelectionError``
            naming the cause, or ``"select"`` by the selection's vote instead (or a ``SelectOptions`` to select
            as it says); the report's ``fallback`` says why.
        selection: How to select (``SelectOptions``): an LLM judge (``judge="listwise"``/``"pointwise"``,
            ``judge_lm``, judging in several orders with ``permutations``) or the vote (``"majority"`` for exact
            answers, ``"consensus"`` for free text). ``judge_lm`` defaults to ``lm``.
        **deprecated: The 0.2 keyword arguments (``judge=``, ``judge_lm=``, ``vote=``, ``quorum=`` ...), moved into
            ``selection``/``sampling`` with a ``DeprecationWarning``; removed in 0.4.

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
        n: int | None = None,
        reward_fn: RewardFn | None = None,
        temperature: float | None = DEFAULT_TEMPERATURE,
        lm: dspy.BaseLM | None = None,
        lms: Sequence[dspy.BaseLM] | None = None,
        signature: str | type[dspy.Signature] | None = None,
        fallback: Fallback = "raise",
        deadline_s: float | None = None,
        sample: Sample | None = None,
        sampling: SampleOptions | None = None,
        selection: SelectOptions | None = None,
        **deprecated: Any,
    ):
        moved = legacy_options("BestOfN", deprecated, ("sampling", "selection"))
        sampling = merged(sampling, SampleOptions, moved["sampling"]) if "sampling" in moved else sampling
        selection = merged(selection, SelectOptions, moved.get("selection"))
        if reward_fn is not None:
            selection = selection.replace(reward_fn=reward_fn)
        super().__init__(build_sample("BestOfN", module, sample, n, temperature, lm, lms, sampling), signature,
                         deadline_s)  # fmt: skip
        if selection.judge_lm is None and selection.judge is not None:
            selection = selection.replace(judge_lm=lm)
        self.selection, self.fallback = selection, fallback
        rescue = fallback_selection(fallback, selection.vote)
        if rescue is not None and (rescue.judge or rescue.reward_fn):
            raise ValueError("BestOfN's fallback selects by a vote when its judge fails: fallback='select' or "
                             "SelectOptions(vote=...), not another judge or reward.")  # fmt: skip
        arguments = select_arguments(selection if rescue is None else selection.replace(vote=rescue.vote))
        self.select = Select(self.task_signature, **arguments, fallback="raise" if rescue is None else "select")

    permutations = property(lambda self: self.selection.permutations)

    def combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        if self.permutations > 1:
            return (yield from judge_in_orders(self.select, pool, inputs, self.permutations))
        return (yield Call(self.select, {"candidates": pool, **inputs}))

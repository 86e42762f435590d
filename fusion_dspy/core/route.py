"""Route (``method="auto"``): per input, one sample, Best-of-N or Fusion-of-N, as a trained ``Router`` says."""

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dspy

from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.router import Router, agreement
from fusion_dspy.core.sample import Sample
from fusion_dspy.core.select import RewardFn, Select
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.errors import FusionDSPyError


def _sized(sample: Sample, n: int) -> Sample:
    """The same Sample drawing only its first ``n`` candidates (a shallow copy: same module, same predictors)."""
    if n == sample.n:
        return sample
    smaller = copy.copy(sample)
    smaller.n, smaller.min_candidates = n, min(sample.min_candidates, n)
    return smaller


class Route(FusionOfN):
    """A FusionOfN that, per input, uses one sample, selects among N or fuses N, as its ``Router`` predicts best.

    The router (``fusion_dspy.core.router.Router``) is trained from ``eval``'s ``results.jsonl``; it picks the
    arm and its N from the inputs (words, length, task), or, fitted with ``use_agreement=True``, after drawing
    the largest N, also from how much the candidates agree. Only the chosen N are drawn otherwise. The prediction's
    ``route`` says what was chosen (``{"method": "fuse", "n": 4}``); its ``stage_tokens`` has ``sample`` and the
    chosen method. The router's training points are part of the program's state: ``save``/``load`` (and the tuned
    programs of ``optimize``) keep them.

    Args:
        module: The generator, as in ``FusionOfN``.
        router: A trained ``Router``, or the path of one saved with ``Router.save`` (``None``: set by ``load``).
        reward_fn, judge, vote, judge_adapter: How to select (see ``Select``); ``vote`` defaults to consensus.
        **options: ``FusionOfN``'s options (``n`` is the largest N the router may pick, ``fusor_lm``, ``lm``...).

    Example:
        >>> records = [{"example": i, "n": 2, "inputs": {"question": q}, "scores": {"single": 0.0,
        ...             "bon": float("sum" in q), "fusion": float("poem" in q)}, "tokens": {}}
        ...            for i, q in enumerate(["sum 1 2", "a poem", "sum 3 4", "the poem"])]
        >>> route = fd.Route("question -> answer", n=2, lm=lm, router=fd.core.router.Router.fit(records))
        >>> route(question="sum 5 6").route, route(question="a poem on rain").route
        ({'method': 'select', 'n': 2}, {'method': 'fuse', 'n': 2})
    """

    def __init__(self, module: Any = None, router: Router | str | Path | None = None,
                 reward_fn: RewardFn | None = None, judge: Literal["listwise", "pointwise"] | None = None,
                 vote: Literal["majority", "consensus"] = "consensus", judge_adapter: dspy.Adapter | None = None,
                 **options: Any):  # fmt: skip
        super().__init__(module, **options)
        judge_lm = options.get("judge_lm") or options.get("lm")
        self.select = Select(self.task_signature, reward_fn=reward_fn, judge=judge, judge_lm=judge_lm, vote=vote,
                             adapter=judge_adapter)  # fmt: skip
        self.router = Router.load(router) if isinstance(router, (str, Path)) else router

    def _choose(self, inputs: dict[str, Any], max_n: int, pool: Pool | None) -> tuple[str, int]:
        if self.router is None:
            raise FusionDSPyError("This Route has no router: pass router=Router.fit('eval/results.jsonl') (or a saved "
                                  "router's path), or load a saved Route program.")  # fmt: skip
        value = agreement(pool, self.select.vote_fields) if pool is not None else None
        return self.router.choose(inputs, max_n=max_n, agreement_value=value)

    def _steps(self, candidates: Pool | Sequence[Any] | None, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        meter = StageMeter()
        given = None if candidates is None else Pool.of(candidates).require()
        cap = len(given) if given is not None else self.sample.n
        if self.router is not None and self.router.use_agreement:  # draw the largest N, then decide
            with meter.stage("sample"):
                pool = given if given is not None else (yield Call(self.sample, inputs))
            method, n = self._choose(inputs, len(pool), pool)
            pool = pool[:n]
        else:
            method, n = self._choose(inputs, cap, None)
            with meter.stage("sample"):
                pool = given[:n] if given is not None else (yield Call(_sized(self.sample, n), inputs))
        with meter.stage(method):
            if method == "single":
                combined = dspy.Prediction(**pool.require()[0].prediction.toDict(), selected_index=0)
            elif method == "select":
                combined = yield Call(self.select, {"candidates": pool.require(), **inputs})
            else:
                combined = yield from self._combine(pool.require(), inputs)
        result = self._result(combined, pool, meter)
        result["route"] = {"method": method, "n": n}
        return result

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        state = super().dump_state(json_mode=json_mode)
        return {**state, "router": self.router.to_dict()} if self.router is not None else state

    def load_state(self, state: dict[str, Any], *, allow_unsafe_lm_state: bool = False) -> "Route":
        super().load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)
        if state.get("router") is not None:
            self.router = Router.from_dict(state["router"])
        return self

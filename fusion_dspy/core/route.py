"""Route (``method="auto"``): per input, one sample, Best-of-N or Fusion-of-N, as a trained ``Router`` says."""

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from fusion_dspy.core.best_of_n import BestOfN
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.options import SelectOptions
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.prediction import fused_prediction
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.core.two_stage import Deadlined
from fusion_dspy.errors import FusionDSPyError

if TYPE_CHECKING:  # the router's numpy is imported when a router is used, not with every program
    from fusion_dspy.core.router import Router


class Route(Deadlined):
    """Per input, one sample, the best of N or the fusion of N, as its ``Router`` predicts best.

    A Route composes the two programs it chooses between over ONE ``Sample``: a ``FusionOfN`` (``route.fusion``)
    and a ``BestOfN`` drawing from the same Sample (``route.best``, selecting by consensus unless ``selection``
    says otherwise). The router (``fusion_dspy.core.router.Router``) is trained from ``eval``'s
    ``results.jsonl``; it picks the arm and its N from the inputs (words, length, task), or, fitted with
    ``use_agreement=True``, after drawing the largest N, also from how much the candidates agree. Only the
    chosen N are drawn otherwise. The report's ``route`` says what was chosen (``{"method": "fuse", "n": 4}``);
    its stages are ``sample`` and the chosen method. The router's training points are part of the program's
    state: ``save``/``load`` (and the tuned programs of ``optimize``) keep them.

    Args:
        module: A ``FusionOfN`` to route with, or the generator (module or signature) of a new one built with
            ``fusion``.
        router: A trained ``Router``, or the path of one saved with ``Router.save`` (``None``: set by ``load``).
        selection: How the ``select`` arm selects (``SelectOptions``; default: a consensus vote).
        **fusion: ``FusionOfN``'s arguments for a new one (``n`` is the largest N the router may pick, ``lm``,
            ``fusor_lm``, ``sampling``, ``fusing``, ``fallback``, ``deadline_s``...). The 0.2 selection keywords
            (``reward_fn``, ``judge``, ``vote``, ``judge_adapter``) still work for one release, with a warning.

    Example:
        >>> records = [{"example": i, "n": 2, "inputs": {"question": q}, "scores": {"single": 0.0,
        ...             "bon": float("sum" in q), "fusion": float("poem" in q)}, "tokens": {}}
        ...            for i, q in enumerate(["sum 1 2", "a poem", "sum 3 4", "the poem"])]
        >>> route = fd.Route("question -> answer", n=2, lm=lm, router=fd.core.router.Router.fit(records))
        >>> route(question="sum 5 6").report.route, route(question="a poem on rain").report.route
        ({'method': 'select', 'n': 2}, {'method': 'fuse', 'n': 2})
    """

    def __init__(self, module: FusionOfN | dspy.Module | str | type[dspy.Signature] | None = None,
                 router: "Router | str | Path | None" = None, selection: SelectOptions | None = None,
                 **fusion: Any):  # fmt: skip
        legacy = {name: fusion.pop(name) for name in _LEGACY_SELECTION if name in fusion}
        if legacy:
            warnings.warn(f"Route({', '.join(legacy)}=...) is deprecated and will be removed in 0.4: pass "
                          "selection=SelectOptions(...).", DeprecationWarning, stacklevel=2)  # fmt: skip
            moved = {_LEGACY_SELECTION[name]: value for name, value in legacy.items()}
            selection = (selection or SelectOptions(vote="consensus")).replace(**moved)
        if isinstance(module, FusionOfN):
            if fusion:
                raise ValueError(f"Route got a FusionOfN and also its arguments {sorted(fusion)}: set them on it.")
            self_fusion = module
        else:
            self_fusion = FusionOfN(module, **fusion)
        super().__init__(self_fusion.deadline_s)
        self.fusion = self_fusion
        selection = selection or SelectOptions(vote="consensus")
        if selection.judge and selection.judge_lm is None:
            selection = selection.replace(judge_lm=fusion.get("lm"))
        self.best = BestOfN(sample=self.fusion.sample, signature=self.fusion.task_signature, selection=selection)
        if isinstance(router, (str, Path)):
            from fusion_dspy.core.router import Router

            router = Router.load(router)
        self.router = router

    sample = property(lambda self: self.fusion.sample)
    fuse = property(lambda self: self.fusion.fuse)
    select = property(lambda self: self.best.select)
    task_signature = property(lambda self: self.fusion.task_signature)

    def _choose(self, inputs: dict[str, Any], max_n: int, pool: Pool | None) -> tuple[str, int]:
        if self.router is None:
            raise FusionDSPyError("This Route has no router: pass router=Router.fit('eval/results.jsonl') (or a saved "
                                  "router's path), or load a saved Route program.")  # fmt: skip
        from fusion_dspy.core.router import agreement

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
                pool = given[:n] if given is not None else (yield Call(self.sample.resized(n), inputs))
        with meter.stage(method):
            if method == "single":
                combined = dspy.Prediction(**pool.require()[0].prediction.toDict(), selected_index=0)
            else:
                combined = yield from (self.best if method == "select" else self.fusion).combine(pool.require(), inputs)
        return fused_prediction(method, combined, pool, meter, route={"method": method, "n": n})

    def deepcopy(self) -> "Route":
        """DSPy's deep copy (what its optimizers make of a student), keeping ONE Sample for both arms: DSPy copies
        each attribute on its own, which would give ``best`` a Sample of its own."""
        copied = super().deepcopy()
        copied.best.sample = copied.fusion.sample
        return copied

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        state = super().dump_state(json_mode=json_mode)
        return {**state, "router": self.router.to_dict()} if self.router is not None else state

    def load_state(self, state: dict[str, Any], *, allow_unsafe_lm_state: bool = False) -> "Route":
        names = [name for name, _ in self.named_parameters()]
        # A Route saved by 0.2 inherited from FusionOfN: its predictors were "fuse.predict", "select.judge" ...
        state = {**state, **{name: state[old] for name in names if name not in state
                             and (old := name.removeprefix("fusion.").replace("best.select.", "select.")) in state}}
        super().load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)
        if state.get("router") is not None:
            from fusion_dspy.core.router import Router

            self.router = Router.from_dict(state["router"])
        return self


_LEGACY_SELECTION = {"reward_fn": "reward_fn", "judge": "judge", "vote": "vote", "judge_adapter": "adapter"}

"""What ``Backends`` builds from a config: the stages' option objects, and FusionOfN / BestOfN / Route programs.

Every sampling and fusion knob of the config's ``fusion:`` section is a field of the stages' own option objects
(``fusion_dspy.core.options``), so the options below are built by field name, with no code per knob: a new knob
reaches every program (and every layer of one) without a change here.
"""

import warnings
from typing import Any

import dspy

from fusion_dspy.backends.plain_adapter import PlainAdapter
from fusion_dspy.core.adaptive import Adaptive
from fusion_dspy.core.best_of_n import BestOfN
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.options import FuseOptions, FuseSettings, SampleOptions, SampleSettings, SelectOptions
from fusion_dspy.core.route import Route


class Programs:
    """The option objects and programs of a config; mixed into ``Backends``, whose LMs and adapters they use."""

    def sample_options(self, names: list[str] | None = None) -> SampleOptions:
        """The config's ``SampleOptions`` for these generator model names (default: the teacher pool): its
        sampling settings, each model's ``batch_samples``, and the first model's adapter."""
        settings = self.config.fusion
        names = names or [t.model for t in self.config.roles.teachers()]
        adaptive = Adaptive(**settings.adaptive.model_dump()) if settings.adaptive else None
        return SampleOptions(**settings.model_dump(include=set(SampleSettings.model_fields)), adaptive=adaptive,
                             batch_samples={self.lm(m).model: self.config.model(m).batch_samples for m in names},
                             adapter=self.adapter(names[0]))  # fmt: skip

    def fuse_options(self) -> FuseOptions:
        """The config's ``FuseOptions``: its fusion settings, the fusor's adapter and context window."""
        settings, adapter = self.config.fusion, self.adapter(self.config.fusor)
        compare = settings.compare if settings.compare is not None else not isinstance(adapter, PlainAdapter)
        return FuseOptions(**settings.model_dump(include=set(FuseSettings.model_fields)), compare=compare,
                           adapter=adapter, context_window=self.context_window(self.config.fusor))  # fmt: skip

    def select_options(self) -> SelectOptions:
        """The config's ``SelectOptions`` (``fusion.select``): a vote, or the judge model as a listwise/pointwise
        judge."""
        select = self.config.fusion.select
        if select in ("listwise", "pointwise"):
            return SelectOptions(judge=select, judge_lm=self.judge, adapter=self.adapter(self.config.judge))
        return SelectOptions(vote=select)

    def sampling_options(self) -> dict[str, Any]:
        """Deprecated (0.3): ``sample_options()``, a ``SampleOptions``."""
        warnings.warn("Backends.sampling_options() is deprecated: use Backends.sample_options().", DeprecationWarning,
                      stacklevel=2)  # fmt: skip
        options = self.sample_options()
        return {name: getattr(options, name) for name in ("batch_samples", "quorum", "straggler_grace_s", "adaptive")}

    def program(
        self, module: dspy.Module | str | type[dspy.Signature], method: str | None = None, **overrides: Any
    ) -> FusionOfN | BestOfN | Route:
        """A FusionOfN (``fusion.method: fuse``), BestOfN (``select``) or Route (``auto``) over ``module``.

        ``method`` overrides the config's. Other keyword arguments are the program's own (``n=3``,
        ``reward_fn=...``, ``router=...``, ``sample=``, ``sampling=SampleOptions(...)`` ...) or a field of one of its
        option objects (``instructions=...``, ``store=...``, ``quorum=2``), applied on top of the config's. With
        ``sample=`` the program draws from that Sample, and the config's sampling settings are not applied. The
        fusor's context window (config, else litellm's model info) is passed on, so a pool that overflows it is
        fused in groups; ``fallback: select`` selects as ``fusion.select`` says.
        """
        settings = self.config.fusion
        chosen = method or settings.method
        arguments, changes = _split_overrides(overrides, chosen)
        if "sample" in arguments:
            if changes["sampling"]:
                raise ValueError(f"program() got sample= and the sampling option(s) {sorted(changes['sampling'])}, "
                                 "which only a new Sample would use.")  # fmt: skip
        else:
            teachers = self.generators
            arguments.setdefault("n", settings.n or (len(teachers) if len(teachers) > 1 else None))
            arguments.setdefault("temperature", settings.temperature)
            for name, value in self.generator_options().items():
                arguments.setdefault(name, value)
            arguments["sampling"] = (arguments.get("sampling") or self.sample_options()).replace(**changes["sampling"])
        arguments.setdefault("deadline_s", settings.deadline_s)
        selection = (arguments.pop("selection", None) or self.select_options()).replace(**changes["selection"])
        if (reward_fn := arguments.pop("reward_fn", None)) is not None:  # a reward replaces the judge or vote
            selection = selection.replace(reward_fn=reward_fn, judge=None, judge_lm=None, adapter=None)
        fallback = arguments.pop("fallback", settings.fallback)
        if chosen == "select":
            return BestOfN(module, selection=selection, fallback=fallback, **arguments)
        router = arguments.pop("router", settings.router)
        fusing = (arguments.pop("fusing", None) or self.fuse_options()).replace(**changes["fusing"])
        arguments.setdefault("fusor_lm", self.fusor)
        fusion = FusionOfN(module, fusing=fusing, fallback=selection if fallback == "select" else fallback, **arguments)
        return fusion if chosen == "fuse" else Route(fusion, router=router, selection=selection)


# Keyword arguments of program() that are the program's own; every other one is a field of an option object.
_OWN = {"n", "temperature", "lm", "lms", "fusor_lm", "signature", "fallback", "deadline_s", "sample", "sampling",
        "fusing", "selection", "reward_fn", "router"}  # fmt: skip


def _split_overrides(overrides: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``program()``'s keyword arguments: the program's own, and the changes to each option object."""
    own = {name: value for name, value in overrides.items() if name in _OWN}
    changes: dict[str, dict[str, Any]] = {"sampling": {}, "fusing": {}, "selection": {}}
    # A name two objects share (adapter, judge_lm, permutations) goes to the one the method's stage uses.
    order = [("sampling", SampleOptions), ("selection" if method == "select" else "fusing",
             SelectOptions if method == "select" else FuseOptions), ("selection", SelectOptions)]  # fmt: skip
    for name, value in overrides.items():
        if name in own:
            continue
        group = next((group for group, kind in order if name in kind.model_fields), None)
        if group is None:
            raise TypeError(f"program() got an unknown argument {name!r}: pass a FusionOfN/BestOfN argument or a field "
                            "of SampleOptions, FuseOptions or SelectOptions (fusion_dspy.core.options).")  # fmt: skip
        changes[group][name] = value
    return own, changes

"""The typed options of the stages: how candidates are drawn, how they are fused, how one is selected.

The arguments most programs set stay flat on ``FusionOfN`` / ``BestOfN`` (``n``, ``temperature``, ``lm``,
``fusor_lm`` ...), as on DSPy's modules; the rest are grouped here in three frozen, validated objects, each
defined once and used by the modules, ``Layers``, ``Route``, the config file and the server alike:

- ``SampleOptions``: batching, quorum and straggler grace, adaptive N, concurrency, the candidate store;
- ``FuseOptions``: the fusor's settings and the fusion's structure (groups, layers, permutations);
- ``SelectOptions``: how one candidate is kept (reward, judge, vote), for ``BestOfN`` and for every fallback.

A setting that can live in a config file is a field of ``SampleSettings`` or ``FuseSettings``, which the config's
``fusion:`` section inherits (``fusion_dspy.backends.config``): a new knob is one field here, and it reaches the
config, the modules and the server. Derive a variant with ``options.replace(...)`` (validated).

Example:
    >>> sampling = SampleOptions(quorum=3, straggler_grace_s=0.5)
    >>> fused = fd.FusionOfN("question -> answer", n=4, lm=lm, sampling=sampling,
    ...                      fusing=FuseOptions(layers=2), fallback=SelectOptions(vote="consensus"))
    >>> fused.layers.layer_2.options.quorum, sampling.replace(quorum=4).quorum
    (3, 4)
"""

import warnings
from typing import Any, Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fusion_dspy.core.adaptive import Adaptive, as_adaptive
from fusion_dspy.core.batching import BatchSamples
from fusion_dspy.core.store import CandidateStore

DEFAULT_N = 5  # candidates when neither n nor a teacher pool says otherwise
DEFAULT_TEMPERATURE = 0.7  # the paper's for test-time scaling


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def replace(self, **changes: Any) -> "_Options":
        """A copy with ``changes`` applied, validated like a new one (pydantic's ``model_copy`` does not validate)."""
        return type(self)(**{**dict(self), **changes})

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as error:  # one line per field, naming the object, what it got and what it takes
            raise ValueError(f"{type(self).__name__}: " + "; ".join(_explain(e) for e in error.errors())) from None


def _explain(error: dict[str, Any]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across fields: its message names them
        return message
    return f"{'.'.join(map(str, error['loc']))}: {message} (got {error.get('input')!r})"


class SampleSettings(BaseModel):
    """The sampling settings a config file may hold (its ``fusion:`` section inherits these fields)."""

    min_candidates: int = Field(1, ge=1, description="fewest successful samples to go on with")
    max_concurrency: int | None = Field(None, ge=1, description="most samples in flight at once (default: n)")
    quorum: int | None = Field(None, ge=1, description="go on once this many candidates are in (after the grace)")
    straggler_grace_s: float = Field(0.0, ge=0, description="seconds to wait for the rest once the quorum is in")


class SampleOptions(SampleSettings, _Options):
    """How ``Sample`` draws its N candidates (everything but N, the temperature and the LMs).

    Args:
        min_candidates: Fewest successful samples to go on with; fewer raise ``SamplingError``.
        max_concurrency: Most samples in flight at once. Defaults to ``n`` (in ``forward``, at most 64 threads).
        quorum: Once this many candidates are in, wait at most ``straggler_grace_s`` for the rest, then go on
            without them (the report's ``stragglers``). ``None`` waits for every sample. Stored candidates and
            earlier adaptive waves count toward it; new draws are still waited for until the first of them is in.
        straggler_grace_s: Seconds to wait for the rest once the quorum is in.
        adaptive: Draw in waves and stop once the candidates agree or a token budget is spent: an ``Adaptive``,
            or ``True`` for its defaults.
        batch_samples: Draw an LM's samples of a wave in ONE request with the OpenAI ``n`` parameter: ``True``,
            ``False``, ``"auto"`` or ``{model: setting}`` (see ``fusion_dspy.core.batching``).
        adapter: The DSPy adapter of the generator's calls (default: the context's).
        store: A ``CandidateStore`` to reuse candidates from and save new ones to, across calls, trials and runs.
            Stored candidates leave no trace, so bootstrap demos without a store.

    Example:
        >>> SampleOptions(quorum=3, adaptive=True).adaptive.wave
        4
    """

    adaptive: Adaptive | None = None
    batch_samples: BatchSamples = False
    adapter: dspy.Adapter | None = None
    store: CandidateStore | None = None

    def capped(self, n: int) -> "SampleOptions":
        """These options for a draw of ``n`` candidates: ``min_candidates`` and ``quorum`` at most ``n``.

        Example:
            >>> SampleOptions(min_candidates=3, quorum=4).capped(2).quorum
            2
        """
        quorum = None if self.quorum is None else min(self.quorum, n)
        return self.replace(min_candidates=min(self.min_candidates, n), quorum=quorum)

    @model_validator(mode="before")
    @classmethod
    def _adaptive(cls, values: Any) -> Any:
        if isinstance(values, dict) and "adaptive" in values:
            return {**values, "adaptive": as_adaptive(values["adaptive"])}
        return values


class FuseSettings(BaseModel):
    """The fusion settings a config file may hold (its ``fusion:`` section inherits these fields)."""

    shuffle: bool = Field(False, description="shuffle the order the fusor sees the candidates in (seeded per input)")
    retries: int = Field(1, ge=0, description="fresh fusor samples to try when its output cannot be parsed")
    group_size: int | Literal["auto"] | None = Field(None, description="fuse in groups of this many, then the fused "
                                                     "(auto: as many as the fusor's context window holds)")
    layers: int = Field(1, ge=1, description="Mixture-of-Agents proposer layers (1: plain Fusion-of-N)")
    permutations: int = Field(1, ge=1, description="fuse in this many candidate orders and keep one fusion")
    permutation_pick: Literal["consensus", "majority", "listwise"] = Field(
        "consensus", description="how the fusion of several orders is kept (listwise: the judge LM)")


class FuseOptions(FuseSettings, _Options):
    """How the fusor writes its answer, and the structure of the fusion.

    Args:
        instructions: Replaces the default, paper-style fusor instruction.
        shuffle: Shuffle the order candidates are shown to the fusor (seeded per input).
        retries: Fresh fusor samples to try when its output cannot be parsed (see ``Fuse``).
        compare: The fusor compares the candidates in a ``comparison`` field before answering.
        context_window: Tokens the fusor reads at once: a pool that does not fit is fused in groups, and every
            fusor prompt is counted before it is sent.
        adapter: The DSPy adapter of the fusor's calls (default: the context's), e.g. ``PlainAdapter``.
        group_size: Fuse in groups of this many, then fuse the fused, or ``"auto"`` (needs ``context_window``).
        layers: Mixture-of-Agents proposer layers; each further layer reads the previous layer's answers.
        permutations: Fuse the candidates in this many orders and keep one fusion.
        permutation_pick: How that fusion is kept: ``"consensus"``, ``"majority"`` or ``"listwise"`` (a judge).
        judge_lm: The judge of ``permutation_pick="listwise"`` (default: the generator LM, then the context's).

    Example:
        >>> FuseOptions(group_size="auto")
        Traceback (most recent call last):
        ...
        ValueError: FuseOptions: group_size='auto' sizes groups from the fusor's context window: pass context_window=.
    """

    instructions: str | None = None
    compare: bool = True
    context_window: int | None = Field(None, gt=0)
    adapter: dspy.Adapter | None = None
    judge_lm: dspy.BaseLM | None = None

    @model_validator(mode="after")
    def _auto_needs_window(self) -> "FuseOptions":
        if self.group_size == "auto" and not self.context_window:
            raise ValueError("group_size='auto' sizes groups from the fusor's context window: pass context_window=.")
        if isinstance(self.group_size, int) and self.group_size < 2:
            raise ValueError(f"group_size must be None, 'auto' or at least 2, got {self.group_size}.")
        return self


class SelectOptions(_Options):
    """How one candidate is kept: by a reward function, an LLM judge, or a vote (see ``Select``).

    ``BestOfN`` selects with these; ``FusionOfN(fallback=SelectOptions(...))`` selects with them when fusion
    fails.

    Args:
        reward_fn: ``reward_fn(inputs: dict, prediction) -> float``, as in ``dspy.BestOfN``.
        judge: ``"listwise"`` or ``"pointwise"`` to select with an LLM judge.
        judge_lm: The judge's LM (default: the generator LM, then the judge predictor's own, then the context's).
        vote: Without reward or judge: ``"majority"`` (exact answers) or ``"consensus"`` (free text).
        adapter: The DSPy adapter of the judge's calls (default: the context's).
        permutations: With a listwise judge: judge in this many orders and count only wins that survive them.

    Example:
        >>> SelectOptions(judge="listwise", permutations=2).permutations
        2
    """

    reward_fn: Any = None
    judge: Literal["listwise", "pointwise"] | None = None
    judge_lm: dspy.BaseLM | None = None
    vote: Literal["majority", "consensus"] = "majority"
    adapter: dspy.Adapter | None = None
    permutations: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "SelectOptions":
        if self.reward_fn is not None and self.judge is not None:
            raise ValueError("Pass either reward_fn= or judge=, not both.")
        if self.permutations != 1 and self.judge != "listwise":
            raise ValueError(f"permutations={self.permutations} needs judge='listwise': votes, rewards and "
                             "pointwise scores do not depend on the order of the candidates.")  # fmt: skip
        return self

    @property
    def method(self) -> str:
        """``"reward"``, ``"listwise"``, ``"pointwise"``, ``"majority"`` or ``"consensus"``."""
        return "reward" if self.reward_fn is not None else (self.judge or self.vote)


Fallback = Literal["raise", "select"] | SelectOptions


def fallback_selection(fallback: Fallback, vote: str = "majority") -> SelectOptions | None:
    """What a failed combining stage falls back to: ``None`` (raise), or how to select among the candidates.

    ``"select"`` is a vote (``vote``: the majority, or the program's own vote); a ``SelectOptions`` says how.

    Example:
        >>> fallback_selection("raise"), fallback_selection("select").vote
        (None, 'majority')
        >>> fallback_selection("select", vote="consensus").vote
        'consensus'
    """
    if fallback == "raise":
        return None
    if fallback == "select":
        return SelectOptions(vote=vote)
    if isinstance(fallback, SelectOptions):
        return fallback
    raise ValueError(f"fallback must be 'raise', 'select' or a SelectOptions(...), got {fallback!r}.")


# Keyword arguments of the constructors before the option objects (0.2): still accepted for one release, with a
# DeprecationWarning, and moved to the option object that now holds them: {old name: (object, its field)}.
_LEGACY = {
    "sampling": {name: ("sampling", name) for name in ("min_candidates", "max_concurrency", "adapter", "store",
                                                       "batch_samples", "quorum", "straggler_grace_s", "adaptive")},
    "fusing": {**{name: ("fusing", name) for name in ("instructions", "shuffle", "retries", "compare",
                                                       "context_window", "group_size", "layers", "permutations",
                                                       "permutation_pick", "judge_lm")},
               "fusor_adapter": ("fusing", "adapter")},
    "selection": {**{name: ("selection", name) for name in ("judge", "judge_lm", "vote", "permutations")},
                  "judge_adapter": ("selection", "adapter")},
}  # fmt: skip


def legacy_options(owner: str, kwargs: dict[str, Any], groups: tuple[str, ...], param: str | None = None
                   ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Old keyword arguments of ``owner``, sorted into its option objects ``groups``, with a DeprecationWarning
    (``param``: the name of the one options parameter, when it is not the group's name).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     legacy_options("FusionOfN", {"quorum": 3, "fusor_adapter": None}, ("sampling", "fusing"))
        {'sampling': {'quorum': 3}, 'fusing': {'adapter': None}}
    """
    moved: dict[str, dict[str, Any]] = {}
    table = {name: where for group in groups for name, where in _LEGACY[group].items() if name not in
             {n for g in groups[:groups.index(group)] for n in _LEGACY[g]}}  # fmt: skip
    unknown = sorted(set(kwargs) - set(table))
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword argument(s) {unknown}. Its options are grouped in "
                        f"{', '.join(f'{g}=' for g in groups)} objects (fusion_dspy.core.options).")  # fmt: skip
    for name, value in kwargs.items():
        group, field = table[name]
        moved.setdefault(group, {})[field] = value
    if moved:
        spelled = ", ".join(f"{param or group}={_CLASSES[group]}({', '.join(f'{f}=...' for f in fields)})"
                            for group, fields in moved.items())  # fmt: skip
        warnings.warn(f"{owner}({', '.join(kwargs)}=...) is deprecated and will be removed in 0.4: pass {spelled}.",
                      DeprecationWarning, stacklevel=3)  # fmt: skip
    return moved


_CLASSES = {"sampling": "SampleOptions", "fusing": "FuseOptions", "selection": "SelectOptions"}


def merged(options: _Options | None, kind: type[_Options], changes: dict[str, Any] | None) -> Any:
    """``options`` (or the defaults of ``kind``) with the legacy ``changes`` applied."""
    base = options if options is not None else kind()
    return base.replace(**changes) if changes else base

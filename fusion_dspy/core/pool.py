"""Pool and Candidate: the typed result of sampling, accepted wherever candidates are.

A ``Sample`` returns a ``Pool``: its ``Candidate``s (each a prediction with the model that wrote it, the tokens it
cost, whether it came from the store, and its sample index) and a ``Failure`` per failed sample. ``Fuse``,
``Select``, ``FusionOfN`` and ``BestOfN`` take a ``Pool``, a list of ``Candidate``s, or plain predictions/dicts.
"""

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import dspy

from fusion_dspy.core.meter import Usage, total_tokens
from fusion_dspy.core.report import Failure
from fusion_dspy.errors import FusionDSPyError


@dataclass(frozen=True)
class Candidate:
    """One sampled answer and where it came from.

    Args:
        prediction: The generator's output (the task's output fields).
        model: The model string of the LM that wrote it (``None`` when given from outside).
        usage: Token usage of drawing it, ``{model: {"prompt_tokens": ..., ...}}`` (its original cost when stored).
        cached: It came from a ``CandidateStore`` instead of a new request.
        index: Its sample index in the draw (stable across N: sample ``i`` of N=8 is sample ``i`` of N=2).
        truncated: The reply was cut short at ``max_tokens`` (finish_reason ``"length"``): kept, but its last
            field may be incomplete (see ``fusion_dspy.core.truncation``).
    """

    prediction: dspy.Prediction
    model: str | None = None
    usage: Usage = field(default_factory=dict)
    cached: bool = False
    index: int = 0
    truncated: bool = False

    @property
    def tokens(self) -> int:
        return total_tokens(self.usage)


def SampleFailure(index: int, model: str, kind: str, text: str) -> Failure:  # noqa: N802 - the 0.2 class's name
    """Deprecated (0.3): a failed sample is a ``Failure`` (``fusion_dspy.core.report``), whose ``error_type`` is
    what ``kind`` was here; its ``kind`` is now the classified kind."""
    warnings.warn("SampleFailure is deprecated: failures are fusion_dspy.core.report.Failure objects.",
                  DeprecationWarning, stacklevel=2)  # fmt: skip
    message = text.removeprefix(f"{kind}: ")
    return Failure("sample", "straggler" if kind == "Straggler" else "other", kind, message, model, index)


def _as_prediction(value: Any) -> dspy.Prediction:
    if isinstance(value, dspy.Prediction):
        return value
    if isinstance(value, dict):
        return dspy.Prediction(**value)
    if isinstance(value, dspy.Example):
        return dspy.Prediction(**value.toDict())
    raise FusionDSPyError(f"A candidate must be a Candidate, a dspy.Prediction or a dict of output fields, got a "
                          f"{type(value).__name__}.")  # fmt: skip


class Pool(dspy.Prediction):
    """The candidates of one call, in sample order, and the samples that failed.

    A ``dspy.Prediction`` (so DSPy's usage tracking attaches to it) that is also a sequence of ``Candidate``:
    ``len(pool)``, ``pool[0]``, ``pool[:4]`` (a smaller ``Pool``, as an N-sweep wants) and iteration.

    Args:
        candidates: The candidates, in sample order.
        failures: One ``Failure`` per failed sample (its ``str`` is ``"sample 3 (openai/x): TimeoutError: ..."``).
        stragglers: One ``Failure`` of kind ``"straggler"`` per sample not waited for: still running when the
            straggler grace ran out.
        drawn: How many samples this call took (stored ones included); fewer than asked when it stopped early.
        stop_reason: Why sampling stopped: ``"complete"`` (all N), ``"agreement"`` or ``"budget"`` (adaptive N),
            ``"quorum"`` (stragglers cut off); ``None`` for a pool given from outside.

    Example:
        >>> pool = Pool.of([{"answer": "Paris"}, {"answer": "Lyon"}])
        >>> len(pool), pool[1].prediction.answer, [c.index for c in pool[:1]]
        (2, 'Lyon', [0])
    """

    def __init__(self, candidates: Iterable[Candidate] = (), failures: Iterable[Failure] = (),
                 stragglers: Iterable[Failure] = (), drawn: int | None = None, stop_reason: str | None = None):
        candidates = list(candidates)
        super().__init__(candidates=candidates, failures=list(failures), stragglers=list(stragglers),
                         drawn=len(candidates) if drawn is None else drawn, stop_reason=stop_reason)  # fmt: skip

    candidates: list[Candidate]
    failures: list[Failure]
    stragglers: list[Failure]
    drawn: int
    stop_reason: str | None

    @classmethod
    def of(cls, value: "Pool | Iterable[Any]") -> "Pool":
        """A ``Pool`` from a pool, ``Candidate``s, or predictions/dicts (numbered in the order given)."""
        if isinstance(value, Pool):
            return value
        if value is None:
            return cls()
        return cls(item if isinstance(item, Candidate) else Candidate(_as_prediction(item), index=i)
                   for i, item in enumerate(value))  # fmt: skip

    @property
    def predictions(self) -> list[dspy.Prediction]:
        return [candidate.prediction for candidate in self.candidates]

    @property
    def models(self) -> list[str | None]:
        return [candidate.model for candidate in self.candidates]

    @property
    def truncated(self) -> list[str]:
        """One line per candidate whose reply was cut short at ``max_tokens`` (kept in the pool all the same)."""
        return [truncation_note(c.index, c.model) for c in self.candidates if c.truncated]

    @property
    def tokens(self) -> int:
        """Tokens of every candidate (stored ones at what they cost when drawn)."""
        return sum(candidate.tokens for candidate in self.candidates)

    def require(self) -> "Pool":
        """This pool, or a clear error when there is nothing to fuse or select from."""
        if not self.candidates:
            raise FusionDSPyError("There are no candidates to fuse or select from: pass at least one.")
        return self

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self) -> Iterator[Candidate]:  # type: ignore[override]
        return iter(self.candidates)

    def __bool__(self) -> bool:
        return bool(self.candidates)

    @overload
    def __getitem__(self, key: int) -> Candidate: ...
    @overload
    def __getitem__(self, key: slice) -> "Pool": ...
    @overload
    def __getitem__(self, key: str) -> Any: ...

    def __getitem__(self, key):
        if isinstance(key, slice):
            return Pool(self.candidates[key], self.failures, self.stragglers, self.drawn, self.stop_reason)
        if isinstance(key, int):
            return self.candidates[key]
        return super().__getitem__(key)

    def __repr__(self) -> str:
        late = f", {len(self.stragglers)} stragglers" if self.stragglers else ""
        return f"Pool({len(self)} candidates, {len(self.failures)} failed{late})"


def truncation_note(index: int, model: str | None, max_tokens: Any = None) -> str:
    """The line saying a sample's reply was cut short, and what to change.

    Example:
        >>> print(truncation_note(2, "openai/gen", 64))
        sample 2 (openai/gen): the reply was cut short at max_tokens=64 (finish_reason 'length'); raise
        max_tokens of openai/gen
    """
    limit = f"max_tokens={max_tokens}" if max_tokens is not None else "max_tokens"
    return (f"sample {index} ({model}): the reply was cut short at {limit} (finish_reason 'length'); raise "
            f"max_tokens of {model}")


def predictions(candidates: "Pool | Sequence[Any]") -> list[dspy.Prediction]:
    """The predictions of any candidates argument, or an error when there are none."""
    return Pool.of(candidates).require().predictions

"""The fusion report: what one FusionOfN / BestOfN / Route call did, as data.

A call's prediction carries the task's output fields, ``candidates`` and ``report``, a ``FusionReport``: the
candidates' provenance, each stage's tokens and seconds, the samples that failed or were not waited for, how
many samples were drawn and why sampling stopped, the fallback taken and its cause, the route chosen, the orders
used. Each stage's ``cost`` is in USD where every billed call of every model it called has a known price
(``fusion_dspy.backends.prices``), else ``None``: unknown, never 0. ``report.to_dict()`` is the one serialized
form: serve's ``fusion`` object and the records of ``run``, ``eval`` and ``synth`` are that dict, so one schema
describes them all.

A ``Failure`` keeps what went wrong as data — the stage, the model, the sample index, the kind
(``fusion_dspy.failures.kind_of``, by exception type) and the exception's type name — and its message for
people only: nothing downstream parses it.

Example:
    >>> fused = fd.FusionOfN("question -> answer", n=3, lm=lm)
    >>> report = fused(question="2 + 2?").report
    >>> report.method, report.samples_drawn, sorted(report.tokens), report.fallback is None
    ('fuse', 3, ['fuse', 'sample'], True)
"""

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from fusion_dspy.core.meter import UNPRICED, Usage, total_tokens
from fusion_dspy.failures import kind_of


def _summed(costs: Any) -> float | None:
    """The sum of costs, or ``None`` when one of them is unknown (not a number)."""
    total = 0.0
    for cost in costs:
        if not isinstance(cost, (int, float)) or isinstance(cost, bool):
            return None
        total += cost
    return total


def _lists(value: Any) -> Any:
    """A JSON-ready copy: dataclasses as dicts, tuples as lists, through dicts and lists (what JSON makes of them,
    so a record equals its round trip). What ``dataclasses.asdict`` then a tuple walk gave, in one cheaper pass
    (a served request serializes one report)."""
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    if (names := _field_names(type(value))) is not None:
        return {name: _lists(getattr(value, name)) for name in names}
    return value


@functools.cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    """The field names of a dataclass type (``None`` for any other type), looked up once per type."""
    return tuple(f.name for f in dataclasses.fields(kind)) if dataclasses.is_dataclass(kind) else None


@dataclass(frozen=True)
class Failure:
    """One thing that failed in a call, kept as data.

    Args:
        stage: Where: ``"sample"``, ``"fuse"``, ``"select"``, ``"permutation"``, ``"judge"``.
        kind: What kind of failure, from the exception's type (``fusion_dspy.failures.FailureKind`` values:
            ``"timeout"``, ``"rate_limit"``, ``"context_window"``, ... and ``"straggler"`` for a sample not waited
            for).
        error_type: The exception's type name, for people and logs.
        message: The exception's message, for people: never parse it.
        model: The model string of the LM that failed, when known.
        index: The sample (or order) index, when the failure is one of several.

    Example:
        >>> failure = Failure.of(TimeoutError("no reply in 30 s"), "sample", model="openai/x", index=3)
        >>> failure.kind, str(failure)
        ('timeout', 'sample 3 (openai/x): TimeoutError: no reply in 30 s')
    """

    stage: str
    kind: str
    error_type: str
    message: str
    model: str | None = None
    index: int | None = None

    @classmethod
    def of(cls, error: BaseException, stage: str, model: str | None = None, index: int | None = None) -> "Failure":
        """The failure an exception stands for (its kind read from its type and its causes)."""
        return cls(stage, str(kind_of(error).value), type(error).__name__, str(error), model, index)

    def __str__(self) -> str:
        where = self.stage if self.index is None else f"{self.stage} {self.index}"
        where += f" ({self.model})" if self.model else ""
        return f"{where}: {self.error_type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StageReport:
    """One stage's cost: wall seconds and token usage per model (cache hits cost nothing, as in DSPy).

    Example:
        >>> priced, unpriced = {"total_tokens": 9, "cost": 2e-06}, {"total_tokens": 3}
        >>> StageReport(0.5, {"openai/gpt-4o-mini": priced}).cost, StageReport(0.5, {"a": priced, "b": unpriced}).cost
        (2e-06, None)
        >>> StageReport(0.5, {"a": {"total_tokens": 12, "cost": 2e-06, "unpriced_calls": 1}}).cost is None  # partial
        True
    """

    seconds: float
    usage: Usage = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return total_tokens(self.usage)

    @property
    def cost(self) -> float | None:
        """USD spent by the stage: the models' ``usage["cost"]`` summed; ``None`` when one model's price is unknown
        or one of its billed calls was not priced (``unpriced_calls``: its ``cost`` is then a lower bound)."""
        if any(counters.get(UNPRICED) for counters in self.usage.values()):
            return None
        return _summed(counters.get("cost") for counters in self.usage.values())

    def counts(self) -> dict[str, int]:
        """OpenAI's ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` of the stage, models summed."""
        prompt = sum(int(c.get("prompt_tokens") or 0) for c in self.usage.values())
        completion = sum(int(c.get("completion_tokens") or 0) for c in self.usage.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": self.tokens}

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4), **self.counts(), "cost": self.cost, "usage": self.usage}


@dataclass(frozen=True)
class CandidateReport:
    """Where one candidate came from: its sample index, model, tokens, whether stored, whether cut short."""

    index: int
    model: str | None
    tokens: int
    cached: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class FallbackReport:
    """A fallback taken: the combining stage failed (``cause``) and a selection (``method``) kept a candidate."""

    cause: Failure
    method: str
    selected_index: int | None = None


@dataclass(frozen=True)
class FusionReport:
    """What one call did (see the module doc). Every field is data; ``to_dict()`` is its JSON form.

    Args:
        method: The combining stage that ran: ``"fuse"``, ``"select"`` or ``"single"`` (a Route's one sample).
        candidates: Each candidate's provenance, in the order of the prediction's ``candidates``.
        stages: ``{stage: StageReport}``: ``"sample"`` and the combining stage.
        failures: Samples that failed (dropped), then failures inside the combining stage that it survived
            (a fusion order or a judge order that failed).
        stragglers: Samples not waited for once the quorum was in (kind ``"straggler"``).
        samples_drawn: Samples taken, stored ones included (fewer than N when sampling stopped early).
        stop_reason: ``"complete"``, ``"quorum"``, ``"agreement"`` or ``"budget"``; ``None`` for a given pool.
        selected_index: The candidate kept, when one was selected (``select``, a fallback, a single route).
        scores: The selection's score per candidate.
        fallback: The fallback taken, with its cause; ``None`` when the stage did its work.
        fusor_truncated: The fused answer was cut at ``max_tokens`` (the fusor's reply had finish_reason
            ``"length"``); ``False`` for a selection, whose kept candidate says so itself. ``finish_reason`` reads
            both.
        route: ``{"method": ..., "n": ...}``, chosen by a ``Route``'s router.
        orders: The candidate orders the fusor or judge saw (indices into the candidates).
        details: What a structure did, by name: ``fusion_groups``, ``layer_candidates``, ``permutation_index``,
            ``judge_wins``, ``judge_comparison`` ... (JSON values).
        request_id: The id of the server request the call answered (``fusion-dspy serve``'s ``X-Request-Id``);
            ``None`` outside a server.
    """

    method: str
    candidates: tuple[CandidateReport, ...] = ()
    stages: dict[str, StageReport] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    stragglers: tuple[Failure, ...] = ()
    samples_drawn: int | None = None
    stop_reason: str | None = None
    selected_index: int | None = None
    scores: list[float] | None = None
    fallback: FallbackReport | None = None
    fusor_truncated: bool = False
    route: dict[str, Any] | None = None
    orders: list[list[int]] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None

    @property
    def finish_reason(self) -> str:
        """OpenAI's ``finish_reason`` of the answer returned: ``"length"`` when it was cut at ``max_tokens`` (the
        fused answer, or the kept candidate of a selection, a fallback or a single route), else ``"stop"``.

        Example:
            >>> cut = (CandidateReport(0, "m", 9, truncated=True),)
            >>> kept = FusionReport("select", candidates=cut, selected_index=0)
            >>> kept.finish_reason, FusionReport("fuse", fusor_truncated=True).finish_reason
            ('length', 'length')
        """
        if self.method == "fuse" and self.fallback is None:
            return "length" if self.fusor_truncated else "stop"
        kept = self.selected_index
        return "length" if kept is not None and self.candidates[kept].truncated else "stop"

    @property
    def tokens(self) -> dict[str, int]:
        """Total tokens per stage, e.g. ``{"sample": 812, "fuse": 430}``."""
        return {name: stage.tokens for name, stage in self.stages.items()}

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def cost(self) -> float | None:
        """USD spent by the whole call, every stage summed; ``None`` when one stage's cost is unknown."""
        return _summed(stage.cost for stage in self.stages.values())

    def replace(self, **changes: Any) -> "FusionReport":
        return dataclasses.replace(self, **changes)

    def usage(self) -> dict[str, Any]:
        """OpenAI's ``usage`` of the whole call: every stage's tokens summed, and ``cost`` in USD where it is
        known (OpenRouter's field; absent, never 0, when a price is unknown: ``StageReport.cost``)."""
        counts = [stage.counts() for stage in self.stages.values()]
        usage: dict[str, Any] = {key: sum(c[key] for c in counts)
                                 for key in ("prompt_tokens", "completion_tokens", "total_tokens")}  # fmt: skip
        if (cost := self.cost) is not None:
            usage["cost"] = cost
        return usage

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the schema of serve's ``fusion`` object and of batch records).

        Example:
            >>> report = FusionReport("select", stages={"sample": StageReport(0.5, {"m": {"total_tokens": 7}})})
            >>> report.to_dict()["stages"]["sample"]["total_tokens"], report.to_dict()["tokens"]
            (7, {'sample': 7})
        """
        data = {name: _lists(getattr(self, name)) if name != "stages" else None for name in _field_names(type(self))}
        data["stages"] = {name: stage.to_dict() for name, stage in self.stages.items()}
        data["tokens"] = self.tokens
        data["cost"] = self.cost
        return data

    def relabeled(self, names: dict[str, str]) -> "FusionReport":
        """The same report with model strings shown as ``names`` says (e.g. the config's model names)."""
        label = lambda model: names.get(model, model) if model else model  # noqa: E731
        return self.replace(
            candidates=tuple(dataclasses.replace(c, model=label(c.model)) for c in self.candidates),
            failures=tuple(dataclasses.replace(f, model=label(f.model)) for f in self.failures),
            stragglers=tuple(dataclasses.replace(f, model=label(f.model)) for f in self.stragglers),
            stages={name: StageReport(s.seconds, {label(m): u for m, u in s.usage.items()})
                    for name, s in self.stages.items()},
        )  # fmt: skip

"""The prediction of a FusionOfN / BestOfN / Route call: the task's fields, ``candidates`` and ``report``.

The combining stages (``Fuse``, ``Select``, permutations, groups, layers) return what they did beside their
answer (``selected_index``, ``fusion_orders``, ``fusion_groups``, a typed ``fallback`` ...). ``fused_prediction``
moves all of it into the call's ``FusionReport`` so that the prediction holds only the task's output fields,
``candidates`` and ``report``. The 0.2 names (``stage_tokens``, ``fusion_error``, ``sample_failures`` ...) stay
readable for one release, derived from the report, with a ``DeprecationWarning``.
"""

import warnings
from collections.abc import Callable
from typing import Any

import dspy

from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.pool import Pool, truncation_note
from fusion_dspy.core.report import CandidateReport, FusionReport, StageReport
from fusion_dspy.failures import FailureKind

# What a combining stage may return beside the task's fields, and where it goes in the report.
_TOP = ("selected_index", "scores", "route", "fusor_truncated")
_ORDERS = ("fusion_orders", "judge_orders")
_DETAILS = ("comparison", "candidate_order", "fusion_groups", "layer_candidates", "permutation_index",
            "permutation_scores", "judge_wins", "judge_consistent", "judge_comparison")  # fmt: skip
_FAILURES = ("permutation_failures", "judge_failures")
_TEXT = ("fusion_error", "selection_error", "permutation_pick_error")  # messages for people: the data is typed
STAGE_KEYS = frozenset((*_TOP, *_ORDERS, *_DETAILS, *_FAILURES, *_TEXT, "fallback", "layer_failures"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dspy.Prediction):
        return value.toDict()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def fused_prediction(method: str, combined: dspy.Prediction, pool: Pool, meter: StageMeter,
                     route: dict[str, Any] | None = None) -> dspy.Prediction:  # fmt: skip
    """The call's prediction: ``combined``'s task fields, the pool's candidates, and the report of it all."""
    fields = {name: value for name, value in combined.items() if name not in STAGE_KEYS}
    extra = {name: value for name, value in combined.items() if name in STAGE_KEYS}
    orders = next((extra[name] for name in _ORDERS if name in extra), None)
    if orders is None and "candidate_order" in extra:
        orders = [extra["candidate_order"]]
    inner = [failure for name in (*_FAILURES, "layer_failures") for failure in extra.get(name) or ()]
    report = FusionReport(
        method=method,
        candidates=tuple(CandidateReport(c.index, c.model, c.tokens, c.cached, c.truncated) for c in pool),
        stages={name: StageReport(meter.seconds.get(name, 0.0), meter.usage.get(name, {})) for name in meter.seconds},
        failures=(*pool.failures, *(f for f in inner if f.kind != FailureKind.STRAGGLER)),
        stragglers=(*pool.stragglers, *(f for f in inner if f.kind == FailureKind.STRAGGLER)),
        samples_drawn=pool.drawn if any(model is not None for model in pool.models) else None,
        stop_reason=pool.stop_reason,
        selected_index=extra.get("selected_index"),
        scores=extra.get("scores"),
        fallback=extra.get("fallback"),
        fusor_truncated=bool(extra.get("fusor_truncated")),
        route=route,
        orders=orders,
        details={name: _jsonable(extra[name]) for name in _DETAILS if extra.get(name) is not None},
    )
    return FusionPrediction(**fields, candidates=pool.predictions, report=report)


def _fallback_text(stage: str) -> Callable[[FusionReport], str | None]:
    def text(report: FusionReport) -> str | None:
        cause = report.fallback.cause if report.fallback else None
        return f"{cause.error_type}: {cause.message}" if cause and cause.stage == stage else None
    return text


def _failure_lines(stage: str) -> Callable[[FusionReport], list[str]]:
    return lambda report: [str(f) for f in report.failures if f.stage == stage]


LEGACY: dict[str, Callable[[FusionReport], Any]] = {
    "stage_usage": lambda r: {name: stage.usage for name, stage in r.stages.items()},
    "stage_seconds": lambda r: {name: stage.seconds for name, stage in r.stages.items()},
    "stage_tokens": lambda r: r.tokens,
    "candidate_models": lambda r: [c.model for c in r.candidates],
    "sample_failures": _failure_lines("sample"),
    "stragglers": lambda r: [str(f) for f in r.stragglers],
    "truncated": lambda r: [truncation_note(c.index, c.model) for c in r.candidates if c.truncated],
    "samples_drawn": lambda r: r.samples_drawn,
    "stop_reason": lambda r: r.stop_reason,
    "selected_index": lambda r: r.selected_index,
    "scores": lambda r: r.scores,
    "route": lambda r: r.route,
    "fusion_error": _fallback_text("fuse"),
    "selection_error": _fallback_text("select"),
    "fusion_orders": lambda r: r.orders if "permutation_index" in r.details else None,
    "judge_orders": lambda r: r.orders if "judge_wins" in r.details else None,
    "permutation_failures": _failure_lines("permutation"),
    "permutation_pick_error": lambda r: next((f"{f.error_type}: {f.message}" for f in r.failures if f.stage == "judge"
                                              and r.method == "fuse"), None),
    "judge_failures": _failure_lines("judge"),
    **{name: (lambda key: lambda r: r.details.get(key))(name) for name in _DETAILS},
}


class FusionPrediction(dspy.Prediction):
    """A ``dspy.Prediction`` with the task's fields, ``candidates`` and ``report`` (a ``FusionReport``).

    Reading a 0.2 result name (``p.stage_tokens``, ``p.get("fusion_error")``, ``p["route"]``) still works for one
    release, with a ``DeprecationWarning`` naming the report field to read instead.

    Example:
        >>> p = fd.FusionOfN("question -> answer", n=2, lm=lm)(question="2 + 2?")
        >>> sorted(p.keys()), p.report.tokens["sample"] > 0
        (['answer', 'candidates', 'report'], True)
    """

    def _legacy(self, name: str) -> Any:
        report = self._store.get("report")
        if report is None or name not in LEGACY:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        warnings.warn(f"prediction.{name} is deprecated and will be removed in 0.4: read prediction.report "
                      "(fusion_dspy.core.report.FusionReport) instead.", DeprecationWarning, stacklevel=3)  # fmt: skip
        return LEGACY[name](report)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_store", "_demos", "_input_keys", "_completions", "_lm_usage"):
            raise AttributeError(name)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return self._legacy(name)

    def __getitem__(self, key: str) -> Any:
        if key in self._store or key not in LEGACY:
            return super().__getitem__(key)
        return self._legacy(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._store or key not in LEGACY:
            return super().get(key, default)
        value = self._legacy(key)
        return default if value is None else value


"""Scoring combining stages on examples: the one loop behind ``optimize`` (FusionSearch) and ``eval``.

Both draw a pool per example, run a FusionOfN's or BestOfN's combining stage on it and score the result with
the task's metric. A combining step that fails on its output (unparsable, unusable) scores 0 and is recorded;
one that fails because its model is unavailable (server down, timeout, rate limit, refused key: ``is_outage``)
raises ``StageUnavailable``: an outage says nothing about the method and must not be averaged as a 0. A metric
that raises or returns no number stops everything (a broken metric must not look like a bad program); any other
failure of one example is logged and leaves that example unscored. Ctrl-C stops taking new examples
(``fusion_dspy.workflows.interrupt``).
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dspy

from fusion_dspy.core.pool import Pool
from fusion_dspy.core.steps import Call, Steps, run
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.failures import OUTAGES, is_outage  # is_outage importable from here for one release
from fusion_dspy.workflows.interrupt import run_until_interrupted
from fusion_dspy.workflows.task import MetricError, Task

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Scored:
    """One combining step on one example: its metric score, the tokens of that stage, and its error, if any."""

    score: float
    tokens: int
    error: str | None = None
    prediction: dspy.Prediction | None = field(default=None, repr=False, compare=False)


def score_stage(task: Task, program: dspy.Module, example: dspy.Example, pool: Pool, where: str) -> Scored:
    """Run ``program``'s combining stage (fuse or select) on ``pool`` and score it; a failure scores 0.

    Example:
        >>> task = Task("qa", "question -> answer", metric=lambda ex, pred, trace=None: ex.answer == pred.answer)
        >>> best = fd.BestOfN("question -> answer", lm=scripted_lm(lambda call: {"answer": "4"}))
        >>> pool = fd.Pool.of([{"answer": "4"}, {"answer": "5"}, {"answer": "4"}])
        >>> score_stage(task, best, dspy.Example(question="2+2?", answer="4").with_inputs("question"), pool, "ex 0")
        Scored(score=1.0, tokens=0, error=None)
    """
    return run(scored_stage(task, program, example, pool, where))


def scored_stage(task: Task, program: dspy.Module, example: dspy.Example, pool: Pool, where: str) -> Steps[Scored]:
    """``score_stage`` as steps (see ``fusion_dspy.core.steps``), for sync and async callers alike."""
    try:
        prediction = yield Call(program, {"candidates": pool, **example.inputs()})
    except Exception as error:  # noqa: BLE001 - a failed fusion or selection is a miss, and is reported
        if is_outage(error):
            raise StageUnavailable(f"{where}: the {program.stage_name} stage's model is unavailable "
                                   f"({type(error).__name__}: {error}); not scored, a rerun tries again.") from error
        return Scored(0.0, 0, f"{type(error).__name__}: {error}")
    # A fallback's pick after an outage (fusor or judge down, fallback="select"/"vote") is not this method's answer.
    fallback = prediction.report.fallback
    if fallback is not None and fallback.cause.kind in OUTAGES:
        raise StageUnavailable(f"{where}: the {program.stage_name} stage's model is unavailable ({fallback.cause}); "
                               "the fallback's pick is not scored as this method, a rerun tries again.")  # fmt: skip
    # Every stage but sampling: the fusor's or judge's, and a Route's or a layered fusion's whatever they chose.
    tokens = sum(count for stage, count in prediction.report.tokens.items() if stage != "sample")
    return Scored(task.score(example, prediction, where), tokens, prediction=prediction)


def score_examples(work: Callable[[int], T], examples: Sequence[Any], num_threads: int,
                   stop_on_outage: bool = False) -> list[T | None]:  # fmt: skip
    """``work(index)`` for every example, ``num_threads`` at once; ``None`` where an example failed.

    A ``MetricError`` stops new examples from starting and is raised once the ones in flight finish; other
    failures are logged with the example's index. With ``stop_on_outage``, so is a ``StageUnavailable``
    (``optimize``: a trial whose fusor or judge is down cannot be scored, and is not a 0).
    """
    fatal = (MetricError, StageUnavailable) if stop_on_outage else (MetricError,)
    outcomes = run_until_interrupted(work, range(len(examples)), num_threads,
                                     stop=lambda outcome: isinstance(outcome, fatal))  # fmt: skip
    for kind in fatal:
        if (raised := next((outcome for outcome in outcomes if isinstance(outcome, kind)), None)) is not None:
            raise raised
    results: list[T | None] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            logger.warning("Example %d could not be scored: %s: %s", index, type(outcome).__name__, outcome)
            outcome = None
        results.append(outcome)
    return results


class StageUnavailable(FusionDSPyError):
    """A combining stage (fusor, judge) could not run because its model was unavailable: nothing to score."""

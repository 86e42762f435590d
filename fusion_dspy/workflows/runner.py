"""The driver of ``run``, ``synth`` and ``eval``, whatever the engine: rows out, one record each back into the files.

Shared so every command behaves alike under faults, on every engine (``fusion_dspy.workflows.engine``): ids are
checked first (``items.prepare``); an item whose inputs cannot be sent fails before any request; a failed item
goes to ``<output>.errors.jsonl`` and is tried again by the next run (the output holds successes only); the
output is locked against a second process; only the driver writes, one fsynced line per record, as the rows
finish; Ctrl-C stops taking new rows (``interrupt.run_until_interrupted``) and keeps every finished record.
"""

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fusion_dspy.workflows.engine import Engine, Job, Outcome, Row
from fusion_dspy.workflows.items import Item, prepare
from fusion_dspy.workflows.jsonl import ResultsLog, errors_path
from fusion_dspy.workflows.task import MetricError

logger = logging.getLogger(__name__)


def run_items(job: Job, items: Iterable[dict[str, Any]], fields: list[str], output: str | Path, engine: Engine,
              show_progress: bool = True) -> dict[str, int]:  # fmt: skip
    """Run ``job`` on each item not yet in ``output``, on ``engine``; counts of ``done``, ``failed``, ``skipped``.

    Args:
        job: What one item does (``jobs.RunJob``, ``SynthJob``, or a ``Built`` one): one record, or an error.
        items: Dicts of input fields, each with an optional ``id`` (default: the item's position).
        fields: The input fields every item must have.
        output: The JSONL output, resumed by ``id``; failures go to ``errors_path(output)``.
        engine: Where the items run (``LocalEngine``, ``WorkerEngine``, ``RayEngine``).
        show_progress: Show a progress bar with rate and ETA.

    Example:
        >>> from fusion_dspy.workflows.batch import item_failed, run_steps
        >>> from fusion_dspy.workflows.engine import Built
        >>> from fusion_dspy.workflows.local_engine import LocalEngine
        >>> job = Built(run_steps(lambda x: dspy.Prediction(double=2 * x)), item_failed, "double")
        >>> run_items(job, [{"x": 1}, {"x": None}], ["x"], tmp_path / "out.jsonl", LocalEngine(), show_progress=False)
        {'done': 1, 'failed': 1, 'skipped': 0}
        >>> run_items(job, [{"x": 1}, {"x": 3}], ["x"], tmp_path / "out.jsonl", LocalEngine(), show_progress=False)
        {'done': 1, 'failed': 0, 'skipped': 1}
    """
    prepared = prepare(items, fields)
    with ResultsLog(output) as log, ResultsLog(errors_path(output), exclusive=False) as errors:
        todo = [item for item in prepared if item.id not in log.done]
        with _Writer(log, errors, f"{_label(job, engine)} -> {log.path.name}", len(todo), show_progress) as writer:
            rows = []
            for item in todo:
                try:
                    check_sendable(item)
                    rows.append((item.id, item.inputs))
                except InputProblem as error:  # refused here, before any engine or request, the same everywhere
                    writer(job.failed(item.id, item.inputs, error))
            engine.map(job, rows, writer)
    return {"done": writer.done, "failed": writer.failed, "skipped": len(prepared) - len(todo)}


def run_examples(job: Job, todo: Callable[[set[str]], Sequence[Row]], output_dir: str | Path, engine: Engine,
                 show_progress: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Run ``job`` (the paired evaluation's) on the rows ``todo(done)`` names, into ``<output_dir>/results.jsonl``
    and ``results.errors.jsonl``; returns every record (earlier runs' included). ``MetricError`` if a row's
    metric broke (no new row starts then; the finished ones are written)."""
    results = Path(output_dir) / "results.jsonl"
    with ResultsLog(results) as log, ResultsLog(errors_path(results), exclusive=False) as errors:
        rows = todo(log.done)
        with _Writer(log, errors, _label(job, engine), len(rows), show_progress) as writer:
            engine.map(job, rows, writer)
        if writer.fatal:
            raise MetricError(writer.fatal)
        return log.records()


class _NoBar:
    """A progress bar that is not shown (``--quiet``): rich is not imported for it."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any) -> None:
        pass

    start = stop = lambda self: None


class _Writer:
    """The ``finished`` of an engine's map: writes an outcome's records, logs its warning, counts it, advances the
    progress bar (shown while the engine starts: worker processes and Ray actors take seconds)."""

    def __init__(self, log: ResultsLog, errors: ResultsLog, label: str, total: int, show_progress: bool):
        self.log, self.errors = log, errors
        if show_progress:
            from fusion_dspy.workflows.progress import progress_bar  # rich, imported when a bar is shown

            self.progress = progress_bar()
        else:
            self.progress = _NoBar()
        self.bar = self.progress.add_task(label, total=total)
        self.lock = threading.Lock()
        self.done, self.failed, self.fatal = 0, 0, ""

    def __call__(self, outcome: Outcome) -> None:
        for record in outcome.results:
            self.log.write(record)
        for record in outcome.errors:
            self.errors.write(record)
        if outcome.warning:
            logger.warning(outcome.warning)
        with self.lock:
            self.done, self.failed = self.done + bool(outcome.results), self.failed + (not outcome.results)
            self.fatal = self.fatal or outcome.fatal
        self.progress.advance(self.bar)

    def __enter__(self) -> "_Writer":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _label(job: Job, engine: Engine) -> str:
    return job.label if engine.name == "local" else f"{job.label} ({engine.name})"


class InputProblem(ValueError):
    """An item's inputs cannot be sent (missing or null field, text that is not valid Unicode)."""


def check_sendable(item: Item) -> None:
    """Raise ``InputProblem`` for an item whose inputs cannot be sent: the one refusal of every engine (local,
    ``--workers``, Ray), before any request."""
    if item.problem:
        raise InputProblem(f"item {item.id}: {item.problem}")

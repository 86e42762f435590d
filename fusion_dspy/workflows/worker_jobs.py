"""``run``, ``synth`` and ``eval`` over worker processes on this machine (``--workers K``): the local engine's files.

The jobs are the Ray engine's (``ray_jobs``), each built once per worker; the parent writes as the local engine
does: ids checked and inputs vetted first (``items.prepare``: an item that cannot be sent fails before any request),
one fsynced line per finished item in the output or in ``<output>.errors.jsonl`` (``ResultsLog``, locked, resumed
by id), and Ctrl-C handled by ``run_until_interrupted`` (no new item starts; the ones in flight finish and are
written; a second Ctrl-C abandons them). ``concurrency`` items are in flight at once, spread over the workers.

An item whose worker died before finishing it is written to the errors file (``WorkerDied``) and done by a rerun;
what a worker finished before dying is written like any other result, so every item ends in the output once.
"""

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dspy.signatures.signature import ensure_signature

from fusion_dspy.workflows.batch import error_record
from fusion_dspy.workflows.evaluation import unscored_records
from fusion_dspy.workflows.interrupt import run_until_interrupted
from fusion_dspy.workflows.items import Item, prepare
from fusion_dspy.workflows.jsonl import ResultsLog, errors_path
from fusion_dspy.workflows.progress import progress_bar
from fusion_dspy.workflows.ray_engine import Job, Outcome
from fusion_dspy.workflows.ray_jobs import EvalJob, RunJob, SynthJob
from fusion_dspy.workflows.runner import check_sendable
from fusion_dspy.workflows.task import MetricError
from fusion_dspy.workflows.workers import PoolClosed, WorkerPool, WorkersGone

logger = logging.getLogger(__name__)


def run_on_workers(job: RunJob, items: Iterable[dict[str, Any]], output: str | Path, input_fields: list[str],
                   workers: int = 2, concurrency: int = 16, show_progress: bool = True,
                   verbose: bool = False) -> dict[str, int]:  # fmt: skip
    """``run_batch`` over ``workers`` processes: the same output and errors file; counts as ``run_batch``'s.

    Example:
        >>> from fusion_dspy.workflows.ray_jobs import ConfigText
        >>> job = RunJob(ConfigText.read(stub_config), "question -> answer")   # the config travels as text
        >>> run_on_workers(job, [{"question": "2+2?"}], tmp_path / "out.jsonl", ["question"], workers=4,
        ...                concurrency=2)
        Traceback (most recent call last):
        ValueError: 4 worker processes need at least 4 items in flight at once (not 2), or some would idle: ...
    """
    return _items(job, items, input_fields, output, workers, concurrency, "run (workers)", show_progress, verbose)


def synthesize_on_workers(job: SynthJob, prompts: Iterable[dict[str, Any]], output: str | Path, workers: int = 2,
                          concurrency: int = 16, show_progress: bool = True,
                          verbose: bool = False) -> dict[str, int]:  # fmt: skip
    """``synthesize`` over ``workers`` processes: the same training file and errors file; the same counts."""
    fields = list(ensure_signature(job.signature).input_fields)
    return _items(job, prompts, fields, output, workers, concurrency, "synthesizing (workers)", show_progress,
                  verbose)  # fmt: skip


def evaluate_on_workers(job: EvalJob, workers: int = 2, concurrency: int = 4, show_progress: bool = True,
                        verbose: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """``PairedEvaluation.run`` over ``workers`` processes, ``concurrency`` examples at once: the same
    ``results.jsonl`` and ``results.errors.jsonl``; returns every record."""
    _check(workers, concurrency)
    results = Path(job.output_dir) / "results.jsonl"
    with ResultsLog(results) as log, ResultsLog(errors_path(results), exclusive=False) as errors:

        def failed(row: tuple[str, list[int]], error: Exception) -> Outcome:
            text = f"{type(error).__name__}: {error}"
            return Outcome(errors=unscored_records(int(row[0]), row[1], error),
                           warning=f"Example {row[0]} could not be scored: {text}")  # fmt: skip

        outcomes = _each(job, job.todo(log.done), lambda row: row, failed, log, errors, workers, concurrency,
                         "paired evaluation (workers)", show_progress, verbose)  # fmt: skip
        if fatal := [outcome.fatal for outcome in outcomes if outcome is not None and outcome.fatal]:
            raise MetricError(fatal[0])
        return log.records()


def _items(job: Job, items: Iterable[dict[str, Any]], fields: list[str], output: str | Path, workers: int,
           concurrency: int, label: str, show_progress: bool, verbose: bool) -> dict[str, int]:  # fmt: skip
    _check(workers, concurrency)
    prepared = prepare(items, fields)
    with ResultsLog(output) as log, ResultsLog(errors_path(output), exclusive=False) as errors:
        todo = [item for item in prepared if item.id not in log.done]

        def row(item: Item) -> tuple[str, dict[str, Any]]:
            check_sendable(item)
            return item.id, item.inputs

        def failed(item: Item, error: Exception) -> Outcome:
            return Outcome(errors=[error_record(item.id, item.inputs, error)],
                           warning=f"Item {item.id} failed: {type(error).__name__}: {error}")  # fmt: skip

        outcomes = _each(job, todo, row, failed, log, errors, workers, concurrency, f"{label} -> {log.path.name}",
                         show_progress, verbose)  # fmt: skip
    finished = [bool(outcome.results) for outcome in outcomes if outcome is not None]
    return {"done": finished.count(True), "failed": finished.count(False), "skipped": len(prepared) - len(todo)}


def _each(job: Job, todo: list, row: Callable[[Any], tuple[str, Any]], failed: Callable[[Any, Exception], Outcome],
          log: ResultsLog, errors: ResultsLog, workers: int, concurrency: int, label: str, show_progress: bool,
          verbose: bool) -> list[Outcome | None]:  # fmt: skip
    """Every item of ``todo`` through the pool, its records written as it finishes; its outcome (``None``:
    abandoned by a second Ctrl-C), in ``todo``'s order."""
    if not todo:
        return []
    with progress_bar(disable=not show_progress) as progress:
        bar = progress.add_task(label, total=len(todo))  # shown while the workers start (seconds: imports)
        pool = WorkerPool(job, workers, math.ceil(concurrency / workers), verbose)

        def one(item: Any) -> Outcome | None:
            try:
                outcome = pool.call(*row(item))
            except PoolClosed:
                return None  # abandoned: the process is on its way out, nothing more is written
            except WorkersGone:
                raise
            except Exception as error:  # noqa: BLE001 - e.g. InputProblem, WorkerDied: recorded, a rerun retries
                outcome = failed(item, error)
            for record in outcome.results:
                log.write(record)
            for record in outcome.errors:
                errors.write(record)
            if outcome.warning:
                logger.warning(outcome.warning)
            progress.advance(bar)
            return outcome

        with pool:
            outcomes = run_until_interrupted(one, todo, max_workers=concurrency, name="fusion-dspy-dispatch")
    if problem := next((outcome for outcome in outcomes if isinstance(outcome, Exception)), None):
        raise problem  # no worker left, or the errors file itself could not be written
    return outcomes


def _check(workers: int, concurrency: int) -> None:
    if workers > concurrency:
        raise ValueError(f"{workers} worker processes need at least {workers} items in flight at once (not "
                         f"{concurrency}), or some would idle: raise the concurrency or use fewer workers.")

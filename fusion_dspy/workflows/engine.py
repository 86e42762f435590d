"""The batch engine interface: a ``Job`` says what one row does, an ``Engine`` runs a job's rows somewhere.

``run``, ``synth`` and ``eval`` are each written once (``fusion_dspy.workflows.runner``) over an ``Engine``:
``LocalEngine`` (this process, threads), ``WorkerEngine`` (``--workers K``: worker processes on this machine) or
``RayEngine`` (``--engine ray``: an actor pool on a Ray cluster). Whatever the engine, a row is an ``(id, data)``
pair, the job turns it into an ``Outcome`` (records for the results file and for the errors file), and only the
driver writes them, through the same fsynced ``ResultsLog`` files: a run may be resumed by any engine.

A job's row is written once as steps (``fusion_dspy.core.steps``): the local engine drives them synchronously in
threads, a worker process or a Ray actor (``JobActor``) awaits them, many at once on one event loop.
"""

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fusion_dspy.core.steps import Steps, arun
from fusion_dspy.workflows.interrupt import run_until_interrupted

Row = tuple[str, Any]  # (id, data): an item's id and inputs (run, synth), or an example's index and missing N (eval)


@dataclass
class Outcome:
    """What one row produced: records for the results file and the errors file, a warning, or a fatal error."""

    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warning: str = ""
    fatal: str = ""  # the run must stop (e.g. a broken metric): no new row starts; raised once the rows are written

    def to_row(self, item_id: str) -> dict[str, str]:
        # One JSON string per column: records of any shape travel through Arrow (Ray) and pipes unchanged.
        return {"id": item_id, "results": json.dumps(self.results, ensure_ascii=False),
                "errors": json.dumps(self.errors, ensure_ascii=False), "warning": self.warning, "fatal": self.fatal}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Outcome":
        return cls(json.loads(row["results"]), json.loads(row["errors"]), row["warning"], row["fatal"])


RowSteps = Callable[[str, Any], Steps[Outcome]]  # (id, data) -> the steps that make that row's outcome


class Job(Protocol):
    """What to do with each row: picklable (``jobs.RunJob``, ``SynthJob``, ``EvalJob``) to run in other processes.

    ``build()`` runs once in each process that runs rows (a program is built there, from the config's text);
    ``failed`` makes the outcome of a row the engine lost (its worker died, its inputs cannot be sent);
    ``label`` names the job on the progress bar.
    """

    label: str

    def build(self) -> RowSteps: ...

    def failed(self, item_id: str, data: Any, error: Exception) -> Outcome: ...


class Engine(Protocol):
    """Where a job's rows run; ``name`` is shown on the progress bar (``"local"``, ``"workers"``, ``"ray"``).

    ``map(job, rows, finished)`` runs every row and calls ``finished(outcome)`` once per row as it ends (from any
    of its threads; ``finished`` writes the records). Once an outcome is ``fatal`` no new row starts. Ctrl-C
    stops new rows (``interrupt.BatchInterrupted``); an exception ``finished`` raises (a file cannot be written)
    is raised by ``map``.
    """

    name: str

    def map(self, job: Job, rows: Sequence[Row], finished: Callable[[Outcome], None]) -> None: ...


@dataclass(frozen=True)
class Built:
    """A job already built in this process (``run_batch``'s or ``synthesize``'s program): for the local engine.

    Example:
        >>> from fusion_dspy.core.steps import Call, run
        >>> def double(item_id, x):
        ...     doubled = yield Call(lambda x: 2 * x, {"x": x})        # a program's call, made by the engine
        ...     return Outcome(results=[{"id": item_id, "double": doubled}])
        >>> job = Built(double, failed=lambda item_id, x, error: Outcome(errors=[{"id": item_id}]), label="double")
        >>> run(job.build()("a", 21)).results
        [{'id': 'a', 'double': 42}]
    """

    row: RowSteps
    failed: Callable[[str, Any, Exception], Outcome]
    label: str = "batch"

    def build(self) -> RowSteps:
        return self.row


def dispatch(one: Callable[[Row], Any], rows: Sequence[Row], concurrency: int, **options: Any) -> None:
    """``one(row)`` for every row, ``concurrency`` at once, until all are done or Ctrl-C (``interrupt``); a fatal
    outcome (a broken metric) starts no new row; an exception ``one`` raised (no worker left, the files could not be
    written) is raised here once the rows in flight are done. The local and worker engines' loop."""
    outcomes = run_until_interrupted(one, rows, max_workers=concurrency, **options,
                                     stop=lambda outcome: isinstance(outcome, Outcome) and bool(outcome.fatal))
    if problem := next((outcome for outcome in outcomes if isinstance(outcome, Exception)), None):
        raise problem


class JobActor:
    """One process's host of a job (a worker process, a Ray actor): builds it once, runs rows, ``in_flight`` at once."""

    def __init__(self, job: Job, in_flight: int, verbose: bool):
        from fusion_dspy.process import CommandProcess

        # The process is the job's: logs masking the keys the job's Backends hold, DSPy's warnings off the console
        # unless verbose (the records are still made: replies cut short are still marked), imports frozen.
        CommandProcess(verbose=verbose).enter().keep_no_history()  # a long batch's memory stays flat
        self.job = job
        self.row = job.build()
        self.limit = asyncio.Semaphore(in_flight)

    async def __call__(self, row: dict[str, Any]) -> dict[str, str]:
        data = json.loads(row["data"])
        async with self.limit:
            try:
                outcome = await arun(self.row(row["id"], data))
            except Exception as error:  # noqa: BLE001 - the jobs catch their own errors; recorded, not raised
                outcome = self.job.failed(row["id"], data, error)
        return outcome.to_row(row["id"])


"""The worker-process engine (``--workers K``): a job's rows over K interpreters on this machine.

Each worker builds the job once (``workers.WorkerPool``); the parent hands rows out through
``run_until_interrupted`` as on the local engine (Ctrl-C: no new row starts; the ones in flight finish and are
written; a second Ctrl-C abandons them), ``concurrency`` in flight at once, spread over the workers.

A row whose worker died before finishing it fails with ``WorkerDied`` (its error record says so, and a rerun does
it); what a worker finished before dying is written like any other outcome, so every item ends in the output once.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from fusion_dspy.workflows.engine import Job, Outcome, Row, dispatch
from fusion_dspy.workflows.workers import PoolClosed, WorkerPool, WorkersGone


@dataclass(frozen=True)
class WorkerEngine:
    """Runs a job's rows over ``workers`` processes, ``concurrency`` rows in flight at once in all.

    Args:
        workers: Worker processes; each builds the job once (from the config's text) and needs a row in flight.
        concurrency: Rows in flight at once, spread over the workers.
        verbose: Workers log warnings and info, as the CLI does with ``-v``.

    Example:
        >>> WorkerEngine(workers=4, concurrency=2)
        Traceback (most recent call last):
        ValueError: 4 worker processes need at least 4 items in flight at once (not 2), or some would idle: ...
    """

    workers: int = 2
    concurrency: int = 16
    verbose: bool = False
    name: ClassVar[str] = "workers"

    def __post_init__(self):
        if self.workers > self.concurrency:
            raise ValueError(f"{self.workers} worker processes need at least {self.workers} items in flight at once "
                             f"(not {self.concurrency}), or some would idle: raise the concurrency or use fewer "
                             "workers.")  # fmt: skip

    def map(self, job: Job, rows: Sequence[Row], finished: Callable[[Outcome], None]) -> None:
        if not rows:
            return
        pool = WorkerPool(job, self.workers, math.ceil(self.concurrency / self.workers), self.verbose)

        def one(row: Row) -> Outcome | None:
            try:
                outcome = pool.call(*row)
            except PoolClosed:
                return None  # abandoned: the process is on its way out, nothing more is written
            except WorkersGone:
                raise
            except Exception as error:  # noqa: BLE001 - e.g. WorkerDied: recorded, a rerun retries
                outcome = job.failed(*row, error)
            finished(outcome)
            return outcome

        with pool:
            dispatch(one, rows, self.concurrency, name="fusion-dspy-dispatch")

"""The local engine: a job's rows in this process, ``concurrency`` at once in threads (the default of every command).

The job is built once, here; each row's steps are driven synchronously (``core.steps.run``: the program's own
``__call__``, each sample in its own thread) in a worker thread of ``interrupt.run_until_interrupted``, which
hands rows out only as fast as they finish, so Ctrl-C starts no new row and waits for the ones in flight (a
second Ctrl-C abandons them).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from fusion_dspy.core.steps import run
from fusion_dspy.workflows.engine import Job, Outcome, Row, dispatch


@dataclass(frozen=True)
class LocalEngine:
    """Runs a job's rows in this process, ``concurrency`` at once.

    Args:
        concurrency: Rows in flight at once, each in a thread of its own.

    Example:
        >>> from fusion_dspy.core.steps import Call
        >>> from fusion_dspy.workflows.engine import Built
        >>> def double(item_id, x):
        ...     doubled = yield Call(lambda x: 2 * x, {"x": x})
        ...     return Outcome(results=[{"id": item_id, "double": doubled}])
        >>> finished = []
        >>> LocalEngine(concurrency=2).map(Built(double, failed=None), [("a", 1), ("b", 2)], finished.append)
        >>> sorted(outcome.results[0]["double"] for outcome in finished)
        [2, 4]
    """

    concurrency: int = 1
    name: ClassVar[str] = "local"

    def map(self, job: Job, rows: Sequence[Row], finished: Callable[[Outcome], None]) -> None:
        steps = job.build()

        def one(row: Row) -> Outcome:
            item_id, data = row
            try:
                outcome = run(steps(item_id, data))
            except Exception as error:  # noqa: BLE001 - the jobs catch their own errors; recorded, not raised
                outcome = job.failed(item_id, data, error)
            finished(outcome)
            return outcome

        dispatch(one, rows, self.concurrency)

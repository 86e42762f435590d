"""The Ray engine: ``run``, ``eval`` and ``synth`` as a Ray Data pipeline over an actor pool, for jobs one machine
is too small for.

The driver reads the inputs, drops the ids its results file already holds, and sends the rest as a dataset of
small blocks to a pool of actors (Ray Data ``map`` with an ``ActorPoolStrategy``). Each actor builds the program
once, from the config's *text* (never from LM objects, which hold keys: every worker reads the key variables the
config names from its own environment), and runs many rows at once with ``acall`` on one event loop. Each row's
records stream back to the driver, which writes them through the same fsynced ``ResultsLog`` as the local
engine, so the files are the same: same records, same provenance, same error records.

Exactly once: a row is finished when the driver has written and fsynced it, and only the driver writes.

- A killed driver loses only rows it had not written yet; the rerun skips every id on disk and does the rest.
  A driver that started its own local Ray instance (no ``--address``) takes it down with it, even when killed
  (``ray_cluster.dies_with_this_process``): no actor goes on sending requests whose answers nobody would write.
- A killed worker loses nothing written: Ray restarts the actor and retries the block it was running (whose
  rows the driver never received); the driver also drops any id it already wrote this run, so a row that
  reached it twice is written once.
"""

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.engine import Job, JobActor, Outcome, Row
from fusion_dspy.workflows.ray_cluster import dies_with_this_process

# Ray Data runs up to 16 rows of one block at once through an async UDF
# (RAY_DATA_DEFAULT_ASYNC_ROW_UDF_MAX_CONCURRENCY), so a block holds min(16, in_flight) rows and an actor runs
# as many blocks at once as it takes to reach in_flight. A block is also what a dead worker's retry redoes and
# how often results reach the driver: small on purpose.
ROWS_PER_BLOCK = 16


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or an error saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the [data] extra has no pandas/pyarrow
    except ImportError as error:
        raise FusionDSPyError(f"--engine ray needs Ray Data, which is not installed ({error}). Install the extra: "
                              "pip install 'fusion-dspy[ray]'") from None  # fmt: skip
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Where and how wide a job runs: the Ray cluster, the actor pool and the rows each actor runs at once.

    Args:
        address: ``None`` starts a local Ray instance for the run (stopped after it, or with this process if it
            is killed: ``ray_cluster``); ``"auto"`` joins the cluster this machine belongs to (and leaves it up);
            ``"ray://HEAD:10001"`` connects through Ray Client. Ignored when Ray is already initialized here.
        actors: Actors in the pool; each takes one CPU of the cluster and builds the program once.
        in_flight: Rows each actor runs at once (their ``acall``s share the actor's event loop).
        verbose: Workers log warnings and info, as the CLI does with ``-v``.

    Example:
        >>> engine = RayEngine(address="auto", actors=8, in_flight=64)   # a cluster; None: a local Ray for the run
        >>> engine.actors * engine.in_flight                             # rows in flight at once
        512
    """

    address: str | None = None
    actors: int = 2
    in_flight: int = 16
    verbose: bool = False
    name: ClassVar[str] = "ray"

    def __post_init__(self):
        if self.actors < 1 or self.in_flight < 1:
            raise FusionDSPyError(f"--actors and --in-flight must be at least 1 (got {self.actors}, {self.in_flight}).")

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        ray = require_ray()
        with contextlib.ExitStack() as stack:
            if not ray.is_initialized():
                options = {"include_dashboard": False} if self.address is None else {}

                def start() -> Any:
                    return ray.init(address=self.address, logging_level=logging.WARNING, **options)

                try:
                    if self.address is None:  # our own local instance: it ends with this process, however it ends
                        # (the watchdog finds its processes by its session directory, where they keep their logs)
                        stack.enter_context(dies_with_this_process(lambda: start().address_info["session_dir"]))
                    else:  # a cluster of its own: joined and left, never taken down
                        start()
                except (ImportError, ValueError, ConnectionError) as error:  # no cluster there, or no Ray Client
                    client = str(self.address).startswith("ray://")  # needs grpcio, which ray[data] does not bring
                    hint = "; connecting through Ray Client needs pip install 'ray[client]'" if client else ""
                    fix = "Check the address, or drop --address to start a local Ray instance."
                    message = f"--address {self.address}: Ray could not connect ({error}){hint}. {fix}"
                    raise FusionDSPyError(message) from None
                stack.callback(ray.shutdown)
            if not self.verbose:  # Ray Data's execution notes; errors still show
                logging.getLogger("ray.data").setLevel(logging.ERROR)
            yield ray

    def map(self, job: Job, rows: Sequence[Row], finished: Callable[[Outcome], None]) -> None:
        """Run ``job`` on every row over the actor pool; ``finished(outcome)`` as each arrives (once per row)."""
        if not rows:
            return
        with self._session() as ray:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the driver shows its own bar, counting written rows
            context.print_on_execution_start = False
            block_rows = min(ROWS_PER_BLOCK, self.in_flight)
            dataset = ray.data.from_items([{"id": item_id, "data": json.dumps(data, ensure_ascii=False)}
                                           for item_id, data in rows],
                                          override_num_blocks=math.ceil(len(rows) / block_rows))  # fmt: skip
            # One block more than in_flight needs: its rows wait on the actor's semaphore and take the slots of
            # a block's finished rows, so an actor does not idle while a block is reported and the next starts.
            blocks_at_once = math.ceil(self.in_flight / block_rows) + 1
            pool = ray.data.ActorPoolStrategy(size=self.actors, max_concurrent_calls_per_actor=blocks_at_once)
            outcomes = dataset.map(JobActor, compute=pool, num_cpus=1, fn_constructor_kwargs={
                "job": job, "in_flight": self.in_flight, "verbose": self.verbose})  # fmt: skip
            seen = set()
            try:
                for row in outcomes.iter_rows():
                    if row["id"] in seen:  # a retried block's row that reached us twice
                        continue
                    seen.add(row["id"])
                    outcome = Outcome.from_row(row)
                    finished(outcome)
                    if outcome.fatal:
                        break
            except ray.exceptions.ActorDiedError as error:  # e.g. __init__ raised: a key variable is missing there
                cause = str(error).strip().splitlines()[-1]
                raise FusionDSPyError(f"A Ray worker could not run the job: {cause}\nEvery worker builds the program "
                                      "from the config's text and reads the key variables it names from its own "
                                      "environment (set them where `ray start` runs); fusion-dspy and the task's "
                                      "module must be importable there.") from None  # fmt: skip

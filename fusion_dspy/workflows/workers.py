"""Worker processes on this machine (``--workers K``): K interpreters, so a batch is not held to one GIL.

Each worker is a *spawned* ``multiprocessing`` process (a fresh interpreter, never a fork of a process with
threads) that builds the job once, as a Ray actor does (``JobActor``: from the config's text, keys from its own
environment, never pickled), runs every row it is handed at once with ``acall`` on one event loop, and sends each
outcome back when done. The parent gives each row to the worker with the fewest in flight, and alone writes.

Not ``ProcessPoolExecutor``: it runs one call at a time per process, and one dead worker breaks the whole pool,
failing the healthy workers' rows too. Here each worker has a pipe of its own: one that dies (even ``kill -9``)
loses no finished row (what it sent is still read), its rows in flight fail with ``WorkerDied`` (recorded by the
caller, done by a rerun), and a new worker takes its place unless the dead one never got ready. Workers ignore
SIGINT, which a terminal's Ctrl-C sends to the whole process group: stopping is the parent's call.
"""

import asyncio
import contextlib
import json
import multiprocessing
import signal
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fusion_dspy.backends.in_place import InPlaceExecutor
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.engine import Job, JobActor, Outcome

SPAWN = multiprocessing.get_context("spawn")


class WorkerDied(FusionDSPyError):
    """The worker process running a row ended before the row did; the row was not done, a rerun tries it again."""


class WorkersGone(FusionDSPyError):
    """No worker process is left to run rows (each died, and could not be replaced)."""


class PoolClosed(FusionDSPyError):
    """The pool was closed (e.g. by a second Ctrl-C) while a row was still in flight."""


@dataclass(eq=False)
class _Worker:
    number: int
    process: Any
    pipe: Any
    rows: dict[str, Future] = field(default_factory=dict)  # in flight: id -> the future its caller waits on
    sending: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    alive: bool = True
    failure: str = ""  # why the job could not be built there


class WorkerPool:
    """K worker processes that build ``job`` once each and run rows with ``acall``; ``call`` runs one row.

    Args:
        job: A picklable job (``jobs.RunJob``, ``SynthJob``, ``EvalJob``); each worker calls ``build()`` once.
        workers: Processes to start.
        in_flight: Rows each worker runs at once (its share of the batch's concurrency).
        verbose: Workers log warnings and info, as the CLI does with ``-v``.

    Example:
        >>> from fusion_dspy.workflows.jobs import ConfigText, SynthJob
        >>> with WorkerPool(SynthJob(ConfigText.read(stub_config)), workers=1, in_flight=4) as pool:
        ...     outcome = pool.call("p1", {"prompt": "Say hi."})        # blocks; thread-safe
        >>> outcome.results[0]["id"], outcome.results[0]["messages"][1]["content"]
        ('p1', 'Hello!')
    """

    def __init__(self, job: Job, workers: int = 2, in_flight: int = 16, verbose: bool = False):
        if workers < 1 or in_flight < 1:
            raise FusionDSPyError(f"workers and in_flight must be at least 1 (got {workers}, {in_flight}).")
        self.job, self.size, self.in_flight, self.verbose = job, workers, in_flight, verbose
        self._workers: dict[int, _Worker] = {}
        self._changed = threading.Condition()
        self._closing = False
        self._replacing = 0  # workers about to start in place of dead ones
        self._failure = ""  # how the last worker ended unexpectedly

    def __enter__(self) -> "WorkerPool":
        try:
            for number in range(self.size):
                self._start(number)
            with self._changed:
                self._changed.wait_for(lambda: all(w.ready or not w.alive for w in self._workers.values()))
                started = all(w.ready for w in self._workers.values())
            if not started:
                raise FusionDSPyError(f"A worker process could not start the job: {self._failure}. "
                                      "Each worker builds the program from the config's text and reads the key "
                                      "variables it names from the environment.")  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, item_id: str, data: Any) -> Outcome:
        """Run one row on the least busy worker and wait for its outcome; ``WorkerDied`` if that worker dies."""
        future: Future = Future()
        with self._changed:
            self._changed.wait_for(lambda: self._closing or self._usable() or not self._starting())
            if self._closing:
                raise PoolClosed("the worker pool is closed")
            if not (usable := self._usable()):
                raise WorkersGone(f"Every worker process has died (the last: {self._failure}); a rerun does the "
                                  "items not written.")  # fmt: skip
            worker = min(usable, key=lambda w: len(w.rows))
            worker.rows[item_id] = future
        with worker.sending, contextlib.suppress(OSError):  # a dead worker: its receiver fails the future
            worker.pipe.send({"id": item_id, "data": json.dumps(data, ensure_ascii=False)})
        return future.result()

    def close(self) -> None:
        """Stop the workers: at once (killed) if rows are in flight or one is not ready, else when they exit."""
        with self._changed:
            self._closing = True
            workers = list(self._workers.values())
            busy = any(w.rows or (w.alive and not w.ready) for w in workers)
            self._changed.notify_all()
        for worker in workers:
            if busy:
                worker.process.kill()
            else:
                with worker.sending, contextlib.suppress(OSError):
                    worker.pipe.send(None)  # no more rows: the worker exits
        for worker in workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            self._lost(worker)

    def _usable(self) -> list[_Worker]:
        return [w for w in self._workers.values() if w.ready and w.alive]

    def _starting(self) -> bool:
        return self._replacing > 0 or any(w.alive and not w.ready for w in self._workers.values())

    def _start(self, number: int) -> None:
        ours, theirs = SPAWN.Pipe()
        process = SPAWN.Process(target=serve, args=(self.job, self.in_flight, self.verbose, theirs),
                                name=f"fusion-dspy-worker-{number}", daemon=True)  # fmt: skip
        with _sigint_blocked():
            process.start()
        theirs.close()  # the worker's end is the worker's: its death closes the pipe
        worker = _Worker(number, process, ours)
        with self._changed:
            if self._closing:  # closed meanwhile (this is a replacement): close() no longer sees it
                process.kill()
            self._workers[number] = worker
        threading.Thread(target=self._receive, args=(worker,), name=f"{process.name}-receiver", daemon=True).start()

    def _receive(self, worker: _Worker) -> None:
        """Read a worker's messages until its pipe closes, then hand its unfinished rows back as failed."""
        with contextlib.suppress(EOFError, OSError):
            while True:
                kind, item_id, payload = worker.pipe.recv()
                with self._changed:
                    if kind == "ready":
                        worker.ready = True
                    elif kind == "fatal":
                        worker.failure = payload
                    future = worker.rows.pop(item_id, None) if item_id is not None else None
                    self._changed.notify_all()
                if future is not None and kind == "done":
                    future.set_result(Outcome.from_row(payload))
                elif future is not None:
                    future.set_exception(FusionDSPyError(payload))
        worker.process.join(timeout=10)
        replace = self._lost(worker)
        with worker.sending:
            worker.pipe.close()
        if replace:
            try:
                self._start(worker.number)
            finally:
                with self._changed:
                    self._replacing -= 1
                    self._changed.notify_all()

    def _lost(self, worker: _Worker) -> bool:
        """Mark ``worker`` dead and fail its rows; whether to start another in its place."""
        with self._changed:
            if not worker.alive:
                return False
            worker.alive = False
            orphans, worker.rows = worker.rows, {}
            closing = self._closing
            how = _ending(worker.process.exitcode)
            replace = worker.ready and not closing
            self._replacing += replace
            if not closing:
                self._failure = worker.failure or f"worker process {worker.number} {how}" + (
                    "" if worker.ready else " before it was ready")  # fmt: skip
            self._changed.notify_all()
        for future in orphans.values():
            future.set_exception(PoolClosed("the worker pool was closed") if closing else WorkerDied(
                f"worker process {worker.number} (pid {worker.process.pid}) {how} while this item ran; "
                "it was not done, and a rerun tries it again"))  # fmt: skip
        return replace


def serve(job: Job, in_flight: int, verbose: bool, pipe: Any) -> None:
    """A worker process: build the job once, then run the rows it receives, ``in_flight`` at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        actor = JobActor(job, in_flight, verbose)
    except Exception as error:  # noqa: BLE001 - told to the parent, which stops the run with it
        pipe.send(("fatal", None, f"{type(error).__name__}: {error}"))
        return
    pipe.send(("ready", None, None))
    with contextlib.suppress(EOFError, OSError):  # the parent is gone: nobody is left to answer
        asyncio.run(_serve_rows(actor, pipe))


async def _serve_rows(actor: JobActor, pipe: Any) -> None:
    asyncio.get_running_loop().set_default_executor(InPlaceExecutor())  # DSPy's bookkeeping of native calls
    running: set[asyncio.Task] = set()

    async def one(row: dict[str, str]) -> None:
        try:
            answer = ("done", row["id"], await actor(row))
        except Exception as error:  # noqa: BLE001 - the jobs catch their own errors; this is a bug there
            answer = ("failed", row["id"], f"{type(error).__name__}: {error}")
        with contextlib.suppress(OSError):
            pipe.send(answer)

    while (row := await asyncio.to_thread(pipe.recv)) is not None:
        task = asyncio.create_task(one(row))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


def _ending(code: int | None) -> str:
    return "stopped answering" if code is None else f"exited with code {code}" if code >= 0 else \
        f"was killed by signal {-code} ({signal.Signals(-code).name})"


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread meanwhile: a process started now inherits the mask, from its very first
    instruction on; a Ctrl-C meanwhile waits, and reaches this process when the block ends."""
    blocked = hasattr(signal, "pthread_sigmask")  # POSIX
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if blocked else None
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

"""A local Ray instance that dies with the driver that started it, even when the driver is killed (``kill -9``).

``ray.init()`` without an address starts a local instance whose head processes (GCS, raylet, monitors) share
the driver's fate through Ray's own mechanism (Linux ``PR_SET_PDEATHSIG``, ``ray._private.services``). The
raylet's children do not: when it dies, the dashboard and runtime-env agents and the workers, our actors among
them, are orphaned. The agents then linger for a minute or more, and an actor goes on with the rows in flight,
sending requests whose answers nobody will write. Ray's own fallback for this (its process reaper) would make
the driver a process-group leader, which takes it out of the terminal's Ctrl-C.

So a small watchdog process, started before the instance, holds a pipe from the driver. It learns the
instance's session directory (every process of the instance keeps its log files open there), and every process
the driver starts meanwhile carries one environment variable with a value of its own (``FUSION_DSPY_RAY_INSTANCE``,
set only while ``ray.init`` runs, for a start that fails half-way). When the pipe closes (the driver ended,
however it ended), the watchdog SIGKILLs those processes, and only those: never another driver's Ray, never a
cluster joined with ``--address``, ``RAY_ADDRESS`` or ``ray start`` (then nothing carries the mark, and the
watchdog is not told the session). Linux only (``/proc``); elsewhere a no-op.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

MARK = "FUSION_DSPY_RAY_INSTANCE"


@contextlib.contextmanager
def dies_with_this_process(start: Callable[[], str | None]) -> Iterator[None]:
    """Start a local Ray instance with ``start()`` (``ray.init``, returning its session directory); every process
    of it is killed at the end of the block (after ``ray.shutdown``: what is left of it) or when this process
    dies, whichever comes first.

    Example:
        >>> started = []
        >>> with dies_with_this_process(lambda: started.append(subprocess.Popen(["sleep", "60"]))):
        ...     started[0].poll() is None                    # running: it carries the mark
        True
        >>> started[0].wait(timeout=10), MARK in os.environ  # killed at the block's end; the mark was not left set
        (-9, False)
    """
    mark = uuid.uuid4().hex
    watchdog = _watchdog(mark)
    try:
        os.environ[MARK] = mark
        try:
            session = start()
        finally:
            os.environ.pop(MARK, None)
        # Only an instance started here: ray.init joins the one RAY_ADDRESS or `ray start` names instead, if any.
        if watchdog is not None and session and instance_processes(mark, [], {os.getpid()}):
            watchdog.stdin.write(f"{session}\n".encode())
            watchdog.stdin.flush()
        yield
    finally:
        if watchdog is not None:  # its pipe closes: it kills what is left, then ends
            with contextlib.suppress(OSError):
                watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=35)


def instance_processes(mark: str, sessions: list[str], spare: set[int]) -> list[int]:
    """This user's processes (others' cannot be read), but those in ``spare``, that carry ``MARK=mark`` in their
    environment, or that run this Python (as Ray's agents and workers do) with a file of one of the ``sessions``
    directories open (their logs; a ``tail -f`` of them is spared: it is not Python)."""
    needle = f"{MARK}={mark}".encode()
    folders = tuple(session.rstrip("/") + "/" for session in sessions)
    python = os.readlink("/proc/self/exe")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") or _logs_in(entry, folders, python):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return pids


def _logs_in(process: Path, folders: tuple[str, ...], python: str) -> bool:
    if not folders or os.readlink(process / "exe") != python:
        return False
    return any(os.readlink(fd).startswith(folders) for fd in (process / "fd").iterdir())


def _watchdog(mark: str) -> subprocess.Popen | None:
    if not sys.platform.startswith("linux"):
        return None
    environment = {name: value for name, value in os.environ.items() if name != MARK}
    # Its own session: a terminal's Ctrl-C or hang-up goes to the driver, not to it. -I -S: stdlib only, quick.
    return subprocess.Popen([sys.executable, "-I", "-S", __file__, mark], stdin=subprocess.PIPE, env=environment,
                            stdout=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def watch(mark: str) -> None:
    """The watchdog: read the instance's session directories until the driver's end of the pipe closes, then kill
    its processes until none is left (a worker could be starting meanwhile)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spare = {os.getpid(), os.getppid()}  # the driver, which may be ending normally
    sessions = [line.strip() for line in sys.stdin if line.strip()]
    quiet_rounds = 0
    for _ in range(300):  # 30 s at most
        pids = instance_processes(mark, sessions, spare)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        quiet_rounds = 0 if pids else quiet_rounds + 1
        if quiet_rounds >= 3:
            return
        time.sleep(0.1)


if __name__ == "__main__":
    watch(sys.argv[1])

"""The ``fusion-dspy`` command run in this process, for tests of what a command does rather than of its process.

A fresh interpreter costs a second or more (DSPy's import); a test whose subject is the command's result (the records it
wrote, its exit code, what it printed) runs it here instead. Tests of the process itself (a signal, a kill, two
processes at once, a fresh interpreter's imports) keep ``subprocess``. The process-wide state a command changes
(log record factory, frozen imports, DSPy settings, held keys) is undone by ``tests/conftest.py``'s ``isolated_dspy``.
"""

import contextlib
import io
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import pytest

from fusion_dspy.cli import main


class CliResult(NamedTuple):
    """What a command left: named as ``subprocess.CompletedProcess`` names it, so a converted test reads the same."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: list[str]) -> CliResult:
    """Run ``fusion-dspy *argv`` in this process; its exit code (``SystemExit``'s too, as from ``--help``) and output.

    Args:
        argv: The command's arguments, without the program name (``["run", "--config", ...]``).

    Example:
        >>> code, out, err = run_cli(["--help"])
        >>> code, "usage: fusion-dspy" in out
        (0, True)
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's --help and usage errors; sys.exit("message") as the shell sees it
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
            if not isinstance(exit_.code, int | None):
                print(exit_.code, file=err)
    return CliResult(code, out.getvalue(), err.getvalue())


# A command started from a terminal handles Ctrl-C; one started by a test inherits the test process's signal state
# instead (an ignored or a blocked SIGINT survives exec, and Python then installs no KeyboardInterrupt handler).
# A test of Ctrl-C must not depend on that state: the command starts as from a terminal.
_AS_FROM_A_TERMINAL = ("import runpy, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                       "signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "runpy.run_module('fusion_dspy.cli', run_name='__main__', alter_sys=True)")


def cli_process(*args: str) -> list[str]:
    """The argv of ``fusion-dspy *args`` in a fresh interpreter, with Ctrl-C's default handling whatever this
    process's (for ``subprocess.Popen``)."""
    return [sys.executable, "-c", _AS_FROM_A_TERMINAL, *args]


class Output:
    """A command's output, read line by line by a thread as it comes: a wait for a line can then time out (a
    ``readline()`` in the waiting loop blocks for as long as the command prints nothing)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(process.stdout or ()), daemon=True)
        self.reader.start()

    def text(self, timeout: float = 0) -> str:
        self.reader.join(timeout)
        return "".join(self.lines)


def wait_until(condition, limit: float = 180, process: subprocess.Popen | None = None,
               output: Output | None = None) -> None:  # fmt: skip
    """Wait for ``condition()``; fail (killing ``process``) after ``limit`` seconds, or when ``process`` ends first
    (its output, read by ``output`` if one reads it, shown)."""
    deadline = time.monotonic() + limit
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the command ended early: {output.text() if output else process.communicate()[0]}")
        if time.monotonic() > deadline:
            if process is not None:
                process.kill()
            pytest.fail("the command made no progress in time")
        time.sleep(0.05)

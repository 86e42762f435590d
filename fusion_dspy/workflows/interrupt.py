"""Ctrl-C in a batch: no new item starts, the items in flight finish (or are abandoned on a second Ctrl-C).

``run_until_interrupted`` is the runner of ``run``, ``synth``, ``eval`` and ``optimize``'s scoring loop. Items
are handed to worker threads only as fast as they finish (never all queued up front), so after Ctrl-C nothing
new is sent. The workers write their own records as they finish, so whatever finished is on disk when
``BatchInterrupted`` reaches the caller, and a rerun of the same command continues from there.
"""

import contextvars
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")

Outcome = Any  # the call's result, or the Exception it raised


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a batch; every item that finished is saved.

    A ``KeyboardInterrupt``, so ``except Exception`` blocks let it through. ``abandoned`` counts the items still
    running when a second Ctrl-C gave up waiting for them (their threads cannot be stopped: exit the process).
    """

    def __init__(self, finished: int, abandoned: int):
        self.finished, self.abandoned = finished, abandoned
        super().__init__(f"interrupted after {finished} finished items ({abandoned} abandoned in flight)")


def run_until_interrupted(call: Callable[[T], Any], items: Iterable[T], max_workers: int = 1,
                          name: str = "fusion-dspy-batch",
                          stop: Callable[[Outcome], bool] | None = None) -> list[Outcome]:  # fmt: skip
    """``call(item)`` for every item, ``max_workers`` at a time in threads; results or exceptions, in item order.

    Each worker runs in a copy of the caller's ``contextvars`` context (DSPy's LM, trace and usage tracker stay
    the caller's). On Ctrl-C (``KeyboardInterrupt`` in the calling thread) no further item starts; the ones in
    flight run to their end, unless a second Ctrl-C abandons them; then ``BatchInterrupted`` is raised.

    Args:
        call: Does one item; what it raises is returned in its place (one bad item never ends the batch).
        items: The work, taken lazily one by one as workers free up.
        max_workers: Items in flight at once (1: one after another, still in a worker thread).
        name: Worker thread name prefix.
        stop: ``stop(outcome)`` true: no further item starts (the ones in flight finish); the outcomes returned
            are then those of the items started, a prefix of ``items``.

    Example:
        >>> run_until_interrupted(lambda x: 10 // x, [1, 2, 0], max_workers=2)
        [10, 5, ZeroDivisionError('integer division or modulo by zero')]
    """

    def guarded(item: T) -> Outcome:
        try:
            return call(item)
        except Exception as error:  # noqa: BLE001 - a failed item is reported to the caller, not raised here
            return error

    queue = iter(enumerate(items))
    outcomes: dict[int, Outcome] = {}
    running: dict[Future, int] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix=name)

    def start_next() -> None:
        for index, item in queue:  # takes at most one item
            # One context copy per item: a Context object cannot be entered by two threads at once.
            running[pool.submit(contextvars.copy_context().run, guarded, item)] = index
            return

    try:
        for _ in range(max(1, max_workers)):
            start_next()
        stopped = False
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = outcomes[running.pop(future)] = future.result()
                stopped = stopped or (stop is not None and stop(outcome))
                if not stopped:
                    start_next()
    except KeyboardInterrupt:
        _drain(running, outcomes)  # raises BatchInterrupted
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [outcomes[index] for index in sorted(outcomes)]


def _drain(running: dict[Future, int], outcomes: dict[int, Outcome]) -> None:
    """After a first Ctrl-C: wait for the items in flight; after a second one, leave them."""
    if running:
        print(f"\nInterrupted: no new item starts; finishing the {len(running)} in flight "
              "(Ctrl-C again to abandon them).", file=sys.stderr, flush=True)  # fmt: skip
    try:
        wait(list(running))
    except KeyboardInterrupt:
        abandoned = sum(not future.done() for future in running)
        raise BatchInterrupted(len(outcomes) + len(running) - abandoned, abandoned) from None
    raise BatchInterrupted(len(outcomes) + len(running), 0) from None

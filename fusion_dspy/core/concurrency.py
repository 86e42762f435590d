"""Run one call per item concurrently, keeping DSPy's context (LM, trace, usage tracker) in every worker.

Why not ``dspy.Parallel``: it deep-copies the usage tracker per worker, so token usage is lost, and it runs
module *copies*, so optimizers never see the calls. Here each worker runs in a copy of the caller's
``contextvars`` context: the same trace list and usage tracker objects, the same predictors.
"""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from fusion_dspy.errors import DeadlineExceeded

T = TypeVar("T")

Outcome = Any  # the call's result, or the Exception it raised

# Threads one call starts at most unless told otherwise: enough to keep 64 requests in flight, few enough that
# n=1000 does not start 1,000 threads (their stacks and GIL churn cost more than the requests save).
MAX_THREADS = 64


def run_concurrently(call: Callable[[T], Any], items: Sequence[T], max_workers: int | None = None) -> list[Outcome]:
    """Call ``call(item)`` for every item in threads; return results or raised exceptions, in item order."""
    if not items:
        return []
    workers = max(1, min(len(items), max_workers or MAX_THREADS))

    def guarded(item: T) -> Outcome:
        try:
            return call(item)
        except Exception as error:  # noqa: BLE001 - a failed item is reported to the caller, not raised here
            return error

    if workers == 1:
        return [guarded(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusion-dspy") as pool:
        # One context copy per item: a Context object cannot be entered by two threads at once.
        futures = [pool.submit(contextvars.copy_context().run, guarded, item) for item in items]
        return [future.result() for future in futures]


def within(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()`` in a worker thread (in a copy of this context), waited for at most ``seconds``.

    Past the deadline the caller gets ``DeadlineExceeded`` at once; the worker is abandoned, and whatever it is
    waiting on ends by its own request timeout, its result unused.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusion-dspy-deadline")
    future = pool.submit(contextvars.copy_context().run, call)
    pool.shutdown(wait=False)
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        raise DeadlineExceeded(f"{what} did not finish within its deadline of {seconds:g} s; raise deadline_s, or "
                               "lower n or the models' timeout.") from None


async def awithin(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """The async twin of ``within``: the awaitable is cancelled at the deadline."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"{what} did not finish within its deadline of {seconds:g} s; raise deadline_s, or "
                               "lower n or the models' timeout.") from None


async def arun_concurrently(
    call: Callable[[T], Awaitable[Any]], items: Sequence[T], max_concurrency: int | None = None
) -> list[Outcome]:
    """Await ``call(item)`` for every item with at most ``max_concurrency`` in flight; results or exceptions."""
    limit = asyncio.Semaphore(max(1, max_concurrency or len(items) or 1))

    async def guarded(item: T) -> Outcome:
        async with limit:
            try:
                return await call(item)
            except Exception as error:  # noqa: BLE001 - reported to the caller
                return error

    return list(await asyncio.gather(*(guarded(item) for item in items)))

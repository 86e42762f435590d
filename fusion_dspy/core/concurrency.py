"""Run one call per item concurrently, keeping DSPy's context (LM, trace, usage tracker) in every worker.

Why not ``dspy.Parallel``: it deep-copies the usage tracker per worker, so token usage is lost, and it runs
module *copies*, so optimizers never see the calls. Here each worker runs in a copy of the caller's
``contextvars`` context: the same trace list and usage tracker objects, the same predictors.

A *quorum* cuts stragglers off: once items worth ``quorum`` have succeeded, the rest get at most ``grace_s``
seconds more, and those still running then come back as ``Straggler``. Async tasks are cancelled; a thread
cannot be, so a sync straggler runs on in the background and its late result is ignored (what it does on the
way, e.g. a ``CandidateStore`` write or usage it adds to a tracker still open, still happens).
"""

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from fusion_dspy.errors import DeadlineExceeded

T = TypeVar("T")

Outcome = Any  # the call's result, or the Exception it raised

# Threads one call starts at most unless told otherwise: enough to keep 64 requests in flight, few enough that
# n=1000 does not start 1,000 threads (their stacks and GIL churn cost more than the requests save).
MAX_THREADS = 64


class Straggler(Exception):  # noqa: N818 - an outcome, not an error anybody raises
    """The outcome of an item still running when the straggler grace ran out: not waited for."""


def _cut(weights: Sequence[int], outcomes: dict[int, Outcome], quorum: int) -> bool:
    """Items worth ``quorum`` have succeeded."""
    return sum(weights[i] for i, o in outcomes.items() if not isinstance(o, Exception)) >= quorum


def run_concurrently(call: Callable[[T], Any], items: Sequence[T], max_workers: int | None = None,
                     quorum: int | None = None, grace_s: float = 0.0,
                     weights: Sequence[int] | None = None) -> list[Outcome]:  # fmt: skip
    """Call ``call(item)`` for every item in threads; return results or raised exceptions, in item order.

    With ``quorum``, once items worth ``quorum`` (``weights``, default 1 each) have succeeded, wait at most
    ``grace_s`` seconds for the others; those still running come back as ``Straggler``.
    """
    if not items:
        return []
    workers = max(1, min(len(items), max_workers or MAX_THREADS))
    if quorum is not None:
        return _run_with_quorum(call, items, workers, quorum, grace_s, list(weights or [1] * len(items)))
    if workers == 1:
        return [_guard(call, item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusion-dspy") as pool:
        # One context copy per item: a Context object cannot be entered by two threads at once.
        futures = [pool.submit(contextvars.copy_context().run, _guard, call, item) for item in items]
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


def _guard(call: Callable[[T], Any], item: T) -> Outcome:
    try:
        return call(item)
    except Exception as error:  # noqa: BLE001 - a failed item is reported to the caller, not raised here
        return error


def _run_with_quorum(call: Callable[[T], Any], items: Sequence[T], workers: int, quorum: int, grace_s: float,
                     weights: list[int]) -> list[Outcome]:  # fmt: skip
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusion-dspy")
    futures: dict[Future, int] = {pool.submit(contextvars.copy_context().run, _guard, call, item): i
                                  for i, item in enumerate(items)}  # fmt: skip
    outcomes: dict[int, Outcome] = {}
    pending, deadline = set(futures), (time.monotonic() + grace_s if quorum <= 0 else None)
    try:
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            outcomes.update({futures[future]: future.result() for future in done})
            if deadline is None and _cut(weights, outcomes, quorum):
                deadline = time.monotonic() + grace_s
            elif deadline is not None and not done:
                break  # the grace ran out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # stragglers' threads finish unobserved
    return [outcomes.get(i, Straggler(f"item {i} still running {grace_s:g} s after enough others had succeeded"))
            for i in range(len(items))]  # fmt: skip


async def arun_concurrently(
    call: Callable[[T], Awaitable[Any]], items: Sequence[T], max_concurrency: int | None = None,
    quorum: int | None = None, grace_s: float = 0.0, weights: Sequence[int] | None = None,
) -> list[Outcome]:
    """Await ``call(item)`` for every item with at most ``max_concurrency`` in flight; results or exceptions.

    ``quorum``, ``grace_s`` and ``weights`` as in ``run_concurrently``; stragglers' tasks are cancelled.
    """
    limit = asyncio.Semaphore(max(1, max_concurrency or len(items) or 1))

    async def guarded(item: T) -> Outcome:
        async with limit:
            try:
                return await call(item)
            except Exception as error:  # noqa: BLE001 - reported to the caller
                return error

    if quorum is None:
        return list(await asyncio.gather(*(guarded(item) for item in items)))
    weights = list(weights or [1] * len(items))
    tasks = {asyncio.ensure_future(guarded(item)): i for i, item in enumerate(items)}
    outcomes: dict[int, Outcome] = {}
    pending, deadline = set(tasks), (time.monotonic() + grace_s if quorum <= 0 else None)
    try:
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            outcomes.update({tasks[task]: task.result() for task in done})
            if deadline is None and _cut(weights, outcomes, quorum):
                deadline = time.monotonic() + grace_s
            elif deadline is not None and not done:
                break  # the grace ran out
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return [outcomes.get(i, Straggler(f"item {i} still running {grace_s:g} s after enough others had succeeded"))
            for i in range(len(items))]  # fmt: skip

"""A native LM's async call keeps DSPy's bookkeeping on the event loop, as its sync call does, and its I/O off it.

What DSPy does: ``LM.acall`` hands its per-call bookkeeping to a worker thread with ``asyncio.to_thread``, so that a
slow step never blocks the event loop: preparing the request (a ``dspy.Image`` may read a local file), reading
and writing the cache (disk), pricing each reply (a price table loaded once). Its sync ``__call__`` runs the same
steps on the caller's thread.

Why that is not enough: on a native LM without a cache those steps are CPU alone, tens of microseconds, and each
hop to a thread costs more than the step: the hand-off to the worker, its return, and the loop's wake-up. A
fused request at N = 3 makes six (one to prepare each of its two calls, one to price each of its four replies):
a quarter of the server's CPU per sequential request (``benchmarks/serve.py --against``, one run; 3% at 64 in
flight, where the pool's threads are busy anyway), none of it fusion's work.

What we do instead: ``asyncio.to_thread`` runs a call on the loop's default executor, which a loop lets its owner
choose (``loop.set_default_executor``, public asyncio). ``InPlaceExecutor`` is a ``ThreadPoolExecutor`` that
runs a call at once, on the caller's thread, while the caller is inside ``bookkeeping_in_place()`` (a context
variable, so one task's setting is not another's); every other call goes to its threads as before. ``PricedLM``
enters it for a call whose bookkeeping is CPU alone (``fusion_dspy.backends.native.light_bookkeeping``: the native
engine, no cache, DSPy's bundled price metadata), and the native engine leaves it for its own I/O
(``io_in_threads()``: lm15 connects through a proxy, or refreshes a credential, in a thread). The server and the
worker processes of ``run`` / ``eval`` / ``synth`` set it on their loops; a loop with any other default executor
keeps DSPy's hops, so nothing changes on a user's own loop unless its owner sets one:
``asyncio.get_running_loop().set_default_executor(InPlaceExecutor())``.
"""

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

_IN_PLACE: ContextVar[bool] = ContextVar("fusion_dspy_bookkeeping_in_place", default=False)


class InPlaceExecutor(ThreadPoolExecutor):
    """A loop's default executor that runs the calls of ``bookkeeping_in_place()`` on the caller's thread.

    Example:
        >>> import asyncio, threading
        >>> async def where() -> tuple[bool, bool]:
        ...     asyncio.get_running_loop().set_default_executor(InPlaceExecutor())
        ...     with bookkeeping_in_place():
        ...         here = await asyncio.to_thread(threading.get_ident) == threading.get_ident()
        ...     return here, await asyncio.to_thread(threading.get_ident) == threading.get_ident()
        >>> asyncio.run(where())  # in place inside, in a thread outside
        (True, False)
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if not _IN_PLACE.get():
            return super().submit(fn, *args, **kwargs)
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - as a worker thread would: the awaiting caller gets it
            future.set_exception(error)
        return future


@contextlib.contextmanager
def bookkeeping_in_place(enabled: bool = True) -> Iterator[None]:
    """Inside, an ``InPlaceExecutor`` runs ``asyncio.to_thread`` calls on the caller's thread (when ``enabled``)."""
    token = _IN_PLACE.set(enabled)
    try:
        yield
    finally:
        _IN_PLACE.reset(token)


def io_in_threads() -> contextlib.AbstractContextManager[None]:
    """Inside, ``asyncio.to_thread`` calls go to threads again (an engine's I/O, within a call kept in place)."""
    return bookkeeping_in_place(False)

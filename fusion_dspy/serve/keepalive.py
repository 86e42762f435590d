"""SSE keep-alives: a comment line whenever a stream would otherwise be silent for an interval.

A client or proxy with an idle timeout (60 s is common) drops a connection on which nothing arrives; a fusion's
panel can take longer than that before the fusor writes its first word. The server therefore sends an SSE
comment (``: fusion processing``), which clients ignore, after each ``interval`` seconds without an event.

The stream itself starts (status 200, the role chunk) as soon as the request is accepted; a failure after that
ends it with an error event.
"""

import asyncio
from typing import Any

from fastapi.sse import format_sse_event

COMMENT = format_sse_event(comment="fusion processing")
IDLE = object()  # what ``next_item`` returns when the interval passed without an item


async def next_item(queue: asyncio.Queue, interval: float | None) -> Any:
    """The queue's next item, or ``IDLE`` once ``interval`` seconds pass without one (never, for ``None`` or 0).

    Example:
        >>> queue = asyncio.Queue()
        >>> asyncio.run(next_item(queue, 0.01)) is IDLE
        True
    """
    if not interval:
        return await queue.get()
    getting = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({getting}, timeout=interval)
    if done:
        return getting.result()
    getting.cancel()  # Queue.get gives up its place; an item put meanwhile stays in the queue
    try:
        await getting
    except asyncio.CancelledError:
        return IDLE
    return getting.result()  # the item arrived as it was being cancelled

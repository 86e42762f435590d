"""A streamed chat completion: the 200 and the role chunk at once, then the fusion's text (or an agent's tool-call
deltas) as it is written, keep-alive comments while the panel runs, and an OpenAI-style error event, never a silent
cut, for a failure after the start.

The stream owns its request's concurrency slot from the moment it is returned: ``GatedStream`` gives it back when
the response has ended, however it ends. A ``finally`` inside the events generator is not enough for that, because
a client gone before the first byte means the generator is never started, and its ``finally`` never runs.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
from fastapi.sse import EventSourceResponse, format_sse_event

from fusion_dspy.serve import keepalive
from fusion_dspy.serve.metrics import failures_of
from fusion_dspy.serve.request_id import with_request_id
from fusion_dspy.serve.run import FusionRun, upstream_error
from fusion_dspy.serve.schema import ChatCompletionRequest, ServeError
from fusion_dspy.serve.unicode import dumps


class GatedStream(EventSourceResponse):
    """A stream that holds its request's slot until the response has ended, however it ends: sent whole, cut by an
    error, or abandoned by a client gone before its first byte (when the events were never started, and a
    ``finally`` inside them would never run). The events are closed first, which stops the work they started."""

    def __init__(self, events: AsyncGenerator[bytes, None], on_end: Callable[[], None]):
        super().__init__(events, headers={"Cache-Control": "no-cache"})
        self.events, self.on_end = events, on_end

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()
            self.on_end()


def start_stream(run: FusionRun, chat: ChatCompletionRequest, timeout: float, keepalive_s: float, state: Any,
                 on_end: Callable[[], None]) -> GatedStream:  # fmt: skip
    """Answer 200 with the role chunk at once, then stream the fusion as it is drawn and written, with a keep-alive
    comment after each ``keepalive_s`` of silence; the client leaving stops the work (``finally``).

    Args:
        run: The request's fusion, accepted (valid, authorized, within the limits).
        chat: The request, for its ``stream_options``.
        timeout: Seconds for the whole fusion; past them the stream ends with a 504 error event.
        keepalive_s: Seconds of silence before an SSE comment line (0: none).
        state: The request's ``request.state``, where the status, first-token time, report and failures go for
            the metrics and logs.
        on_end: Called once when the response has ended, however it ends: gives the request's slot back.
    """
    queue: asyncio.Queue = asyncio.Queue()
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)

    async def produce() -> None:
        pool = None
        try:
            with anyio.fail_after(timeout):
                pool = await run.asample()
                final = None
                async for piece in run.stream(pool):
                    if isinstance(piece, str):
                        await queue.put(run.chunk({"content": piece}))
                    elif isinstance(piece, dict):  # an agent's delta: text or a tool call's pieces
                        await queue.put(run.chunk(piece))
                    else:
                        final = piece
                report = state.fusion_report = run.report(final)
                usage, fusion = run.usage_and_fusion(pool, final, report=report)
                await queue.put(run.chunk({}, run.message(final)[1], fusion=fusion))
                if include_usage:
                    await queue.put({**run.chunk({}), "choices": [], "usage": usage})
            await queue.put("[DONE]")
        except Exception as error:  # noqa: BLE001 - every failure reaches the client, as an error event
            state.fusion_failures = failures_of(error, run.names)
            await queue.put(upstream_error(error, run.redact))

    async def events() -> AsyncGenerator[bytes, None]:
        task = asyncio.create_task(produce())  # started with the stream: nothing runs for a response never sent
        try:
            yield _sse(run.chunk({"role": "assistant", "content": ""}))
            while True:
                item = await keepalive.next_item(queue, keepalive_s)
                if item is keepalive.IDLE:
                    yield keepalive.COMMENT
                elif isinstance(item, ServeError):
                    state.fusion_status = item.status
                    yield _sse(with_request_id(item.body()))  # ends the stream: an error event, never a silent cut
                    return
                else:
                    if getattr(state, "fusion_first_token", None) is None and _has_words(item):
                        state.fusion_first_token = time.perf_counter()
                    yield _sse(item)
                    if item == "[DONE]":
                        return
        except Exception as error:  # noqa: BLE001 - a failure while streaming still ends with an error event
            failure = upstream_error(error, run.redact)
            state.fusion_status = failure.status
            yield _sse(with_request_id(failure.body()))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    return GatedStream(events(), on_end)


def _has_words(item: Any) -> bool:
    return isinstance(item, dict) and bool(item.get("choices")) and bool(item["choices"][0]["delta"].get("content"))


def _sse(payload: dict[str, Any] | str) -> bytes:
    return format_sse_event(data_str=payload if isinstance(payload, str) else dumps(payload))

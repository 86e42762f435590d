"""A scripted ``dspy.LM`` for offline tests: real DSPy cache, rollout, usage and async paths, no network.

DSPy 3.4 lets an LM take a custom ``engine=`` object with ``complete(Request) -> Response``; everything above
the engine (adapters, cache keys, rollout ids, usage tracking, ``acall``) is DSPy's own code, which is what
the tests need to exercise. ``dspy.utils.DummyLM`` skips most of it.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import dspy
from dspy.lm15 import Message, Request, Response, TextPart, Usage

from fusion_dspy.testing.wire import InFlight, Responder, ScriptedCall, format_reply, parse_prompt


def _parse(request: Request, index: int) -> ScriptedCall:
    system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
    return parse_prompt(system, request.messages[-1].text or "", request.config.temperature,
                        request.config.response_format is not None, index)  # fmt: skip


class ScriptedEngine:
    """Sync engine: answers each request with ``respond(call)``, after ``delay`` seconds; records every call.

    Args:
        respond: Maps a ``ScriptedCall`` to a dict of output field values (or a raw string).
        delay: Seconds each request takes.
        fail: ``fail(call) -> bool``; when true the request raises ``RuntimeError`` (a failing backend).
        rendezvous: Each request waits until this many have been in flight together (see ``InFlight``): a
            deterministic test of concurrency.
        finish_reason: Each reply's finish reason (default ``"stop"``), or ``finish_reason(call) -> str`` per
            request, e.g. ``"length"`` for a reply cut short at ``max_tokens``.
    """

    def __init__(self, respond: Responder, delay: float = 0.0, fail: Callable[[ScriptedCall], bool] | None = None,
                 rendezvous: int | None = None, finish_reason: str | Callable[[ScriptedCall], str] = "stop"):
        self.respond, self.delay, self.fail, self.finish_reason = respond, delay, fail, finish_reason
        self.calls: list[ScriptedCall] = []
        self.flight = InFlight(rendezvous)
        self._lock = threading.Lock()

    @property
    def peak_in_flight(self) -> int:
        """Most requests being answered at once: proof of concurrency without timing."""
        return self.flight.peak

    def _answer(self, request: Request) -> Response:
        with self._lock:
            call = _parse(request, len(self.calls))
            self.calls.append(call)
        if self.fail and self.fail(call):
            raise RuntimeError(f"scripted failure of request {call.index}")
        text = format_reply(call, self.respond(call))
        tokens_in, tokens_out = len(call.system.split()) + len(call.user.split()), len(text.split())
        return Response(
            id=f"scripted-{call.index}",
            model="scripted",
            message=Message.assistant([TextPart(text)]),
            finish_reason=self.finish_reason(call) if callable(self.finish_reason) else self.finish_reason,
            usage=Usage(input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out),
        )

    def complete(self, request: Request) -> Response:
        self.flight.enter()
        try:
            self.flight.wait()
            time.sleep(self.delay)
            return self._answer(request)
        finally:
            self.flight.exit()

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    """The async twin of a ``ScriptedEngine``, sharing its script and call record."""

    def __init__(self, sync: ScriptedEngine):
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        flight = self.sync.flight
        flight.enter()
        try:
            await flight.await_met()
            await asyncio.sleep(self.sync.delay)
            return self.sync._answer(request)
        finally:
            flight.exit()

    async def aclose(self) -> None:
        pass


def scripted_lm(
    respond: Responder,
    model: str = "scripted/lm",
    delay: float = 0.0,
    fail: Callable[[ScriptedCall], bool] | None = None,
    rendezvous: int | None = None,
    finish_reason: str | Callable[[ScriptedCall], str] = "stop",
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` driven by ``respond``; its engine (with ``.calls``) is at ``lm.engine``.

    DSPy's response cache is off unless you pass ``cache=True``: a script edited between runs must not be
    answered from the on-disk cache of the previous run.

    Example:
        >>> lm = scripted_lm(lambda call: {"answer": "42"})
        >>> dspy.Predict("question -> answer")(question="6 x 7?", lm=lm).answer  # or dspy.configure(lm=lm)
        '42'
        >>> len(lm.engine.calls), lm.engine.calls[0].inputs
        (1, {'question': '6 x 7?'})
    """
    engine = ScriptedEngine(respond, delay=delay, fail=fail, rendezvous=rendezvous, finish_reason=finish_reason)
    lm_kwargs.setdefault("cache", False)
    return dspy.LM(model, engine=engine, async_engine=AsyncScriptedEngine(engine), **lm_kwargs)

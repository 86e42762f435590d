"""A scripted ``dspy.LM`` for offline tests: real DSPy cache, rollout, usage and async paths, no network.

DSPy 3.4 lets an LM take a custom ``engine=`` object with ``complete(Request) -> Response``; everything above
the engine (adapters, cache keys, rollout ids, usage tracking, ``acall``) is DSPy's own code, which is what
the tests need to exercise. ``dspy.utils.DummyLM`` skips most of it.
"""

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.lm15 import Message, Request, Response, TextPart, Usage

_OUTPUT_FIELDS = re.compile(r"^\d+\. `(\w+)`", re.MULTILINE)
_SECTION = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n*\Z|\n\nRespond with)", re.DOTALL)


@dataclass
class ScriptedCall:
    """What the scripted LM was asked: the parsed prompt of one request."""

    system: str
    user: str
    inputs: dict[str, str]
    output_fields: list[str]
    temperature: float | None
    json_mode: bool
    index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def wants(self, *names: str) -> bool:
        """True when the request asks for all these output fields (tells a fusor call from a generator call)."""
        return all(name in self.output_fields for name in names)


Responder = Callable[[ScriptedCall], "dict[str, Any] | str"]


def _parse(request: Request, index: int) -> ScriptedCall:
    system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
    user = request.messages[-1].text or ""
    outputs_block = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
    return ScriptedCall(
        system=system,
        user=user,
        inputs={name: value.strip() for name, value in _SECTION.findall(user)},
        output_fields=_OUTPUT_FIELDS.findall(outputs_block),
        temperature=request.config.temperature,
        json_mode=request.config.response_format is not None or "Respond with a JSON object" in user,
        index=index,
    )


def format_reply(call: ScriptedCall, reply: "dict[str, Any] | str") -> str:
    """A dict of field values in the format the request's adapter parses; a string is sent as it is."""
    if isinstance(reply, str):
        return reply
    if call.json_mode:
        return json.dumps(reply)
    sections = [f"[[ ## {name} ## ]]\n{value}" for name, value in reply.items()]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


class ScriptedEngine:
    """Sync engine: answers each request with ``respond(call)``, after ``delay`` seconds; records every call.

    Args:
        respond: Maps a ``ScriptedCall`` to a dict of output field values (or a raw string).
        delay: Seconds each request takes, to test concurrency.
        fail: ``fail(call) -> bool``; when true the request raises ``RuntimeError`` (a failing backend).
    """

    def __init__(self, respond: Responder, delay: float = 0.0, fail: Callable[[ScriptedCall], bool] | None = None):
        self.respond, self.delay, self.fail = respond, delay, fail
        self.calls: list[ScriptedCall] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # most requests being answered at once: proof of concurrency without timing
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1

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
            finish_reason="stop",
            usage=Usage(input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out),
        )

    def complete(self, request: Request) -> Response:
        self._enter()
        try:
            time.sleep(self.delay)
            return self._answer(request)
        finally:
            self._exit()

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    """The async twin of a ``ScriptedEngine``, sharing its script and call record."""

    def __init__(self, sync: ScriptedEngine):
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        self.sync._enter()
        try:
            await asyncio.sleep(self.sync.delay)
            return self.sync._answer(request)
        finally:
            self.sync._exit()

    async def aclose(self) -> None:
        pass


def scripted_lm(
    respond: Responder,
    model: str = "scripted/lm",
    delay: float = 0.0,
    fail: Callable[[ScriptedCall], bool] | None = None,
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` driven by ``respond``; its engine (with ``.calls``) is at ``lm.engine``.

    DSPy's response cache is off unless you pass ``cache=True``: a script edited between runs must not be
    answered from the on-disk cache of the previous run.

    Example:
        >>> lm = scripted_lm(lambda call: {"answer": "42"})
        >>> dspy.Predict("question -> answer", lm=lm)  # or dspy.configure(lm=lm)
        >>> len(lm.engine.calls)
    """
    engine = ScriptedEngine(respond, delay=delay, fail=fail)
    lm_kwargs.setdefault("cache", False)
    return dspy.LM(model, engine=engine, async_engine=AsyncScriptedEngine(engine), **lm_kwargs)

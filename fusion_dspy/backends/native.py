"""DSPy's own lm15 client, routed once: the engine of a model configured with ``engine: native``.

``dspy.LM(model, engine="lm15")`` resolves the model's route, plans its capabilities and prices the reply on every
request, and its async path hands each request to a worker thread four times: on a loopback server 5.3–5.7 ms
of client CPU per ``dspy.Predict`` call sync, 8–9 ms async (``benchmarks/sampling.py``), which N samples pay N
times. The same lm15 provider client behind DSPy's public engine contract (``dspy.LM(engine=...,
async_engine=...)``), with its route resolved once, costs 1.9–2.0 ms sync and 2.8–2.9 ms async. DSPy's cache, rollout
ids, usage tracking, history and error types are kept, as for any engine. An engine lists the parameters DSPy's
adapters may send it (``supported_params``: OpenAI's chat parameters, JSON mode included, on a route of that
dialect); DSPy's per-model capability hints (a model's native JSON Schema output, its function calling) are not
known to a custom engine: the server states them on its copies of an LM (``CappedRetryLM``) when a request asks.

Only public names of ``dspy.lm15`` are used: ``LMRouter`` / ``AsyncLMRouter`` resolve the model string (litellm
spellings such as ``openai/...`` and ``hosted_vllm/...`` included) and build the provider client. An async
client's connections belong to one event loop, so each running loop gets its own, and the clients of loops that
have closed are dropped (``asyncio.run`` per call works and leaks nothing). A client reads the environment's proxy
variables when it is built, not at every request (``fusion_dspy.backends.transport``). The key is never part of the
engine's saved state, its pickle or its copies: it is read again from ``api_key_env`` where it came from.

The OpenAI ``n`` parameter: DSPy's engine contract is one request, one ``Response`` (one message), and ``dspy.LM``
asks a custom engine ``n`` times for ``n`` completions. ``NativeEngine.for_n(n)`` is the engine of one such call
on a route that speaks OpenAI's chat dialect (``openai/``, ``hosted_vllm/``): its first request goes out once with
``n``, and DSPy's other ``n - 1`` requests get the reply's other choices (``fusion_dspy.core.batching``).
"""

import asyncio
import contextlib
import os
import threading
from dataclasses import replace
from typing import Any

from dspy import lm15

from fusion_dspy._litellm import local_cost_map
from fusion_dspy.backends.in_place import io_in_threads
from fusion_dspy.backends.native_choices import AsyncNChoices, NChoices, read_choices, transport_errors
from fusion_dspy.backends.transport import client_config
from fusion_dspy.failures import FailureKind, kind_of

NO_KEY = "no-key"  # what a self-hosted server without auth is sent (``api_base`` and no key variable)
# What DSPy's adapters may send a custom engine is what it lists (``supported_params``; DSPy assumes nothing
# else): OpenAI's chat parameters on a route of that dialect, JSON mode (``response_format``) included.
COMMON_PARAMS = frozenset({"temperature", "max_tokens", "top_p", "stream"})
OPENAI_CHAT_PARAMS = COMMON_PARAMS | {"stop", "max_completion_tokens", "seed", "presence_penalty",
                                      "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
                                      "response_format"}  # fmt: skip


def router_config(model: str, api_base: str | None, api_key: str | None, timeout: float | None) -> tuple[
        lm15.RouterConfig, str]:  # fmt: skip
    """The lm15 router settings for one model, and the ``provider:model`` it routes to (``UnknownModelError``
    for a model string lm15 cannot route)."""
    resolution = lm15.LMRouter(lm15.RouterConfig(env={})).resolve_openai_chat(model)  # offline: no key is read
    # Each wait (connecting, sending, the next byte, a free connection) is bounded by ``timeout``, as litellm's is.
    timeouts = None if timeout is None else lm15.Timeouts(connect=timeout, read=timeout, write=timeout, pool=timeout)
    config = lm15.RouterConfig(api_keys={resolution.provider: api_key} if api_key else None,
                               base_urls={resolution.provider: api_base} if api_base else None,
                               timeouts=timeouts, max_connections=1024)  # a server's requests x their samples
    return config, f"{resolution.provider}:{resolution.model}"


def light_bookkeeping(lm: Any, kwargs: dict[str, Any]) -> bool:
    """Whether DSPy's bookkeeping of a call of ``lm`` with ``kwargs`` is CPU alone, a few microseconds a step, so
    it may run on the event loop (``fusion_dspy.backends.in_place``): the native engine (no capability lookup),
    no cache (read and written on disk), DSPy's price metadata read from its bundled copy, not fetched."""
    native = isinstance(lm.engine, (NativeEngine, NChoices))  # NChoices: the engine of a call for n, on one request
    return native and not kwargs.get("cache", lm.cache) and local_cost_map()


@contextlib.contextmanager
def _timeouts_as_timeouts():
    """lm15 reports a timeout (connecting, sending, reading) as a transport error raised from the socket's
    ``TimeoutError``; DSPy's callers (retries, the server's 504) look for a timeout, as litellm raises one."""
    try:
        yield
    except lm15.TransportError as error:
        if kind_of(error) is not FailureKind.TIMEOUT:
            raise
        raise lm15.TimeoutError(str(error)) from error


class NativeEngine:
    """Sends a ``dspy.LM``'s requests with DSPy's lm15 client for one model, routed once.

    Args:
        model: The model string, as for ``dspy.LM`` (``openai/...``, ``hosted_vllm/...``, ``anthropic/...`` ...).
        api_base: The server's base URL; ``None`` for the provider's own.
        api_key_env: The environment variable holding the key; ``None``: ``"no-key"`` with ``api_base`` (a
            self-hosted server without auth), else the provider's own variable (``OPENAI_API_KEY`` ...).
        timeout: Seconds each wait may take: connecting, sending, the next bytes of the reply, a free connection.

    Example:
        >>> with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        ...     lm = dspy.LM("openai/stub", engine=NativeEngine("openai/stub", server.api_base),
        ...                  async_engine=AsyncNativeEngine("openai/stub", server.api_base), cache=False)
        ...     dspy.Predict("question -> answer")(question="2 + 2?", lm=lm).answer
        '4'
    """

    router_class = lm15.LMRouter

    def __init__(self, model: str, api_base: str | None = None, api_key_env: str | None = None,
                 timeout: float | None = None):  # fmt: skip
        self.model, self.api_base, self.api_key_env, self.timeout = model, api_base, api_key_env, timeout
        key = os.environ.get(api_key_env) if api_key_env else (NO_KEY if api_base else None)
        if api_key_env and not key:
            raise lm15.ConfigurationError(f"The environment variable {api_key_env} (the key of {model}) is not set.")
        self.config, self.route = router_config(model, api_base, key, timeout)
        self.wire_model = self.route.split(":", 1)[1]
        # The route speaks OpenAI's chat dialect, whose `n` asks for several choices in one request (offline).
        resolution = lm15.LMRouter(lm15.RouterConfig(env={})).resolve_openai_chat(model)
        self.sends_n = resolution.adapter == lm15.OpenAIChatLM.__name__
        self.supported_params = OPENAI_CHAT_PARAMS if self.sends_n else COMMON_PARAMS
        self._lock = threading.Lock()
        self._clients: dict[Any, tuple[Any, Any]] = {}  # event loop (None: sync) -> (router, provider client)
        self._dialect_client: Any = None
        self._twin: AsyncNativeEngine | None = None  # the async engine of this one's calls for n completions

    def _client(self, loop: Any = None) -> Any:
        """The provider client, built at the first request (a missing provider key fails there)."""
        with self._lock:
            for closed in [other for other in self._clients if other is not None and other.is_closed()]:
                del self._clients[closed]  # its sockets close with it (they cannot be awaited any more)
            if loop not in self._clients:
                router = self.router_class(client_config(self.config, self.router_class))
                self._clients[loop] = (router, router.lm(self.route))
            return self._clients[loop][1]

    def _wire(self, request: lm15.Request) -> lm15.Request:
        return replace(request, model=self.wire_model)

    def complete(self, request: lm15.Request) -> lm15.Response:
        with _timeouts_as_timeouts():
            return self._client().complete(self._wire(request))

    def _dialect(self) -> Any:
        """A sync client of the route, for its wire format only (an async client reads and writes the same)."""
        with self._lock:
            if self._dialect_client is None:
                self._dialect_client = lm15.LMRouter(self.config).lm(self.route)
            return self._dialect_client

    def _n_request(self, request: lm15.Request, n: int) -> Any:
        wire = self._wire(request)
        extensions = {**(wire.config.extensions or {}), "n": n}
        return self._dialect().build_request(replace(wire, config=replace(wire.config, extensions=extensions)),
                                             stream=False)  # fmt: skip

    def choices(self, request: lm15.Request, n: int) -> list[lm15.Response]:
        """``n`` completions of ``request`` from one request with the OpenAI ``n`` parameter."""
        transport_request = self._n_request(request, n)
        with _timeouts_as_timeouts(), transport_errors(), self._client().transport.stream(transport_request) as reply:
            status, body = reply.status, reply.read()
        return read_choices(self._dialect(), status, body, n, self.wire_model)

    def for_n(self, n: int) -> tuple[NChoices, AsyncNChoices]:
        """The engine pair of one ``dspy.LM`` call for ``n`` completions: one request with ``n``."""
        with self._lock:
            if self._twin is None:
                self._twin = AsyncNativeEngine(**self.dump_state())
        return NChoices(self, n), AsyncNChoices(self._twin, n)

    def stream(self, request: lm15.Request):
        """The reply as it is written (``dspy.streamify``); a consumer that stops early closes the request."""
        events = self._client().stream(self._wire(request))
        try:
            with _timeouts_as_timeouts():
                yield from events
        finally:
            if close := getattr(events, "close", None):
                close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients, dialect, self._dialect_client = self._clients, {}, self._dialect_client, None
        for other in (dialect, self._twin):
            if other is not None:
                other.close()
        for loop, (router, _) in clients.items():
            if loop is None:
                router.close()

    def dump_state(self) -> dict[str, Any]:
        """What ``dspy.LM.dump_state`` saves of this engine: the key's variable, never the key."""
        return {"model": self.model, "api_base": self.api_base, "api_key_env": self.api_key_env,
                "timeout": self.timeout}  # fmt: skip

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> "NativeEngine":
        return cls(**state)

    def __reduce__(self) -> tuple:  # a pickle (a process pool, cloudpickle) carries the state, not the key
        return type(self).load_state, (self.dump_state(),)

    def __copy__(self) -> "NativeEngine":  # copies of a program share its clients, as of an LM
        return self

    def __deepcopy__(self, memo: dict) -> "NativeEngine":
        return self


class AsyncNativeEngine(NativeEngine):
    """The async twin of ``NativeEngine``: one client per running event loop, since its connections belong to it."""

    router_class = lm15.AsyncLMRouter

    async def complete(self, request: lm15.Request) -> lm15.Response:  # type: ignore[override]
        with _timeouts_as_timeouts(), io_in_threads():
            return await self._client(asyncio.get_running_loop()).complete(self._wire(request))

    async def stream(self, request: lm15.Request):  # type: ignore[override]
        events = self._client(asyncio.get_running_loop()).stream(self._wire(request))
        try:
            while True:
                with _timeouts_as_timeouts(), io_in_threads():  # set and reset within a step, not across a yield
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                yield event
        finally:
            if aclose := getattr(events, "aclose", None):
                await aclose()

    async def choices(self, request: lm15.Request, n: int) -> list[lm15.Response]:  # type: ignore[override]
        transport_request = self._n_request(request, n)
        with _timeouts_as_timeouts(), transport_errors(), io_in_threads():
            async with self._client(asyncio.get_running_loop()).transport.stream(transport_request) as reply:
                status, body = reply.status, await reply.read()
        return read_choices(self._dialect(), status, body, n, self.wire_model)

    async def aclose(self) -> None:
        with self._lock:
            clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients[0].aclose()

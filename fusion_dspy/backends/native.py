"""DSPy's own lm15 client, routed once: the engine of a model configured with ``engine: native``.

``dspy.LM(model, engine="lm15")`` resolves the model's route, plans its capabilities and looks up its pricing
metadata on every request, and its async path hands each request to a worker thread four times. On a loopback
server that is 4.3 ms of client CPU per ``dspy.Predict`` call sync and 7.3 ms async (``benchmarks/sampling.py``),
which N samples pay N times. The same lm15 provider client behind DSPy's public engine contract
(``dspy.LM(engine=..., async_engine=...)``), with its route resolved once, costs 1.4 ms sync and 2.5 ms async:
DSPy's cache, rollout ids, usage tracking, history and error types are kept, as for any engine. What is not
kept is DSPy's cost estimate (``cost`` in ``lm.history``) and its per-model capability hints (native structured
outputs for ``JSONAdapter``); the adapters fall back to prompting for the format.

Only public names of ``dspy.lm15`` are used: ``LMRouter`` / ``AsyncLMRouter`` resolve the model string (litellm
spellings such as ``openai/...`` and ``hosted_vllm/...`` included) and build the provider client. An async
client's connections belong to one event loop, so each loop gets its own (``asyncio.run`` per call works).
"""

import asyncio
import threading
import weakref
from dataclasses import replace
from typing import Any

from dspy import lm15


def router_config(model: str, api_base: str | None, api_key: str | None, timeout: float | None) -> tuple[
        lm15.RouterConfig, str]:  # fmt: skip
    """The lm15 router settings for one model, and the ``provider:model`` it routes to."""
    resolution = lm15.LMRouter(lm15.RouterConfig(env={})).resolve_openai_chat(model)  # offline: no key is read
    timeouts = None if timeout is None else lm15.Timeouts(read=timeout, write=timeout, pool=timeout)
    config = lm15.RouterConfig(api_keys={resolution.provider: api_key} if api_key else None,
                               base_urls={resolution.provider: api_base} if api_base else None,
                               timeouts=timeouts)  # fmt: skip
    return config, f"{resolution.provider}:{resolution.model}"


class NativeEngine:
    """Sends a ``dspy.LM``'s requests with DSPy's lm15 client for one model, routed once.

    Args:
        model: The model string, as for ``dspy.LM`` (``openai/...``, ``hosted_vllm/...``, ``anthropic/...`` ...).
        api_base: The server's base URL; ``None`` for the provider's own.
        api_key: The key; ``None`` reads the provider's environment variable, as lm15 does.
        timeout: Seconds to wait for a connection, a send or the next byte of the reply.

    Example:
        >>> with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        ...     lm = dspy.LM("openai/stub", engine=NativeEngine("openai/stub", server.api_base, "x"),
        ...                  async_engine=AsyncNativeEngine("openai/stub", server.api_base, "x"), cache=False)
        ...     dspy.Predict("question -> answer")(question="2 + 2?", lm=lm).answer
        '4'
    """

    router_class = lm15.LMRouter

    def __init__(self, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout: float | None = None):  # fmt: skip
        self.model, self.api_base, self.timeout = model, api_base, timeout
        self.config, self.route = router_config(model, api_base, api_key, timeout)
        self.wire_model = self.route.split(":", 1)[1]
        self._clients: Any = None  # (router, provider client), built at the first request
        self._lock = threading.Lock()

    def _built(self) -> tuple[Any, Any]:
        """A router and its provider client; a missing key fails here, at the first request, not at start-up."""
        router = self.router_class(self.config)
        return router, router.lm(self.route)

    def _client(self) -> Any:
        with self._lock:
            if self._clients is None:
                self._clients = self._built()
            return self._clients[1]

    def _wire(self, request: lm15.Request) -> lm15.Request:
        return replace(request, model=self.wire_model)

    def complete(self, request: lm15.Request) -> lm15.Response:
        return self._client().complete(self._wire(request))

    def stream(self, request: lm15.Request):
        """The reply as it is written (``dspy.streamify``)."""
        yield from self._client().stream(self._wire(request))

    def dump_state(self) -> dict[str, Any]:
        """What ``dspy.LM.dump_state`` saves of this engine: never the key (loading reads the provider's
        environment variable, as DSPy's own engines do)."""
        return {"model": self.model, "api_base": self.api_base, "timeout": self.timeout}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> "NativeEngine":
        return cls(**state)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None:
            clients[0].close()


class AsyncNativeEngine(NativeEngine):
    """The async twin of ``NativeEngine``: one client per event loop, since its connections are bound to one."""

    router_class = lm15.AsyncLMRouter

    def __init__(self, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout: float | None = None):  # fmt: skip
        super().__init__(model, api_base, api_key, timeout)
        self._clients = weakref.WeakKeyDictionary()  # event loop -> its (router, provider client)

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._clients:
                self._clients[loop] = self._built()
            return self._clients[loop][1]

    async def complete(self, request: lm15.Request) -> lm15.Response:  # type: ignore[override]
        return await self._client().complete(self._wire(request))

    async def stream(self, request: lm15.Request):  # type: ignore[override]
        async for event in self._client().stream(self._wire(request)):
            yield event

    async def aclose(self) -> None:
        clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients[0].aclose()

"""Liveness and readiness: is the process serving, and should a load balancer send it requests now.

``GET /health/liveness`` answers 200 while the event loop runs. ``GET /health/readiness`` answers 200 only when
the server has started (its startup ran), is not draining, and at least one configured backend is reachable;
503 otherwise, with the reason. A backend is reachable when a TCP connection to its ``api_base`` (each deployment's,
the embedded model's local one) opens within a second; probes run at most every ``ttl`` seconds and are shared by
concurrent callers. A model without an ``api_base`` (a hosted provider litellm routes itself) is not probed and
counts as reachable: its failures show in the metrics instead.

Draining: on SIGTERM the server keeps serving for ``drain`` seconds with readiness at 503, so a load balancer
stops sending it requests, and then stops as uvicorn does (requests in flight finish). A second SIGTERM stops it
at once; Ctrl-C (SIGINT) stops it as uvicorn does, without the drain.
"""

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import EMBEDDED

DEFAULT_PORTS = {"http": 80, "https": 443}


def backend_targets(backends: Backends) -> dict[str, list[tuple[str, int]]]:
    """``{configured model name: [(host, port), ...]}`` of the models in use; ``[]`` for one not probed."""
    targets: dict[str, list[tuple[str, int]]] = {}
    for name in backends.used_models():
        cfg = backends.config.model(name)
        bases = [cfg.api_base, *(d.api_base for d in cfg.deployments)]
        if cfg.model == EMBEDDED:  # the model is loaded when its server listens
            bases = [getattr(backends.lm(name), "kwargs", {}).get("api_base")]
        addresses = []
        for base in filter(None, bases):
            parts = urlsplit(base)
            if parts.hostname:
                addresses.append((parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 80)))
        targets[name] = addresses
    return targets


async def _reachable(address: tuple[str, int], timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


@dataclass
class Readiness:
    """Whether the server should get traffic now (see the module doc).

    Args:
        targets: ``backend_targets(backends)``.
        ttl: Seconds a probe's answer is reused.
        timeout: Seconds one TCP probe may take.

    Example:
        >>> readiness = Readiness({"local": [("127.0.0.1", 9)]}, ttl=60)
        >>> asyncio.run(readiness.state())[0]     # not started yet
        'starting'
        >>> readiness.started = True
        >>> asyncio.run(readiness.state())        # nothing listens on port 9
        ('unreachable', {'reachable': 0, 'backends': 1})
    """

    targets: dict[str, list[tuple[str, int]]]
    ttl: float = 5.0
    timeout: float = 1.0
    started: bool = False
    draining: bool = False
    _checked: float = field(default=float("-inf"), repr=False)
    _reachable: dict[str, bool] = field(default_factory=dict, repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)

    @classmethod
    def of(cls, backends: Sequence[Backends], **options: Any) -> "Readiness":
        """The readiness of a server whose profiles use these backends (their models' targets merged)."""
        return cls({name: addresses for one in backends for name, addresses in backend_targets(one).items()},
                   **options)  # fmt: skip

    async def probe(self) -> dict[str, bool]:
        """``{model name: reachable}``, probed anew when the last answer is older than ``ttl``."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._checked >= self.ttl:
                names = list(self.targets)
                answers = await asyncio.gather(*(self._any(self.targets[name]) for name in names))
                self._reachable, self._checked = dict(zip(names, answers, strict=True)), time.monotonic()
        return self._reachable

    async def _any(self, addresses: list[tuple[str, int]]) -> bool:
        if not addresses:
            return True  # not probed (see the module doc)
        return any(await asyncio.gather(*(_reachable(address, self.timeout) for address in addresses)))

    async def state(self) -> tuple[str, dict[str, Any]]:
        """``("ready" | "starting" | "draining" | "unreachable", details)``."""
        if not self.started:
            return "starting", {}
        if self.draining:
            return "draining", {}
        reachable = await self.probe()
        counts = {"reachable": sum(reachable.values()), "backends": len(reachable)}
        return ("ready" if counts["reachable"] or not reachable else "unreachable"), counts

    def drain_on_sigterm(self, seconds: float) -> None:
        """Make SIGTERM drain: readiness 503 at once, the server's own stop ``seconds`` later (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.draining or seconds <= 0:
                self.draining = True
                return stop(signum, frame)
            self.draining = True
            timer = threading.Timer(seconds, stop, (signum, frame))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_sigterm)


def add_health_routes(app: FastAPI, readiness: Readiness, in_flight: Callable[[], int]) -> None:
    """``GET /health`` (always ok, with the requests in flight), ``/health/liveness`` and ``/health/readiness``."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": in_flight()}

    @app.get("/health/liveness")
    async def liveness() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/health/readiness")
    async def ready() -> JSONResponse:
        status, details = await readiness.state()
        return JSONResponse({"status": status, **details}, status_code=200 if status == "ready" else 503)

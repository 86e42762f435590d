"""Run an app with uvicorn in a background thread (tests, notebooks), and the exposure rule of every server.

Binding to an address other than loopback without an API key is refused: a fusion server spends the config's
keys and compute for whoever can reach it.

An idle keep-alive connection stays open ``IDLE_CONNECTION_S`` (uvicorn's ``timeout_keep_alive``, 5 s by default).
A client reuses an idle connection until its own expiry, 5 s in httpx and so in the OpenAI SDK: with both at 5 s,
a client could send a request on a connection just as the server closed it, and get a reset instead of a reply
(``httpx.ReadError``; a POST is not retried). It happened in 7 of 18 runs of ``benchmarks/serve.py --against``,
64 requests in flight; instrumented, a server at 5 s closed 20-36 idle connections in each such phase. A server
that keeps idle connections longer than its clients do never closes one under a request: 75 s, nginx's default,
is also longer than the 60 s a load balancer (AWS's) keeps its own.
"""

import ipaddress
import socket
import threading
import time
from typing import Any

from fusion_dspy.errors import FusionDSPyError

IDLE_CONNECTION_S = 75.0  # longer than clients keep an idle connection (httpx: 5 s; a load balancer: 60 s)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; false for 0.0.0.0, :: and every other address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback bind without a key, saying why and what to do."""
    if api_key is None and not is_loopback(host):
        raise FusionDSPyError(
            f"Refusing to serve on {host} without an API key: anyone who can reach that address could spend your "
            "models' keys and compute. Set a key (export FUSION_API_KEY=...; fusion-dspy serve --api-key-env "
            "FUSION_API_KEY ...), or bind to 127.0.0.1."
        )


class BackgroundServer:
    """The app on a free loopback port, served by uvicorn in a daemon thread; stops on exit.

    Args:
        app: The ASGI app (``create_app(...)``).
        startup_timeout: Seconds to wait for the port to accept connections.

    Example:
        >>> import openai
        >>> from fusion_dspy.serve.app import create_app
        >>> from fusion_dspy.serve.profiles import build_profiles
        >>> with BackgroundServer(create_app(build_profiles(fd.load_config(stub_config)))) as server:
        ...     [model.id for model in openai.OpenAI(base_url=server.base_url, api_key="-").models.list()]
        ['fusion', 'best-of-n']
    """

    def __init__(self, app: Any, startup_timeout: float = 30.0):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                                timeout_keep_alive=IDLE_CONNECTION_S)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="fusion-serve", daemon=True)  # fmt: skip
        self.startup_timeout = startup_timeout

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"The fusion server did not start on port {self.port} within "
                                   f"{self.startup_timeout} s.")  # fmt: skip
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


"""Run the app with uvicorn: in the foreground (``fusion-dspy serve``) or in a background thread (tests, notebooks).

Binding to an address other than loopback without an API key is refused: a fusion server spends the config's
keys and compute for whoever can reach it.
"""

import ipaddress
import socket
import threading
import time
from typing import Any

from fusion_dspy.errors import FusionDSPyError


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


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "info") -> None:  # fmt: skip
    """Serve ``app`` until interrupted (uvicorn's access log shows method, path and status, never headers)."""
    import uvicorn

    check_exposure(host, api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """The app on a free loopback port, served by uvicorn in a daemon thread; stops on exit.

    Args:
        app: The ASGI app (``create_app(...)``).
        startup_timeout: Seconds to wait for the port to accept connections.

    Example:
        >>> with BackgroundServer(create_app(profiles)) as server:
        ...     openai.OpenAI(base_url=server.base_url, api_key="-").models.list()
    """

    def __init__(self, app: Any, startup_timeout: float = 30.0):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
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


def serve_config(config: str | None, tuned: list[str], host: str = "127.0.0.1", port: int = 8000,
                 api_key_env: str | None = None, max_concurrency: int = 64, timeout: float = 600.0,
                 max_n: int = 16, max_body_bytes: int = 1_000_000, log_level: str = "warning") -> None:  # fmt: skip
    """``fusion-dspy serve``: check exposure and backends, build the profiles, serve until interrupted."""
    import os
    import sys

    from fusion_dspy.backends import load_config
    from fusion_dspy.serve.app import ServeSettings, create_app
    from fusion_dspy.serve.profiles import Limits, build_profiles
    from fusion_dspy.serve.secrets import Redactor, config_secrets

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise FusionDSPyError(f"--api-key-env {api_key_env}: that environment variable is not set. Export it "
                                  f"(export {api_key_env}=...) before starting the server.")  # fmt: skip
    check_exposure(host, api_key)  # before anything is loaded or started
    backends = load_config(config)
    backends.check()
    profiles = build_profiles(backends, tuned)
    settings = ServeSettings(api_key=api_key, max_concurrency=max_concurrency, timeout=timeout,
                             max_body_bytes=max_body_bytes, limits=Limits(max_n=max_n))  # fmt: skip
    app = create_app(profiles, settings, Redactor([api_key, *config_secrets(backends.config)]))
    auth = "key required" if api_key else "no key (loopback only)"
    print(f"fusion-dspy: serving {', '.join(profiles)} on http://{host}:{port}/v1 ({auth})", file=sys.stderr)
    serve(app, host, port, api_key, log_level)

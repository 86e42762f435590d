"""A tiny OpenAI-compatible chat server on 127.0.0.1, for testing the real HTTP path (litellm -> server).

It answers ``POST /v1/chat/completions`` (non-streaming) and ``GET /v1/models``, serves requests in threads
(so concurrency is real), can take a fixed time per request, and records every request body it received.
"""

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any]], str]


class StubOpenAIServer:
    """OpenAI-compatible stub server on a free loopback port.

    Args:
        reply: Maps a request body (``{"model", "messages", ...}``) to the assistant's text.
        delay: Seconds each request takes before it is answered.
        status: HTTP status to answer with; anything but 200 returns an OpenAI-style error body.

    Example:
        >>> with StubOpenAIServer(lambda body: "[[ ## answer ## ]]\\n4\\n\\n[[ ## completed ## ]]") as server:
        ...     lm = dspy.LM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm")
        ...     dspy.Predict("question -> answer", lm=lm)(question="2+2?")
        >>> len(server.requests)
    """

    def __init__(self, reply: Reply, delay: float = 0.0, status: int = 200):
        self.reply, self.delay, self.status = reply, delay, status
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # most requests being served at once
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as real servers (uvicorn) set it: without it the body, written after the headers,
            # waits for the client's delayed ACK, ~45 ms on every request of a keep-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client went away (killed)
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if server.status != 200:
                    error = {"message": "stub server failure", "type": "server_error", "code": server.status}
                    return self._send(server.status, {"error": error})
                text = server.reply(body)
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                completion_tokens = len(text.split())
                self._send(200, {
                    "id": f"stub-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })  # fmt: skip

        return Handler

    def start(self) -> "StubOpenAIServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="stub-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "StubOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

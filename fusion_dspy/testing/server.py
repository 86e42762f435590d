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

from fusion_dspy.testing.wire import InFlight, Responder, format_reply, parse_body

Reply = Callable[[dict[str, Any]], str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Python's default listen backlog of 5 makes a burst of new connections (N samples at once) stall for about
    # a second in TCP retries; real servers accept hundreds.
    request_queue_size = 256


class StubOpenAIServer:
    """OpenAI-compatible stub server on a free loopback port.

    Args:
        reply: Maps a request body (``{"model", "messages", ...}``) to the assistant's text.
        respond: Instead of ``reply``: maps the parsed request (a ``ScriptedCall``, as ``scripted_lm`` gets) to a
            dict of output fields or a raw string, like ``scripted_lm``'s ``respond``.
        delay: Seconds each request takes before it is answered.
        rendezvous: Each request waits until this many have been in flight together (see ``InFlight``).
        status: HTTP status to answer with; anything but 200 returns an OpenAI-style error body. A callable
            ``status(index)`` chooses per request (e.g. ``lambda i: 500 if i < 2 else 200``: two failures first).
        retry_after: Seconds sent as ``Retry-After`` with every error answer.
        body: ``body(index) -> bytes | None``: raw bytes to answer request ``index`` with instead of a proper
            reply (a truncated or non-JSON body); ``None`` answers normally.

    Example:
        >>> with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        ...     lm = dspy.LM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm", cache=False)
        ...     dspy.Predict("question -> answer")(question="2+2?", lm=lm).answer
        '4'
        >>> len(server.requests)
        1
    """

    def __init__(self, reply: Reply | None = None, delay: float = 0.0, status: int | Callable[[int], int] = 200,
                 respond: Responder | None = None, rendezvous: int | None = None, retry_after: float | None = None,
                 body: Callable[[int], bytes | None] | None = None):
        if (reply is None) == (respond is None):
            raise ValueError("Pass one of reply= (body -> text) or respond= (parsed call -> fields).")
        self.reply, self.respond, self.delay, self.status = reply, respond, delay, status
        self.retry_after, self.body = retry_after, body
        self.arrivals: list[float] = []  # time.monotonic() of each request's arrival, in request order
        self.requests: list[dict[str, Any]] = []
        self.flight = InFlight(rendezvous)
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                self._send_bytes(status, json.dumps(payload).encode())

            def _send_bytes(self, status: int, body: bytes) -> None:
                self.send_response(status)
                if status != 200 and server.retry_after is not None:
                    self.send_header("Retry-After", f"{server.retry_after:g}")
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
                    index = len(server.requests)
                    server.requests.append(body)
                    server.arrivals.append(time.monotonic())
                server.flight.enter()
                try:
                    server.flight.wait()
                    time.sleep(server.delay)
                except RuntimeError as missed:  # the rendezvous was not met: say so in the reply
                    return self._send(500, {"error": {"message": str(missed), "type": "server_error"}})
                finally:
                    server.flight.exit()
                raw = server.body(index) if server.body else None
                if raw is not None:
                    return self._send_bytes(200, raw)
                status = server.status(index) if callable(server.status) else server.status
                if status != 200:
                    error = {"message": "stub server failure", "type": "server_error", "code": status}
                    return self._send(status, {"error": error})
                text = server._text(body, index)
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

    @property
    def peak_in_flight(self) -> int:
        """Most requests being served at once."""
        return self.flight.peak

    def _text(self, body: dict[str, Any], index: int) -> str:
        if self.reply is not None:
            return self.reply(body)
        call = parse_body(body, index)
        return format_reply(call, self.respond(call))

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

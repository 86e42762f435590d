"""A tiny OpenAI-compatible chat server on 127.0.0.1, for testing the real HTTP path (litellm -> server).

It answers ``POST /v1/chat/completions`` (plain, or as server-sent events with ``stream: true``) and
``GET /v1/models``, serves requests in threads (so concurrency is real), can take a fixed time per request, and
records every request body it received.
"""

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fusion_dspy.testing.wire import InFlight, Responder, ScriptedCall, format_reply, parse_body

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
        delay: Seconds each request takes before it is answered, or ``delay(call) -> seconds`` per request (a
            ``ScriptedCall``, e.g. to make one sample a straggler).
        rendezvous: Each request waits until this many have been in flight together (see ``InFlight``).
        status: HTTP status to answer with; anything but 200 returns an OpenAI-style error body. A callable
            ``status(index)`` chooses per request (e.g. ``lambda i: 500 if i < 2 else 200``: two failures first).
        retry_after: Seconds sent as ``Retry-After`` with every error answer.
        body: ``body(index) -> bytes | None``: raw bytes to answer request ``index`` with instead of a proper
            reply (a truncated or non-JSON body); ``None`` answers normally.
        stream_gate: For streamed replies: after the first half of the words the stub waits (up to 30 s) until
            this event is set, so a test can prove the client got the first words before the last were written.
        reject_n: Answer 400 to a request asking for ``n > 1`` choices, as servers without the OpenAI ``n``
            parameter do. Otherwise a request with ``n`` gets ``n`` choices, each its own ``respond`` call (their
            ``call.index`` counts choices, so ``n`` choices are told apart as ``n`` requests would be).
        ignore_n: Answer one choice whatever ``n`` asks for, as some servers do.
        finish_reason: The ``finish_reason`` of each choice (default ``"stop"``), or ``finish_reason(call) ->
            str`` per choice (a ``ScriptedCall``; ``call.index`` counts choices), e.g. ``"length"`` for a reply
            cut short at ``max_tokens``. Streamed replies end with it too.
        echo_authorization: Error answers quote the request's ``Authorization`` header, as some proxies do: to
            test that a key an upstream echoes goes no further.
        tool_calls: ``tool_calls(call) -> [{"name": ..., "arguments": dict | str}, ...] | None`` per choice (a
            ``ScriptedCall``; the request's ``tools`` and ``tool_choice`` are in ``call.extra``): a list answers with
            those tool calls (OpenAI's form, fresh ids, no content, ``finish_reason: "tool_calls"``), as a model
            with native function calling does; ``None`` or ``[]`` answers with text as usual. Not streamed.

    Example:
        >>> with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        ...     lm = dspy.LM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm", cache=False)
        ...     dspy.Predict("question -> answer")(question="2+2?", lm=lm).answer
        '4'
        >>> len(server.requests)
        1
    """

    def __init__(self, reply: Reply | None = None, delay: float | Callable[[ScriptedCall], float] = 0.0,
                 status: int | Callable[[int], int] = 200, respond: Responder | None = None,
                 rendezvous: int | None = None, retry_after: float | None = None,
                 body: Callable[[int], bytes | None] | None = None, stream_gate: threading.Event | None = None,
                 reject_n: bool = False, ignore_n: bool = False,
                 finish_reason: str | Callable[[ScriptedCall], str] = "stop", echo_authorization: bool = False,
                 tool_calls: Callable[[ScriptedCall], list[dict[str, Any]] | None] | None = None):
        if (reply is None) == (respond is None):
            raise ValueError("Pass one of reply= (body -> text) or respond= (parsed call -> fields).")
        self.reply, self.respond, self.delay, self.status = reply, respond, delay, status
        self.retry_after, self.body, self.stream_gate = retry_after, body, stream_gate
        self.reject_n, self.ignore_n, self.finish_reason = reject_n, ignore_n, finish_reason
        self.echo_authorization = echo_authorization
        self.tool_calls = tool_calls
        self.waiting_at_gate = threading.Event()  # set while a streamed reply is held at stream_gate
        self.usage: list[dict[str, int]] = []  # the usage each answered request reported, in answer order
        self.arrivals: list[float] = []  # time.monotonic() of each request's arrival, in request order
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header, in request order
        self.choices = 0  # choices answered or being answered: the next choice's call.index
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
            # TCP_NODELAY, as real servers (uvicorn) set it: without it the body, written after the headers,
            # waits for the client's delayed ACK, ~45 ms on every request of a keep-alive connection.
            disable_nagle_algorithm = True

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
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client went away mid-send (killed): no request was made
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                n = 1 if server.ignore_n else int(body.get("n") or 1)
                rejected = server.reject_n and int(body.get("n") or 1) > 1
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(body)
                    server.authorizations.append(self.headers.get("Authorization"))
                    server.arrivals.append(time.monotonic())
                    first = server.choices
                    server.choices += 0 if rejected else n
                if rejected:
                    error = {"message": f"n={n} is not supported: this server returns one choice per request",
                             "type": "invalid_request_error", "param": "n", "code": 400}
                    return self._send(400, {"error": error})
                server.flight.enter()
                try:
                    server.flight.wait()
                    time.sleep(server.delay(parse_body(body, first)) if callable(server.delay) else server.delay)
                except RuntimeError as missed:  # the rendezvous was not met: say so in the reply
                    return self._send(500, {"error": {"message": str(missed), "type": "server_error"}})
                finally:
                    server.flight.exit()
                raw = server.body(index) if server.body else None
                if raw is not None:
                    return self._send_bytes(200, raw)
                status = server.status(index) if callable(server.status) else server.status
                if status != 200:
                    said = f" (sent {self.headers.get('Authorization')})" if server.echo_authorization else ""
                    error = {"message": f"stub server failure{said}", "type": "server_error", "code": status}
                    return self._send(status, {"error": error})
                calls = [server._tool_calls(body, first + j) for j in range(n)]
                texts = ["" if called else server._text(body, first + j) for j, called in enumerate(calls)]
                finishes = ["tool_calls" if called else server._finish(body, first + j)
                            for j, called in enumerate(calls)]  # fmt: skip
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                completion_tokens = sum(len(text.split()) for text in texts)
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                with server._lock:
                    server.usage.append(usage)
                if body.get("stream"):
                    return self._stream(body, texts[0], usage, finishes[0])
                self._send(200, {
                    "id": f"stub-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": j, "finish_reason": finish, "message": {"role": "assistant", "content": text,
                                                                                  **called}}
                                for j, (text, finish, called) in enumerate(zip(texts, finishes, calls, strict=True))],
                    "usage": usage,
                })  # fmt: skip

            def _event(self, payload: dict[str, Any] | str) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()

            def _stream(self, body: dict[str, Any], text: str, usage: dict[str, int], finish: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")  # the end of the body is the end of the stream
                self.end_headers()
                self.close_connection = True
                words = re.split(r"(?<=\s)", text)  # word by word, whitespace kept
                base = {"id": f"stub-{len(server.requests)}", "object": "chat.completion.chunk",
                        "created": int(time.time()), "model": body.get("model", "stub")}
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for i, word in enumerate(words):
                        if server.stream_gate is not None and i == len(words) // 2 and i:
                            server.waiting_at_gate.set()
                            server.stream_gate.wait(30)
                            server.waiting_at_gate.clear()
                        delta = {"content": word, **({"role": "assistant"} if i == 0 else {})}
                        self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                    self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                    if (body.get("stream_options") or {}).get("include_usage"):
                        self._event({**base, "choices": [], "usage": usage})
                    self._event("[DONE]")

        return Handler

    @property
    def peak_in_flight(self) -> int:
        """Most requests being served at once."""
        return self.flight.peak

    def _tool_calls(self, body: dict[str, Any], index: int) -> dict[str, Any]:
        """``{"content": None, "tool_calls": [...]}`` when ``tool_calls`` scripts calls for this choice, else ``{}``."""
        if self.tool_calls is None:
            return {}
        call = parse_body(body, index)
        call.extra.update(tools=body.get("tools"), tool_choice=body.get("tool_choice"))
        scripted = self.tool_calls(call) or []
        wire = [{"id": f"call_stub_{index}_{i}", "type": "function", "function": {"name": c["name"], "arguments":
                 c["arguments"] if isinstance(c["arguments"], str) else json.dumps(c["arguments"])}}
                for i, c in enumerate(scripted)]  # fmt: skip
        return {"content": None, "tool_calls": wire} if wire else {}

    def _finish(self, body: dict[str, Any], index: int) -> str:
        return self.finish_reason(parse_body(body, index)) if callable(self.finish_reason) else self.finish_reason

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

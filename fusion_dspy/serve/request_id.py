"""Request ids: each request's ``X-Request-Id``, taken from the client when it is safe, made here otherwise.

The id is returned in the response's ``X-Request-Id`` header, put in error bodies (``error.request_id``), in the
``fusion`` report of the reply (``FusionReport.request_id``) and on every log record written while the request
is served (the record's ``request_id`` attribute; ``fusion-dspy serve``'s access log lines end with it). An id
a client sends is kept only when it is 1 to 128 characters of letters, digits and ``-_.:/+=``: it reaches logs
and headers, so anything else (spaces, control characters, a megabyte) is replaced by a new one.
"""

import contextvars
import logging
import re
import uuid
from typing import Any

HEADER = "x-request-id"
SAFE = re.compile(r"[A-Za-z0-9\-_.:/+=]{1,128}")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("fusion_request_id", default=None)


def request_id_from(value: str | None) -> str:
    """The client's id if it is safe to echo and log, else a new one.

    Example:
        >>> request_id_from("trace-42/b")
        'trace-42/b'
        >>> len(request_id_from("two words")), len(request_id_from(None))
        (32, 32)
    """
    if value is not None and SAFE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being served in this context (task), if any."""
    return _current.get()


def with_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style error body (``{"error": {...}}``) with the current request's id added to the error.

    Example:
        >>> with_request_id({"error": {"message": "no"}})   # outside a request: unchanged
        {'error': {'message': 'no'}}
    """
    rid = _current.get()
    if rid is None or not isinstance(body.get("error"), dict):
        return body
    return {**body, "error": {**body["error"], "request_id": rid}}


def _install_record_factory() -> None:
    """Every log record gets a ``request_id`` attribute (``None`` outside a request), for ``%(request_id)s``."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "adds_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = _current.get()
        return record

    factory.adds_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class RequestIdFilter(logging.Filter):
    """Gives each record passing a handler the current request's id as ``request_id`` (``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or "-"
        return True


def access_log_config() -> dict[str, Any]:
    """uvicorn's logging config with ``request_id=<id>`` at the end of each access log line."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"]["fmt"] += " request_id=%(request_id)s"
    config.setdefault("filters", {})["request_id"] = {"()": f"{__name__}.RequestIdFilter"}
    config["handlers"]["access"]["filters"] = ["request_id"]
    return config


class RequestIdMiddleware:
    """ASGI middleware: the request's id chosen, set for its context (logs, errors, report) and sent back.

    Args:
        app: The ASGI app to wrap.

    Example:
        >>> from starlette.applications import Starlette
        >>> from starlette.responses import PlainTextResponse
        >>> from starlette.routing import Route
        >>> from starlette.testclient import TestClient
        >>> inner = Starlette(routes=[Route("/", lambda r: PlainTextResponse(current_request_id()))])
        >>> reply = TestClient(RequestIdMiddleware(inner)).get("/", headers={"X-Request-Id": "abc-1"})
        >>> reply.headers["x-request-id"], reply.text
        ('abc-1', 'abc-1')
    """

    def __init__(self, app: Any):
        self.app = app
        _install_record_factory()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = next((value for name, value in scope["headers"] if name == HEADER.encode()), None)
        rid = request_id_from(sent.decode("latin-1") if sent is not None else None)
        scope.setdefault("state", {})["request_id"] = rid
        token = _current.set(rid)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)

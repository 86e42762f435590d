"""The OpenAI-compatible HTTP server: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``,
``GET /health/liveness``, ``GET /health/readiness`` and ``GET /metrics`` (docs/operations/serving.md).

FastAPI and uvicorn do the HTTP and the SSE framing; this file adds auth (constant-time key compare), a body
limit (413, by the declared length or while reading), a concurrency limit that answers 429 with ``Retry-After``
instead of queueing, a per-request deadline (504) and OpenAI-style error bodies, each request's id
(``request_id``), metrics (``metrics``) and readiness (``health``). A streamed reply starts (status 200, the role
chunk) as soon as the request is accepted (valid, authorized, a slot taken), as OpenAI's and OpenRouter's streams
do; while the panel runs it gets a keep-alive comment after each interval of silence (``keepalive``), and any
failure after the start ends the stream with an OpenAI-style error event, never a silent cut (``stream``).
"""

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from fusion_dspy.backends.in_place import InPlaceExecutor
from fusion_dspy.backends.secrets import Redactor
from fusion_dspy.serve.health import Readiness, add_health_routes
from fusion_dspy.serve.metrics import MetricsMiddleware, ServeMetrics, add_metrics_route, failures_of
from fusion_dspy.serve.profiles import Limits, Profile
from fusion_dspy.serve.request_id import RequestIdMiddleware, with_request_id
from fusion_dspy.serve.run import FusionRun, upstream_error
from fusion_dspy.serve.schema import ChatCompletionRequest, ServeError, field_path
from fusion_dspy.serve.stream import start_stream
from fusion_dspy.serve.tracing import telemetry
from fusion_dspy.serve.unicode import SafeJSONResponse, loads_lenient


@dataclass(frozen=True)
class ServeSettings:
    """How the server guards itself.

    Args:
        api_key: Required as ``Authorization: Bearer <key>`` on ``/v1/*`` when set.
        max_concurrency: Requests in flight at once; one more gets 429 with ``Retry-After``.
        max_body_bytes: Largest request body (413 above it).
        timeout: Seconds one request may take, sampling and fusing included (504 after it).
        retry_after: Seconds a 429 tells the client to wait.
        limits: Bounds on the request's ``n`` and ``max_tokens``.
        keepalive_s: Seconds of silence after which a stream gets an SSE comment line (0: none); the stream
            starts at the first one at the latest.
        metrics: Serve ``GET /metrics`` (Prometheus) and count every request.
        drain_s: Seconds the server keeps serving after SIGTERM, readiness at 503, before it stops.
    """

    api_key: str | None = field(default=None, repr=False)
    max_concurrency: int = 64
    max_body_bytes: int = 1_000_000
    timeout: float = 600.0
    retry_after: int = 1
    limits: Limits = field(default_factory=Limits)
    keepalive_s: float = 15.0
    metrics: bool = True
    drain_s: float = 5.0


def _error_response(error: ServeError) -> JSONResponse:
    return SafeJSONResponse(with_request_id(error.body()), status_code=error.status, headers=error.headers)


class _Gate:
    """Counts requests in flight; refuses one more than the limit instead of queueing it (the caller retries)."""

    def __init__(self, limit: int, retry_after: int):
        self.limit, self.retry_after, self.in_flight = limit, retry_after, 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise ServeError(429, f"The server is at its limit of {self.limit} requests in flight; retry after "
                             f"{self.retry_after} s.", type="rate_limit_error", code="concurrency_limit",
                             headers={"Retry-After": str(self.retry_after)})  # fmt: skip
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


def create_app(profiles: dict[str, Profile], settings: ServeSettings | None = None,
               redact: Redactor | None = None) -> FastAPI:  # fmt: skip
    """The ASGI app serving ``profiles`` (``build_profiles(...)``); run it with uvicorn.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> from fusion_dspy.serve.profiles import build_profiles
        >>> app = create_app(build_profiles(fd.load_config(stub_config)), ServeSettings(api_key="sk-local"))
        >>> TestClient(app).get("/v1/models", headers={"Authorization": "Bearer sk-local"}).json()["data"][0]["id"]
        'fusion'
    """
    settings = settings or ServeSettings()
    redact = redact or Redactor([settings.api_key])
    readiness = Readiness.of([profile.backends for profile in profiles.values()])
    metrics = ServeMetrics() if settings.metrics else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(InPlaceExecutor())  # DSPy's bookkeeping of native calls
        readiness.started = True
        readiness.drain_on_sigterm(settings.drain_s)
        yield
        if metrics is not None:
            metrics.close()

    # telemetry: a span per request, honouring traceparent, while tracing is set up (--otel)
    app = FastAPI(title="fusion-dspy", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  telemetry=telemetry())  # fmt: skip
    app.state.readiness, app.state.settings = readiness, settings
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: the id is set for everything inside
    gate = _Gate(settings.max_concurrency, settings.retry_after)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, error: ServeError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error_response(ServeError(error.status_code, str(error.detail), code=None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(_bad_request(error.errors()))

    @app.exception_handler(Exception)  # the last resort: an OpenAI-style 500, never a plain-text one
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette answers from outside the middlewares: the request's id comes from its state, not its context.
        failure, rid = upstream_error(error, redact), getattr(request.state, "request_id", None)
        body = {"error": {**failure.body()["error"], **({"request_id": rid} if rid else {})}}
        return SafeJSONResponse(body, status_code=failure.status, headers={**failure.headers,
                                                                           **({"X-Request-Id": rid} if rid else {})})

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ServeError(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                             type="authentication_error", code="invalid_api_key")  # fmt: skip

    add_health_routes(app, readiness, lambda: gate.in_flight)
    add_metrics_route(app, metrics, authorize)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "fusion-dspy",
                                            "description": p.description} for name, p in profiles.items()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        # The body is read before a slot is taken, and within the time limit: a client that stalls mid-body
        # holds neither a slot nor the connection for long.
        with anyio.move_on_after(settings.timeout) as reading:
            body = await _read_body(request, settings.max_body_bytes)
        if reading.cancelled_caught:
            raise ServeError(408, f"The request body did not arrive within the server's time limit of "
                             f"{settings.timeout:g} s (--timeout).", code="request_timeout")  # fmt: skip
        gate.enter()
        run: FusionRun | None = None
        try:
            chat = _parse(body)
            if chat.model not in profiles:
                raise ServeError(404, f"The model {chat.model!r} is not served here; choose one of "
                                 f"{sorted(profiles)} (GET /v1/models).", param="model", code="model_not_found")
            request.state.fusion_profile = chat.model
            run = FusionRun(profiles[chat.model], chat, settings.limits, redact, request.state.request_id)
            if chat.stream:  # from here on the stream's response leaves the gate, when it ends
                return start_stream(run, chat, settings.timeout, settings.keepalive_s, request.state, gate.leave)
            with anyio.fail_after(settings.timeout):
                pool = await run.asample()
                result = await run.acombine(pool)
            report = request.state.fusion_report = run.report(result)  # counted even if the answer is then refused
            response = run.response(pool, result, report=report)
        except BaseException as error:
            gate.leave()
            request.state.fusion_failures = failures_of(error, run.names if run else {})
            if isinstance(error, Exception) and not isinstance(error, ServeError):
                raise upstream_error(error, redact) from error
            raise
        gate.leave()
        return SafeJSONResponse(response)

    return app


def _bad_request(errors: list[dict[str, Any]]) -> ServeError:
    first = errors[0]
    param = field_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return ServeError(400, f"{param or 'body'}: {message}", param=param or None)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` (by its header, or while reading)."""
    too_large = ServeError(413, f"The request body is larger than this server's limit of {limit} bytes.",
                           code="request_too_large")  # fmt: skip
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _parse(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        if error.errors()[0]["type"] == "json_invalid" and (text := loads_lenient(body)) is not None:
            return _parse(text.encode())  # valid JSON with a lone-surrogate escape: read as U+FFFD
        raise _bad_request(error.errors()) from None

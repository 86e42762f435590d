"""Prometheus metrics of the server (``GET /metrics``), from each request's typed ``FusionReport``.

Every label value comes from the server's own vocabulary, never from a request's text or a key: ``profile`` is a
served model's name (``none`` for a request that named no served model), ``model`` a configured model name (a model
string the config does not name is counted as it is; one of no known model as ``unknown``),
``stage`` a report's stage (``sample``, ``fuse``, ``select``), ``kind`` a ``FailureKind``, ``status`` an HTTP
status. With ``--workers K`` each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (a temporary
folder the serve command makes and removes) and any worker's ``/metrics`` reads them all: one view.

Example:
    >>> from fusion_dspy.core.report import FusionReport, StageReport
    >>> metrics = ServeMetrics()
    >>> report = FusionReport("fuse", stages={"sample": StageReport(0.4), "fuse": StageReport(0.2)}, samples_drawn=3)
    >>> metrics.observe("fusion", 200, 0.7, report)
    >>> b'fusion_requests_total{profile="fusion",status="200"} 1.0' in metrics.render()[0]
    True
"""

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from fusion_dspy.core.report import Failure, FusionReport
from fusion_dspy.errors import SamplingError
from fusion_dspy.serve.schema import ServeError

logger = logging.getLogger(__name__)
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable: set, values go to files there
SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SAMPLES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
NO_PROFILE = "none"


class ServeMetrics:
    """The server's metrics, in a registry of their own (several apps in one process never collide).

    Args:
        multiprocess_dir: Folder of prometheus-client's multiprocess mode (default: ``$PROMETHEUS_MULTIPROC_DIR``);
            it must be set in the environment before ``prometheus_client`` is first imported.
    """

    def __init__(self, multiprocess_dir: str | None = None):
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROCESS)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fusion_requests", "Chat completion requests by profile and outcome status "
                                "(a stream that ended with an error event counts that error's status).",
                                ["profile", "status"], registry=r)  # fmt: skip
        self.seconds = Histogram("fusion_request_seconds", "Whole request: from its arrival until its last byte is "
                                 "handed to the HTTP server.", ["profile"], buckets=SECONDS, registry=r)  # fmt: skip
        self.stage_seconds = Histogram("fusion_stage_seconds", "One stage of a request (sample, fuse, select).",
                                       ["profile", "stage"], buckets=SECONDS, registry=r)  # fmt: skip
        self.first_token = Histogram("fusion_time_to_first_token_seconds", "Streamed requests: until the first "
                                     "words of the reply were sent.", ["profile"], buckets=SECONDS, registry=r)
        self.tokens = Counter("fusion_tokens", "Tokens spent, per stage and type (prompt, completion).",
                              ["profile", "stage", "type"], registry=r)  # fmt: skip
        self.failures = Counter("fusion_failures", "Failed calls (dropped samples, failed fusion orders...) by "
                                "configured model, stage and kind.", ["profile", "stage", "model", "kind"],
                                registry=r)  # fmt: skip
        self.stragglers = Counter("fusion_stragglers", "Samples not waited for once the quorum was in.",
                                  ["profile", "model"], registry=r)  # fmt: skip
        self.fallbacks = Counter("fusion_fallbacks", "Fallbacks taken: the combining stage failed and a selection "
                                 "kept a candidate.", ["profile", "method", "cause"], registry=r)  # fmt: skip
        self.samples = Histogram("fusion_samples_drawn", "Samples drawn per request (fewer than N when adaptive "
                                 "sampling stopped early).", ["profile"], buckets=SAMPLES, registry=r)  # fmt: skip
        self.in_flight = Gauge("fusion_requests_in_flight", "Chat completion requests being served.",
                               registry=r, multiprocess_mode="livesum")  # fmt: skip

    def observe(self, profile: str | None, status: int, seconds: float, report: FusionReport | None = None,
                failures: Sequence[Failure] = (), first_token: float | None = None) -> None:  # fmt: skip
        """Count one finished request: its status and time, and what its report (or failed sampling) says."""
        profile = profile or NO_PROFILE
        self.requests.labels(profile, str(status)).inc()
        self.seconds.labels(profile).observe(seconds)
        if first_token is not None:
            self.first_token.labels(profile).observe(first_token)
        if report is not None:
            for name, stage in report.stages.items():
                self.stage_seconds.labels(profile, name).observe(stage.seconds)
                counts = stage.counts()
                for kind in ("prompt", "completion"):
                    if counts[f"{kind}_tokens"]:
                        self.tokens.labels(profile, name, kind).inc(counts[f"{kind}_tokens"])
            for straggler in report.stragglers:
                self.stragglers.labels(profile, straggler.model or "unknown").inc()
            if report.fallback is not None:
                self.fallbacks.labels(profile, report.fallback.method, report.fallback.cause.kind).inc()
            drawn = report.samples_drawn if report.samples_drawn is not None else len(report.candidates)
            self.samples.labels(profile).observe(drawn)
            failures = [*failures, *report.failures]
        for failure in failures:
            self.failures.labels(profile, failure.stage, failure.model or "unknown", failure.kind).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type; every worker's values in multiprocess mode."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """This worker is ending: its live gauges (in flight) stop counting in multiprocess mode."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)


def failures_of(error: BaseException, names: Mapping[str, str]) -> tuple[Failure, ...]:
    """The failed samples behind a failed request (a ``SamplingError``, raised as is or as a ``ServeError``'s
    cause), their models named as ``names`` says (``{model string: configured name}``)."""
    cause = error if isinstance(error, SamplingError) else error.__cause__
    if not isinstance(cause, SamplingError):
        return ()
    return tuple(dataclasses.replace(f, model=names.get(f.model, f.model)) for f in cause.failures
                 if isinstance(f, Failure))  # fmt: skip


def add_metrics_route(app: FastAPI, metrics: ServeMetrics | None, authorize: Callable[[Request], None]) -> None:
    """``GET /metrics``, behind ``authorize`` (the API key); 404 when metrics are off."""

    @app.get("/metrics")
    async def exposition(request: Request) -> Response:
        authorize(request)
        if metrics is None:
            raise ServeError(404, "Metrics are off on this server (started with --no-metrics).", code="not_found")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


class MetricsMiddleware:
    """ASGI middleware timing ``POST /v1/chat/completions``: in flight, status, seconds, and the request's report.

    The endpoint leaves what it knows in the request's state: ``fusion_profile`` (a served name),
    ``fusion_report`` (the relabeled ``FusionReport``), ``fusion_failures`` (a failed sampling's ``Failure``s),
    ``fusion_first_token`` (``time.perf_counter()`` of the first words streamed) and ``fusion_status`` (the status
    of an error event that ended a stream).

    Args:
        app: The ASGI app to wrap.
        metrics: Where to count.
    """

    def __init__(self, app: Any, metrics: ServeMetrics, path: str = "/v1/chat/completions"):
        self.app, self.metrics, self.path = app, metrics, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        start, status, counted = time.perf_counter(), 500, False
        state = scope.setdefault("state", {})

        def count() -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            first = state.get("fusion_first_token")
            try:  # counting never replaces the request's own answer or error
                self.metrics.in_flight.dec()
                self.metrics.observe(state.get("fusion_profile"), state.get("fusion_status") or status,
                                     time.perf_counter() - start, state.get("fusion_report"),
                                     state.get("fusion_failures", ()), first - start if first else None)  # fmt: skip
            except Exception:  # noqa: BLE001 - a metrics bug is logged, not served
                logger.exception("fusion-dspy: counting a request in /metrics failed")

        async def send_counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()  # before the last byte: a client that has its answer finds it counted in /metrics
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            count()  # a request that ended without its last byte sent (an error, a client gone)

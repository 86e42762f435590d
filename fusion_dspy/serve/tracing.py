"""The server's tracing: FastAPI's own request spans, and ``--otel``, which sets OpenTelemetry up from ``OTEL_*``.

FastAPI (0.165 on) gives every request a SERVER span named as OpenTelemetry's HTTP conventions say
(``POST /v1/chat/completions``), the child of the client's W3C ``traceparent`` (read by OpenTelemetry's
configured propagators), whenever a tracer provider is set; the request's stages and candidates nest under it
(``fusion_dspy.tracing``). ``telemetry`` is the server's setting of it: the provider fusion_dspy traces with, and
no OpenTelemetry log records (FastAPI's carry exception messages and tracebacks, where an upstream error's text
could hold what a log must not).

``configure`` is what ``fusion-dspy serve --otel`` runs: unless a tracer provider is already set (e.g. by
``opentelemetry-instrument``), it sets one exporting by ``OTEL_TRACES_EXPORTER`` (``otlp``, the default;
``console``; ``none``), the OTLP exporter configured by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS`` ...), ``OTEL_SERVICE_NAME`` (default
``fusion-dspy``) and ``OTEL_TRACES_SAMPLER``.

Example:
    >>> from fastapi import FastAPI
    >>> app = FastAPI(telemetry=telemetry())      # as create_app does
    >>> telemetry()
    {'tracer_provider': None, 'logs': False}
"""

import os
from typing import Any

import fusion_dspy.tracing as tracing
from fusion_dspy.errors import FusionDSPyError

EXPORTERS = ("otlp", "console", "none")


def telemetry() -> dict[str, Any]:
    """FastAPI's ``telemetry=`` setting for the server: request spans with fusion_dspy's tracer provider (``None``:
    the global one), and no log records."""
    return {"tracer_provider": tracing.provider(), "logs": False}


def configure() -> None:
    """Set OpenTelemetry's global tracer provider from the ``OTEL_*`` variables, unless one is set already."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as error:
        raise FusionDSPyError(f"--otel needs the otel extra ({error.name} is missing): pip install "
                              "'fusion-dspy[otel]'.") from None  # fmt: skip
    if tracing.active():
        return
    names = [name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise FusionDSPyError(f"OTEL_TRACES_EXPORTER={','.join(names)}: {unknown} not known here; use "
                              f"{', '.join(EXPORTERS)} (comma-separated).")  # fmt: skip
    if all(name == "none" for name in names):  # no exporter: no provider, so no span is even built
        return
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "fusion-dspy"}))
    provider = TracerProvider(resource=resource)
    for name in names:
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def _otlp_exporter() -> Any:
    """The OTLP span exporter of ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: ``http/protobuf`` (default) or ``grpc``."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as error:
        package = "opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else "fusion-dspy[otel]"
        raise FusionDSPyError(f"The OTLP exporter is not installed ({error.name} is missing): pip install "
                              f"'{package}', or set OTEL_TRACES_EXPORTER=console.") from None  # fmt: skip
    return OTLPSpanExporter()

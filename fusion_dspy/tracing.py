"""OpenTelemetry spans for the stages of a call: recorded when OpenTelemetry is in use, free when it is not.

``Sample``, ``Fuse``, ``Select``, ``FusionOfN`` and ``BestOfN`` open a ``span`` around their work (each candidate
too). The spans go to the tracer provider given to ``use``, else to OpenTelemetry's global one (what
``trace.set_tracer_provider`` set), so a DSPy program containing a FusionOfN shows its stages inside the user's
own traces. Without a provider (OpenTelemetry not installed, not imported, or no provider set) ``span`` returns
one shared object that records nothing: the check is a dictionary look-up, and OpenTelemetry is never imported.

Attribute names follow OpenTelemetry's GenAI semantic conventions where one fits (``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``, ``gen_ai.operation.name``) and its ``error.type``,
here the failure's kind (``fusion_dspy.failures.FailureKind``: ``"timeout"``, ``"rate_limit"`` ...); the rest are
``fusion.*``. A model is named by its model string, or as ``model_labels`` says (the server: the config's names).
No prompt, reply or error message is recorded: an error's text can hold what a trace must not.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> exporter, provider = InMemorySpanExporter(), TracerProvider()
    >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
    >>> active()
    False
    >>> use(provider)
    >>> with span("fusion_dspy.candidate", {"fusion.candidate.index": 0}, model="openai/gpt-4o-mini") as current:
    ...     current.set({"fusion.truncated": False})
    >>> use(None)
    >>> done = exporter.get_finished_spans()[0]
    >>> done.name, done.attributes["gen_ai.request.model"], done.attributes["fusion.outcome"]
    ('fusion_dspy.candidate', 'openai/gpt-4o-mini', 'ok')
"""

import contextlib
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fusion_dspy.failures import kind_of

TRACER = "fusion_dspy"
Attributes = Mapping[str, Any]

_provider: Any = None  # given to use(); None: OpenTelemetry's global one
_tracer_of: list[Any] = [None, None]  # [provider, its tracer]: a tracer is made once per provider
_labels: ContextVar[Mapping[str, str] | None] = ContextVar("fusion_dspy_model_labels", default=None)


def use(provider: Any) -> None:
    """Record fusion_dspy's spans with ``provider`` (an OpenTelemetry ``TracerProvider``) instead of the global one.

    Args:
        provider: The tracer provider, or ``None`` to use OpenTelemetry's global one again.
    """
    global _provider
    _provider = provider


def provider() -> Any:
    """The tracer provider given to ``use``, or ``None`` (OpenTelemetry's global one is used)."""
    return _provider


def active() -> bool:
    """Whether spans are recorded: a provider was given to ``use``, or OpenTelemetry is imported and has a global
    tracer provider set. Never imports OpenTelemetry."""
    if _provider is not None:
        return True
    trace = sys.modules.get("opentelemetry.trace")
    return trace is not None and not isinstance(trace.get_tracer_provider(),
                                                (trace.ProxyTracerProvider, trace.NoOpTracerProvider))  # fmt: skip


@contextlib.contextmanager
def model_labels(names: Mapping[str, str]) -> Iterator[None]:
    """Within this block, spans name a model as ``names`` says (``{model string: name}``) instead of its string."""
    token = _labels.set({**(_labels.get() or {}), **names})
    try:
        yield
    finally:
        # An async generator finalized by the event loop exits in another context, where the value is not ours.
        with contextlib.suppress(ValueError):
            _labels.reset(token)


def label(model: str | None) -> str | None:
    """The name spans give ``model`` here (see ``model_labels``)."""
    return (_labels.get() or {}).get(model, model) if model else model


def span(name: str, attributes: Attributes | None = None, *, model: str | None = None,
         tokens: bool = False) -> "Span | _Off":
    """A span around a block (``with span(...) as current:``), a child of the current one; the shared no-op
    ``OFF`` when tracing is not ``active()``.

    Args:
        name: The span's name, e.g. ``"fusion_dspy.sample"``.
        attributes: Its attributes at the start (``None`` values are left out).
        model: The model the block calls, recorded as ``gen_ai.request.model`` (labelled, see ``model_labels``).
        tokens: Track the tokens the block's LM calls use (DSPy's usage tracker) and record them as
            ``gen_ai.usage.input_tokens`` and ``gen_ai.usage.output_tokens``.
    """
    if not active():
        return OFF
    return Span(name, {**(attributes or {}), "gen_ai.request.model": label(model)}, tokens)


def candidate_span(indices: list[int], temperature: float, model: str | None) -> Any:
    """The span of one sample request (``fusion_dspy.candidate``), or of a batched one drawing several
    (``fusion_dspy.candidates``, with their indices and count), its tokens recorded as it ends."""
    where = {"fusion.candidate.index": indices[0]} if len(indices) == 1 else {
        "fusion.candidate.indices": list(indices), "gen_ai.request.choice.count": len(indices)}
    return span("fusion_dspy.candidate" if len(indices) == 1 else "fusion_dspy.candidates",
                {"gen_ai.operation.name": "chat", "gen_ai.request.temperature": temperature, **where}, model=model,
                tokens=True)  # fmt: skip


class _Off:
    """What ``span`` returns while tracing is off: records nothing, costs nothing."""

    def __enter__(self) -> "_Off":
        return self

    def __exit__(self, *raised: Any) -> None:
        return None

    def set(self, attributes: Attributes) -> None:
        """Add attributes (nothing, here)."""


OFF = _Off()


class Span:
    """An open span: its attributes can be added to until the block ends. Ends with ``fusion.outcome``: ``"ok"``,
    ``"failed"`` (an exception left the block: ``error.type`` is its kind, the status ERROR) or ``"cancelled"``
    (stopped from outside: a straggler cut off, a deadline, an interrupt)."""

    def __init__(self, name: str, attributes: Attributes, tokens: bool):
        self.name, self.attributes, self.tokens = name, attributes, tokens
        self._span = self._token = self._usage = self._tracking = None

    def __enter__(self) -> "Span":
        from opentelemetry import context, trace

        self._span = _tracer().start_span(self.name)
        self.set(self.attributes)
        self._token = context.attach(trace.set_span_in_context(self._span))
        if self.tokens:
            import dspy

            self._tracking = dspy.track_usage()
            self._usage = self._tracking.__enter__()
        return self

    def set(self, attributes: Attributes) -> None:
        """Add attributes (``None`` values are left out)."""
        self._span.set_attributes({key: value for key, value in attributes.items() if value is not None})

    def __exit__(self, error_type: Any, error: BaseException | None, traceback: Any) -> None:
        from opentelemetry import context, trace

        if self._tracking is not None:
            self._tracking.__exit__(error_type, error, traceback)
            usage = self._usage.get_total_tokens().values()
            self.set({"gen_ai.usage.input_tokens": sum(int(u.get("prompt_tokens") or 0) for u in usage),
                      "gen_ai.usage.output_tokens": sum(int(u.get("completion_tokens") or 0) for u in usage)})
        if isinstance(error, Exception):
            self.set({"fusion.outcome": "failed", "error.type": kind_of(error).value})
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
        else:
            self.set({"fusion.outcome": "ok" if error is None else "cancelled"})
        context.detach(self._token)
        self._span.end()


def _tracer() -> Any:
    from opentelemetry import trace

    provider = _provider or trace.get_tracer_provider()
    if _tracer_of[0] is not provider:
        _tracer_of[:] = [provider, provider.get_tracer(TRACER, _version())]
    return _tracer_of[1]


def _version() -> str | None:
    """fusion-dspy's version for the tracer, ``None`` in a checkout that is not installed."""
    try:
        return version("fusion-dspy")
    except PackageNotFoundError:
        return None

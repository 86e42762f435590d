"""A ``litellm.Router`` behind DSPy's public engine contract: the one module that speaks DSPy's engine API.

DSPy 3.4 takes any object with ``complete(Request) -> Response`` as ``dspy.LM(engine=..., async_engine=...)``
(``dspy.clients.engines``); DSPy keeps its cache, rollout ids, usage tracking and history above it. This engine
turns the typed ``dspy.lm15.Request`` into an OpenAI chat body, lets the Router send it (replicas, retries,
fallbacks), and reads the reply back with ``dspy.lm15.response_from_openai_chat``. Only public names are used,
so it does not break where DSPy 3.5 removes the 3.4 transition interfaces (``complete_legacy``, the litellm
engine's private ``_arguments`` / ``_response``).
"""

from contextlib import contextmanager
from typing import Any

from dspy import lm15

from fusion_dspy.failures import FailureKind, kind_of

# Request.config fields sent as OpenAI chat parameters of the same name (the rest are DSPy's own controls).
_CHAT_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty",
                    "response_format", "logprobs", "user_id")  # fmt: skip
_ERRORS_BY_STATUS = {400: lm15.InvalidRequestError, 401: lm15.AuthError, 403: lm15.AuthError,
                     404: lm15.UnsupportedModelError, 408: lm15.TimeoutError, 413: lm15.ContextLengthError,
                     429: lm15.RateLimitError}  # fmt: skip
# The kinds litellm's classes say more exactly than their status (a timeout, a refused connection: often none).
_ERRORS_BY_KIND = {FailureKind.CONTEXT_WINDOW: lm15.ContextLengthError, FailureKind.TIMEOUT: lm15.TimeoutError,
                   FailureKind.TRANSPORT: lm15.TransportError}  # fmt: skip


def chat_body(request: lm15.Request) -> dict[str, Any]:
    """The OpenAI chat-completions body of a text request (what DSPy's adapters send)."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": _text(request.system, "system")})
    for message in request.messages:
        messages.append({"role": message.role, "content": _text(message.parts, message.role)})
    if request.tools:
        raise lm15.UnsupportedFeatureError("The router engine sends text chat only; tools need a plain dspy.LM.")
    body: dict[str, Any] = {"messages": messages}
    config = request.config
    for name in _CHAT_PARAMETERS:
        value = getattr(config, name, None)
        if value not in (None, (), []):
            body["user" if name == "user_id" else name] = list(value) if name == "stop" else value
    body.update(config.extensions or {})
    return body


def _text(content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    texts = [part.text for part in content if getattr(part, "type", None) == "text"]
    if len(texts) != len(content):
        raise lm15.UnsupportedFeatureError(f"The router engine sends text only; a {role} message has other parts.")
    return "".join(texts)


@contextmanager
def lm15_errors(model: str):
    """Raise litellm's errors as the ``dspy.lm15`` errors the engine contract asks for, the cause kept."""
    try:
        yield
    except lm15.LM15Error:
        raise
    except Exception as error:
        status = getattr(error, "status_code", None)
        status = status if isinstance(status, int) else None
        raised = _ERRORS_BY_KIND.get(kind_of(error))
        if raised is None and status is None:
            raise
        if raised is None:
            raised = _ERRORS_BY_STATUS.get(status, lm15.ServerError if status >= 500 else lm15.ProviderError)
        raise raised(f"{model}: {type(error).__name__}: {error}", status=status) from error


def _arguments(model_group: str, request: lm15.Request) -> dict[str, Any]:
    return {**chat_body(request), "model": model_group}


def _plain(value: Any) -> dict[str, Any]:
    return value.model_dump() if hasattr(value, "model_dump") else dict(value)


def _reply(raw: Any, request: lm15.Request) -> lm15.Response:
    return lm15.response_from_openai_chat(_plain(raw), model=request.model)


_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_call", "function_call": "tool_call",
           "content_filter": "content_filter"}  # fmt: skip


class _Stream:
    """OpenAI chat chunks in, ``dspy.lm15`` stream events out: a start, one text delta per chunk, an end."""

    def __init__(self, request: lm15.Request):
        self.request, self.started, self.finish, self.usage = request, False, None, None

    def feed(self, chunk: Any) -> list[Any]:
        body = _plain(chunk)
        events = [] if self.started else [lm15.StreamStartEvent(id=body.get("id"), model=self.request.model)]
        self.started = True
        for choice in body.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                events.append(lm15.StreamDeltaEvent(lm15.TextDelta(text=text)))
            self.finish = _FINISH.get(choice.get("finish_reason"), self.finish)
        if body.get("usage"):
            usage = body["usage"]
            self.usage = lm15.Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get(
                "completion_tokens"), total_tokens=usage.get("total_tokens"))  # fmt: skip
        return events

    def end(self) -> Any:
        if self.finish is None:
            raise lm15.StreamAssemblyError(f"{self.request.model}: the stream ended without a finish reason.")
        return lm15.StreamEndEvent(finish_reason=self.finish, usage=self.usage)


def _stream_arguments(model_group: str, request: lm15.Request) -> dict[str, Any]:
    return {**_arguments(model_group, request), "stream": True, "stream_options": {"include_usage": True}}


class RouterEngine:
    """Sends each request of a ``dspy.LM`` through a ``litellm.Router`` model group.

    Args:
        router: The ``litellm.Router`` (replicas, fallbacks, retries).
        model_group: The Router's model name to call.

    Example:
        >>> import dspy, litellm
        >>> router = litellm.Router(model_list=[{"model_name": "m", "litellm_params": {
        ...     "model": "openai/m", "api_base": "http://127.0.0.1:9/v1", "api_key": "none"}}])
        >>> lm = dspy.LM("router/m", engine=RouterEngine(router, "m"), async_engine=AsyncRouterEngine(router, "m"))
        >>> lm.model
        'router/m'
    """

    def __init__(self, router: Any, model_group: str):
        self.router, self.model_group = router, model_group

    def complete(self, request: lm15.Request) -> lm15.Response:
        with lm15_errors(request.model):
            raw = self.router.completion(**_arguments(self.model_group, request))
        return _reply(raw, request)

    def stream(self, request: lm15.Request):
        """The reply as it is written: DSPy's streaming (``dspy.streamify``) through the Router."""
        codec = _Stream(request)
        with lm15_errors(request.model):
            for chunk in self.router.completion(**_stream_arguments(self.model_group, request)):
                yield from codec.feed(chunk)
        yield codec.end()

    def close(self) -> None:
        pass


class AsyncRouterEngine(RouterEngine):
    """The async twin of ``RouterEngine``; it shares the same Router (and so its health and cooldowns)."""

    async def complete(self, request: lm15.Request) -> lm15.Response:  # type: ignore[override]
        with lm15_errors(request.model):
            raw = await self.router.acompletion(**_arguments(self.model_group, request))
        return _reply(raw, request)

    async def stream(self, request: lm15.Request):  # type: ignore[override]
        codec = _Stream(request)
        with lm15_errors(request.model):
            async for chunk in await self.router.acompletion(**_stream_arguments(self.model_group, request)):
                for event in codec.feed(chunk):
                    yield event
        yield codec.end()

    async def aclose(self) -> None:
        pass


"""The wire format: OpenAI chat-completion requests (plus an optional ``fusion`` object) and OpenAI-style errors.

Tools, ``tool_choice``, ``parallel_tool_calls``, JSON answers (``response_format``) and ``stop`` are honoured
(``fusion_dspy.serve.agent``); fields a fusion cannot honour (logprobs, legacy ``functions``...) are refused with
a 400 naming the field, rather than silently ignored. Fields that change nothing about the answer (``user``, ``seed``,
``metadata``...) are accepted and ignored, so ordinary clients work unchanged.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fusion_dspy.serve.tools import MessageToolCall, ResponseFormat, ToolChoice, ToolSpec

# Request fields that would change the answer in ways a fusion does not implement.
UNSUPPORTED = ("functions", "function_call", "logprobs", "top_logprobs", "logit_bias", "audio", "prediction",
               "web_search_options")  # fmt: skip


class ServeError(Exception):
    """An error answered as an OpenAI-style JSON body with a meaningful status code.

    Args:
        status: HTTP status (400 bad request, 401, 404 unknown model, 408 body too slow, 413, 429, 502 upstream
            failure, 504).
        message: What went wrong and how to fix it (never a key).
        type: OpenAI error type (``invalid_request_error``, ``authentication_error``, ...).
        param: The request field at fault, e.g. ``messages[1].role``.
        code: A short machine-readable code.
        headers: Extra response headers (``Retry-After`` for 429).

    Example:
        >>> error = ServeError(400, "n must be at most 8", param="n")
        >>> error.status, error.param
        (400, 'n')
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def field_path(loc: tuple | list) -> str:
    """A pydantic error location as a field path: ``("body", "messages", 1, "role")`` -> ``messages[1].role``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts can be fused."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"] = Field(description="only text parts are supported")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        if isinstance(content, list):
            for i, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"part {i} is of type {kind!r}; a fusion model reads text parts only "
                                     "({\"type\": \"text\", \"text\": ...})")  # fmt: skip
        elif content is not None and not isinstance(content, str):
            raise ValueError("content must be a string or a list of text parts")
        return content


class FusionOptions(BaseModel):
    """The optional ``fusion`` object of a request: how this one request is fused."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["fuse", "select"] | None = Field(None, description="fuse (Fusion-of-N) or select (Best-of-N)")
    n: int | None = Field(None, ge=1, description="candidates to draw")
    models: list[str] | None = Field(None, min_length=1, description="configured model names forming the panel")
    fusor: str | None = Field(None, description="configured model name of the fusor (or the judge, with select)")
    return_candidates: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's fields; ``n``, ``temperature``, ``max_tokens`` go to the candidates."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stop: str | list[str] | None = None
    fusion: FusionOptions | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError(f"at most 4 stop sequences (OpenAI's limit), got {len(stop)}")
        return stop

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> "ChatCompletionRequest":
        for name in UNSUPPORTED:
            value = (self.model_extra or {}).get(name)
            if value not in (None, False, [], {}):
                raise ServeError(400, f"`{name}` is not supported by a fusion model: remove it from the request.",
                                 param=name, code="unsupported_parameter")  # fmt: skip
        self._check_tool_choice()
        if self.n is not None and self.fusion and self.fusion.n is not None and self.n != self.fusion.n:
            raise ServeError(400, f"`n` ({self.n}) and `fusion.n` ({self.fusion.n}) disagree: give one of them.",
                             param="fusion.n")  # fmt: skip
        return self

    def _check_tool_choice(self) -> None:
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise ServeError(400, f"tools: two tools share a name ({names}); name each tool once.", param="tools")
        choice = self.tool_choice
        if choice in ("required", None, "auto", "none") and (choice != "required" or names):
            return
        if not names:
            raise ServeError(400, "tool_choice asks for a tool call, but the request has no `tools`: add them, or "
                             "drop tool_choice.", param="tool_choice")  # fmt: skip
        if choice.function.name not in names:
            raise ServeError(400, f"tool_choice.function.name: {choice.function.name!r} is not one of the request's "
                             f"tools {names}.", param="tool_choice.function.name")  # fmt: skip

    @property
    def candidates(self) -> int | None:
        return self.fusion.n if self.fusion and self.fusion.n is not None else self.n

    @property
    def candidate_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

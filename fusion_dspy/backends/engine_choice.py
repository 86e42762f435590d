"""Which client sends a model's requests: ``engine: auto`` (the default) picks one per model, once, at load.

The native engine (DSPy's lm15 client, routed once: ``fusion_dspy.backends.native``) costs a quarter of litellm's
client CPU per request and sends the OpenAI ``n`` itself, and a process that only uses it never imports litellm
(seconds of start-up). So ``auto`` takes it for every model lm15 routes: OpenAI-compatible servers (``openai/`` +
``api_base``), vLLM (``hosted_vllm/``), the embedded model (an OpenAI-compatible server on loopback) and the API
providers DSPy 3.4's lm15 knows (OpenAI, Anthropic, Gemini, xAI, Groq, DeepSeek, OpenRouter, Ollama, Azure ...).
litellm keeps what only it does: a model with ``deployments`` or ``fallbacks`` (its Router), a model string lm15
cannot route (``bedrock/``, ``together_ai/``, ``mistral/`` ...), and a model that sets litellm's own options:
``lean_client``, or ``extra`` arguments that configure litellm's connection (``api_version``, ``extra_headers``
...), which an engine of its own cannot take.
``engine: litellm`` or ``engine: native`` in the file forces either (docs/configuration/engines.md).
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

EngineName = Literal["litellm", "native"]
EMBEDDED = "embedded"  # the built-in model name: SmolLM2-135M served in-process (fusion_dspy.backends.embedded)


class EngineReason(str, Enum):
    """Why a model got its engine."""

    CONFIGURED = "configured"  # the config says engine: litellm or engine: native
    EMBEDDED = "embedded"  # the embedded model: an OpenAI-compatible server on loopback
    LM15_ROUTES = "lm15 routes it"  # lm15 knows the model string's provider
    ROUTER = "deployments or fallbacks"  # only litellm's Router balances replicas and falls back
    NOT_ROUTED = "lm15 cannot route it"  # a provider only litellm knows
    LITELLM_SETTINGS = "it sets litellm's own options"  # lean_client, or connection settings in extra


@dataclass(frozen=True)
class EngineChoice:
    """The engine of one model and why, decided when the config is loaded.

    Example:
        >>> choice = choose_engine("openai/gpt-4o-mini", "auto")
        >>> choice.engine, choice.reason, choice.route
        ('native', <EngineReason.LM15_ROUTES: 'lm15 routes it'>, 'openai-chat:gpt-4o-mini')
        >>> str(choose_engine("bedrock/anthropic.claude-v2", "auto"))
        'litellm (lm15 cannot route it)'
    """

    engine: EngineName
    reason: EngineReason
    route: str | None = None  # lm15's provider:model, for a model it routes

    def __str__(self) -> str:
        return f"{self.engine} ({self.reason.value})"


class _Probe:
    """An engine object that is never called: ``dspy.LM`` refuses connection settings beside a custom engine."""

    def complete(self, request: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError


def lm15_route(model: str) -> str | None:
    """lm15's ``provider:model`` for a litellm model string, or ``None`` when lm15 cannot route it (offline)."""
    from dspy import lm15

    try:
        resolution = lm15.LMRouter(lm15.RouterConfig(env={})).resolve_openai_chat(model)
    except lm15.LM15Error:
        return None
    return f"{resolution.provider}:{resolution.model}"


def _takes_extra(model: str, extra: dict[str, Any]) -> bool:
    import dspy

    try:
        dspy.LM(model, engine=_Probe(), cache=False, **extra)
    except ValueError:  # DSPy's documented refusal of client settings beside a custom engine
        return False
    return True


def choose_engine(model: str, engine: Literal["auto", "litellm", "native"], *, routed: bool = False,
                  extra: dict[str, Any] | None = None, lean_client: bool = False) -> EngineChoice:  # fmt: skip
    """The engine of a model.

    Args:
        model: The litellm model string, or ``"embedded"``.
        engine: The config's ``engine``: ``auto`` chooses, ``litellm`` and ``native`` are kept.
        routed: The model has ``deployments`` or ``fallbacks`` (litellm's Router serves it).
        extra: The model's ``extra`` arguments for ``dspy.LM``.
        lean_client: The model asks for litellm without its logging callbacks (a litellm option).
    """
    wire = "openai/embedded" if model == EMBEDDED else model
    if engine != "auto":
        return EngineChoice(engine, EngineReason.CONFIGURED, lm15_route(wire) if engine == "native" else None)
    if routed:
        return EngineChoice("litellm", EngineReason.ROUTER)
    route = lm15_route(wire)
    if route is None:
        return EngineChoice("litellm", EngineReason.NOT_ROUTED)
    if lean_client or (extra and not _takes_extra(wire, extra)):
        return EngineChoice("litellm", EngineReason.LITELLM_SETTINGS)
    return EngineChoice("native", EngineReason.EMBEDDED if model == EMBEDDED else EngineReason.LM15_ROUTES, route)

"""A litellm provider: ``litellm.completion(model="fusion/<profile>", ...)`` runs a fusion program in-process.

Importing this module registers the ``fusion`` prefix in ``litellm.custom_provider_map``, with the profiles of the
config named by ``$FUSION_DSPY_CONFIG`` (default: the embedded model) and the tuned files listed in
``$FUSION_DSPY_TUNED`` (``[NAME=]PATH`` entries separated by commas); nothing is loaded or started until the first
call. ``register(config=..., tuned=[...])`` serves another config instead. The litellm proxy mounts the same
handler (set the two variables in the proxy's environment)::

    litellm_settings:
      custom_provider_map:
        - {provider: fusion, custom_handler: fusion_dspy.litellm_provider.handler}

``stream=True`` streams the fusor's reply token by token; the last chunk carries the summed usage. The response's
``_hidden_params["response_cost"]`` is the report's cost of every call: ``None`` when a model's price is unknown.
A reply cut at ``max_tokens`` ends with ``finish_reason == "length"``, streamed or not (``FusionReport.finish_reason``).
"""

import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import litellm  # the package (fusion_dspy/__init__) has already set LITELLM_LOCAL_MODEL_COST_MAP
from dspy.streaming import apply_sync_streaming
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, Message, ModelResponse, Usage

from fusion_dspy.backends.secrets import Redactor, config_secrets
from fusion_dspy.litellm_errors import PROVIDER, request_error, setup_error
from fusion_dspy.serve.profiles import Limits, Profile
from fusion_dspy.serve.run import FusionRun
from fusion_dspy.serve.schema import UNSUPPORTED, ChatCompletionRequest, ServeError

# The request fields we read, and those a fusion model refuses (a 400, as from the server, not a silent drop)
_PASSED = ("n", "temperature", "max_tokens", "max_completion_tokens", "fusion", "response_format", "tools",
           "tool_choice", "parallel_tool_calls", "stop", *UNSUPPORTED)  # fmt: skip


class FusionProvider(CustomLLM):
    """litellm ``CustomLLM`` serving fusion profiles; built lazily, on the first call, from a config.

    Args:
        config: Path of the YAML/TOML config (``None``: the embedded model for every role).
        tuned: ``[NAME=]PATH`` of tuned.json files, one profile each.
        limits: Bounds on a request's ``n`` and ``max_tokens``.

    Example:
        >>> handler = register(config=stub_config)            # e.g. "configs/vllm.yaml"
        >>> reply = litellm.completion(model="fusion/fusion", messages=[{"role": "user", "content": "Hi"}])
        >>> reply.choices[0].message.content
        'Hello!'
    """

    def __init__(self, config: str | Path | None = None, tuned: Sequence[str] = (), limits: Limits | None = None):
        super().__init__()
        self.config, self.tuned, self.limits = config, list(tuned), limits or Limits()
        self._profiles: dict[str, Profile] | None = None
        self._redact = Redactor()
        self._lock = threading.Lock()

    def profiles(self) -> dict[str, Profile]:
        with self._lock:
            if self._profiles is None:
                from fusion_dspy.backends import load_config
                from fusion_dspy.serve.profiles import build_profiles

                backends = load_config(self.config)
                self._redact = Redactor(config_secrets(backends.config))  # before check(): its errors are masked
                backends.check()
                self._profiles = build_profiles(backends, self.tuned)
            return self._profiles

    def _run(self, model: str, messages: list, optional_params: dict[str, Any]) -> FusionRun:
        name = model.removeprefix(f"{PROVIDER}/")
        fields = {key: optional_params[key] for key in _PASSED if optional_params.get(key) is not None}
        fields.update((optional_params.get("extra_body") or {}).items())
        label = f"{PROVIDER}/{name}"
        try:
            request = ChatCompletionRequest.model_validate({"model": name, "messages": messages, **fields})
        except ServeError as error:  # a field a fusion model refuses
            raise request_error(error, label) from None
        except ValueError as error:  # pydantic's ValidationError
            raise request_error(ServeError(400, self._redact(str(error))), label) from None
        try:
            profiles = self.profiles()
        except Exception as error:  # noqa: BLE001 - any other type would reach the user under litellm's bug notice
            raise setup_error(error, label, self._redact) from None
        try:
            if name not in profiles:
                raise ServeError(404, f"fusion/{name} is not a profile here; choose one of {sorted(profiles)}.")
            return FusionRun(profiles[name], request, self.limits, self._redact)
        except ServeError as error:
            raise request_error(error, label) from None

    @staticmethod
    def _fill(run: FusionRun, pool: Any, result: Any, model_response: ModelResponse) -> ModelResponse:
        report = run.report(result)
        usage, fusion = run.usage_and_fusion(pool, result, report=report)
        message, finish = run.message(result)
        model_response.choices[0].message = Message(**message)  # type: ignore[union-attr]
        model_response.choices[0].finish_reason = finish  # "length": the reply was cut (FusionReport.finish_reason)
        model_response.model = f"{PROVIDER}/{run.profile.name}"
        model_response.usage = Usage(**usage)  # type: ignore[attr-defined]
        model_response._hidden_params["response_cost"] = report.cost  # None: a price is unknown
        model_response._hidden_params["fusion"] = fusion
        return model_response

    def completion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                   model_response: ModelResponse, print_verbose, encoding, api_key, logging_obj,
                   optional_params: dict, *args: Any, **kwargs: Any) -> ModelResponse:  # fmt: skip
        run = self._run(model, messages, optional_params)
        try:
            pool = run.sample()
            return self._fill(run, pool, run.combine(pool), model_response)
        except ServeError as error:
            raise request_error(error, f"{PROVIDER}/{run.profile.name}") from None

    async def acompletion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                          model_response: ModelResponse, print_verbose, encoding, api_key, logging_obj,
                          optional_params: dict, *args: Any, **kwargs: Any) -> ModelResponse:  # fmt: skip
        run = self._run(model, messages, optional_params)
        try:
            pool = await run.asample()
            return self._fill(run, pool, await run.acombine(pool), model_response)
        except ServeError as error:
            raise request_error(error, f"{PROVIDER}/{run.profile.name}") from None

    async def _chunks(self, run: FusionRun) -> AsyncIterator[GenericStreamingChunk]:
        try:
            pool = await run.asample()
            async for piece in run.stream(pool):
                if isinstance(piece, str):
                    yield {"text": piece, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
                elif isinstance(piece, dict):  # an agent's delta: text, or one piece of one tool call
                    calls = piece.get("tool_calls") or [None]
                    yield {"text": piece.get("content") or "", "tool_use": calls[0], "is_finished": False,
                           "finish_reason": "", "usage": None, "index": 0}  # fmt: skip
                else:
                    usage, fusion = run.usage_and_fusion(pool, piece)
                    yield {"text": "", "is_finished": True, "finish_reason": run.message(piece)[1], "usage": usage,
                           "index": 0, "provider_specific_fields": {"fusion": fusion}}  # fmt: skip
        except ServeError as error:
            raise request_error(error, f"{PROVIDER}/{run.profile.name}") from None

    def streaming(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                  model_response: ModelResponse, print_verbose, encoding, api_key, logging_obj,
                  optional_params: dict, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:  # fmt: skip
        return apply_sync_streaming(self._chunks(self._run(model, messages, optional_params)))

    async def astreaming(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                         model_response: ModelResponse, print_verbose, encoding, api_key, logging_obj,
                         optional_params: dict, *args: Any, **kwargs: Any
                         ) -> AsyncIterator[GenericStreamingChunk]:  # fmt: skip
        async for chunk in self._chunks(self._run(model, messages, optional_params)):
            yield chunk


def register(config: str | Path | None = None, tuned: Sequence[str] = (), limits: Limits | None = None
             ) -> FusionProvider:  # fmt: skip
    """Register (or replace) the ``fusion/`` provider in litellm with these profiles; returns the handler.

    Example:
        >>> handler = register(config=stub_config)            # tuned=["qa=tuned.json"] adds model fusion/qa
        >>> sorted(handler.profiles())
        ['best-of-n', 'fusion']
    """
    global handler
    handler = FusionProvider(config, tuned, limits)
    litellm.custom_provider_map = [item for item in litellm.custom_provider_map if item["provider"] != PROVIDER]
    litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": handler})
    litellm.utils.custom_llm_setup()
    return handler


handler = register(os.environ.get("FUSION_DSPY_CONFIG") or None,
                   [spec.strip() for spec in os.environ.get("FUSION_DSPY_TUNED", "").split(",") if spec.strip()])

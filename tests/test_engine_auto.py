"""`engine: auto`, the default: each model's engine chosen once at load (backends/engine_choice.py)."""

import logging

import dspy
import pydantic
import pytest
import yaml

from fusion_dspy.backends import config as config_module
from fusion_dspy.backends.config import FusionConfig, read_config
from fusion_dspy.backends.engine_choice import EngineReason
from fusion_dspy.backends.native import NativeEngine
from fusion_dspy.backends.roles import Backends
from fusion_dspy.testing import StubOpenAIServer

LOCAL = "http://127.0.0.1:9/v1"


def engines(models: dict) -> dict[str, tuple[str, EngineReason]]:
    config = FusionConfig.model_validate({"models": models})
    return {name: (config.engine(name).engine, config.engine(name).reason) for name in [*models, "embedded"]}


def test_auto_is_the_default_and_takes_native_for_every_model_lm15_routes():
    assert FusionConfig.model_validate({"models": {"m": {"model": "openai/m"}}}).models["m"].engine == "auto"
    chosen = engines({
        "server": {"model": "openai/local", "api_base": LOCAL},
        "vllm": {"model": "hosted_vllm/Qwen/Qwen2.5-7B-Instruct", "api_base": LOCAL},
        "claude": {"model": "anthropic/claude-3-5-haiku-latest", "api_key_env": "ANTHROPIC_API_KEY"},
        "sampled": {"model": "openai/m", "api_base": LOCAL, "extra": {"top_p": 0.9}},
    })  # fmt: skip
    assert chosen == {"server": ("native", EngineReason.LM15_ROUTES), "vllm": ("native", EngineReason.LM15_ROUTES),
                      "claude": ("native", EngineReason.LM15_ROUTES), "sampled": ("native", EngineReason.LM15_ROUTES),
                      "embedded": ("native", EngineReason.EMBEDDED)}  # fmt: skip


def test_auto_keeps_litellm_for_what_only_litellm_does():
    chosen = engines({
        "replicas": {"model": "openai/m", "deployments": [{"api_base": LOCAL}, {"api_base": LOCAL}]},
        "backed": {"model": "openai/m", "api_base": LOCAL, "fallbacks": ["other"]},
        "other": {"model": "openai/o", "api_base": LOCAL},
        "bedrock": {"model": "bedrock/anthropic.claude-v2"},
        "azure": {"model": "azure/gpt-4o", "extra": {"api_version": "2024-06-01"}},
        "lean": {"model": "openai/m", "api_base": LOCAL, "lean_client": True},
    })  # fmt: skip
    assert chosen["replicas"] == chosen["backed"] == ("litellm", EngineReason.ROUTER)
    assert chosen["bedrock"] == ("litellm", EngineReason.NOT_ROUTED)
    assert chosen["azure"] == chosen["lean"] == ("litellm", EngineReason.LITELLM_SETTINGS)
    assert chosen["other"] == ("native", EngineReason.LM15_ROUTES)  # a fallback's own calls, when it plays a role


def test_engine_in_the_file_forces_either():
    chosen = engines({"lite": {"model": "openai/m", "api_base": LOCAL, "engine": "litellm"},
                      "fast": {"model": "openai/m", "api_base": LOCAL, "engine": "native"}})  # fmt: skip
    assert chosen["lite"] == ("litellm", EngineReason.CONFIGURED)
    assert chosen["fast"] == ("native", EngineReason.CONFIGURED)
    with pytest.raises(pydantic.ValidationError, match="cannot serve deployments or fallbacks"):
        FusionConfig.model_validate({"models": {"m": {
            "model": "openai/m", "engine": "native", "deployments": [{"api_base": LOCAL}]}}})  # fmt: skip


def test_the_lms_follow_the_choice_made_at_load_and_say_it_at_debug(tmp_path, monkeypatch, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {
        "auto": {"model": "openai/auto", "api_base": LOCAL},
        "lite": {"model": "openai/lite", "api_base": LOCAL, "engine": "litellm"},
        "bedrock": {"model": "bedrock/anthropic.claude-v2"},
    }}))  # fmt: skip
    backends = Backends(read_config(path))
    monkeypatch.setattr(config_module, "choose_engine", lambda *a, **k: pytest.fail("chosen again after load"))
    with caplog.at_level(logging.DEBUG, logger="fusion_dspy.backends.roles"):
        auto, lite, bedrock = backends.lm("auto"), backends.lm("lite"), backends.lm("bedrock")
    assert isinstance(auto.engine, NativeEngine) and auto.engine.route == "openai-chat:auto"
    assert lite.engine == bedrock.engine == "litellm"  # engine: litellm works exactly as before
    assert lite.kwargs["api_base"] == LOCAL and lite.kwargs["api_key"] == "no-key"
    assert "model auto: engine native (lm15 routes it)" in caplog.text
    assert "model bedrock: engine litellm (lm15 cannot route it)" in caplog.text


def test_a_default_config_model_answers_through_the_native_engine(tmp_path):
    with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"models": {"stub": {"model": "openai/stub", "api_base": server.api_base}}}))
        lm = Backends(read_config(path)).lm("stub")
        assert dspy.Predict("question -> answer")(question="2 + 2?", lm=lm).answer == "4"
    assert isinstance(lm.engine, NativeEngine) and len(server.requests) == 1


@pytest.mark.embedded
def test_the_embedded_model_runs_on_the_native_engine():
    lm = Backends(read_config(None)).lm("embedded")
    assert isinstance(lm.engine, NativeEngine) and lm.model.startswith("openai/smollm2")
    assert lm("Say hi.", max_tokens=8)[0]

"""The config side of sampling at the limit: batch_samples, engine, lean_client, quorum, adaptive; run/optimize."""

import json

import pytest
import yaml

import fusion_dspy as fd
from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import read_config
from fusion_dspy.backends.native import NativeEngine
from fusion_dspy.testing import StubOpenAIServer
from fusion_dspy.workflows.batch import run_batch


def respond(call):
    if call.wants("comparison"):
        return {"comparison": "compared", "answer": "fused"}
    return {"answer": "42"}


def backends_for(tmp_path, config: dict) -> Backends:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Backends(read_config(path))


def test_config_batches_openai_models_by_default_and_passes_straggler_and_adaptive_settings(tmp_path):
    with StubOpenAIServer(respond=respond) as server:
        backends = backends_for(tmp_path, {
            "models": {"gen": {"model": "openai/gen", "api_base": server.api_base, "num_retries": 0}},
            "roles": {"generators": "gen"},
            "fusion": {"n": 8, "quorum": 6, "straggler_grace_s": 0.5, "adaptive": {"wave": 4}},
        })  # fmt: skip
        program = backends.program("question -> answer")
        result = program(question="q")
    sample = program.sample
    assert sample.batch_samples == {"openai/gen": "auto"} and (sample.quorum, sample.straggler_grace_s) == (6, 0.5)
    assert sample.adaptive.wave == 4 and sample.adaptive.threshold == 0.95
    assert [body.get("n") for body in server.requests] == [4, None]  # one batched wave of 4 agreed; one fusion
    assert result.samples_drawn == 4 and result.stop_reason == "agreement" and result.answer == "fused"


def test_batching_can_be_switched_off_per_model(tmp_path):
    with StubOpenAIServer(respond=respond) as server:
        backends = backends_for(tmp_path, {
            "models": {"gen": {"model": "openai/gen", "api_base": server.api_base, "batch_samples": False}},
            "roles": {"generators": "gen"},
            "fusion": {"n": 3},
        })  # fmt: skip
        backends.program("question -> answer")(question="q")
    assert len(server.requests) == 3 + 1


def test_native_engine_and_lean_client(tmp_path):
    backends = backends_for(tmp_path, {"models": {
        "fast": {"model": "openai/fast", "api_base": "http://127.0.0.1:9/v1", "engine": "native"},
        "lean": {"model": "openai/lean", "api_base": "http://127.0.0.1:9/v1", "lean_client": True},
    }})  # fmt: skip
    assert isinstance(backends.lm("fast").engine, NativeEngine) and backends.lm("lean").kwargs["no-log"] is True
    assert "no-log" not in backends.lm("fast").kwargs


def test_native_engine_cannot_route(tmp_path):
    with pytest.raises(fd.ConfigError, match="engine: native cannot serve deployments or fallbacks"):
        backends_for(tmp_path, {"models": {"m": {"model": "openai/m", "engine": "native", "fallbacks": ["n"]},
                                           "n": {"model": "openai/n"}}})  # fmt: skip


def test_run_batch_keeps_several_inputs_in_flight(tmp_path):
    with StubOpenAIServer(respond=respond, rendezvous=3) as server:  # each request waits until 3 are in flight
        lm = fd.testing.engine.dspy.LM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm",
                                       num_retries=0)  # fmt: skip
        program = fd.BestOfN("question -> answer", n=1, lm=lm)
        items = [{"id": str(i), "question": f"q{i}"} for i in range(3)]
        counts = run_batch(program, items, tmp_path / "out.jsonl", ["question"], show_progress=False, concurrency=3)
    assert counts == {"done": 3, "failed": 0, "skipped": 0} and server.peak_in_flight == 3
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["0", "1", "2"]


def test_the_embedded_model_cannot_be_a_fallback(tmp_path):
    """litellm's Router cannot reach it (no fixed address): a config error, not a litellm traceback later."""
    path = tmp_path / "c.yaml"
    path.write_text("models: {api: {model: openai/x, api_base: 'http://127.0.0.1:9/v1', fallbacks: [embedded]}}\n"
                    "roles: {generators: api}\n")
    with pytest.raises(fd.ConfigError, match="models.api.fallbacks names the embedded model"):
        fd.load_config(path)

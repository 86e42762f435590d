"""Role routing, teacher pools, Router fallback and replicas, against OpenAI-compatible servers on 127.0.0.1."""

import logging

import dspy
import pytest
import yaml

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import read_config
from fusion_dspy.testing import StubOpenAIServer
from fusion_dspy.testing.wire import parse_body

SECRET = "sk-fusion-test-0123456789abcdef"


def replying(name: str):
    def respond(call):
        if call.wants("best_candidate"):
            return {"comparison": "c", "best_candidate": 2}
        if call.wants("comparison"):
            return {"comparison": "c", "answer": f"fused by {name}"}
        return {"answer": f"sampled by {name}"}

    return respond


def calls(server):
    return [parse_body(body, index) for index, body in enumerate(server.requests)]


def choices(server):
    """Samples asked of a server: a request for n choices (batch_samples, on for openai/ models) counts n."""
    return sum(body.get("n") or 1 for body in server.requests)


def fusor_requests(server):
    return [call for call in calls(server) if call.wants("answer", "comparison")]


@pytest.fixture
def servers():
    with StubOpenAIServer(respond=replying("a")) as a, StubOpenAIServer(respond=replying("b")) as b:
        yield a, b


def backends_for(tmp_path, config: dict) -> Backends:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Backends(read_config(path))


def model(server, name, **extra):
    return {"model": f"openai/{name}", "api_base": server.api_base, "num_retries": 0, **extra}


def test_each_role_reaches_its_own_server(tmp_path, servers):
    a, b = servers
    backends = backends_for(tmp_path, {
        "models": {"gen": model(a, "gen-model"), "fus": model(b, "fusor-model")},
        "roles": {"generators": "gen", "fusor": "fus"},
        "fusion": {"n": 3, "temperature": 0.9},
    })  # fmt: skip
    backends.check()
    result = backends.program("question -> answer")(question="q")
    assert result.answer == "fused by b"
    assert choices(a) == 3 and not fusor_requests(a)
    assert {body["model"] for body in a.requests} == {"gen-model"}
    assert {body["temperature"] for body in a.requests} == {0.9}
    assert len(b.requests) == 1 and len(fusor_requests(b)) == 1 and b.requests[0]["model"] == "fusor-model"


def test_teacher_pool_with_counts(tmp_path, servers):
    a, b = servers
    backends = backends_for(tmp_path, {
        "models": {"t1": model(a, "teacher-1"), "t2": model(b, "teacher-2")},
        "roles": {"generators": [{"model": "t1", "count": 2}, "t2"], "fusor": "t2"},
    })  # fmt: skip
    result = backends.program("question -> answer")(question="q")
    assert result.candidates and result.answer == "fused by b"
    assert choices(a) == 2 and len(b.requests) == 1 + 1


def test_select_method_uses_the_judge_role(tmp_path, servers):
    a, b = servers
    backends = backends_for(tmp_path, {
        "models": {"gen": model(a, "gen"), "judge": model(b, "judge")},
        "roles": {"generators": "gen", "judge": "judge"},
        "fusion": {"n": 2, "method": "select", "select": "listwise"},
    })  # fmt: skip
    result = backends.program("question -> answer")(question="q")
    assert result.answer == "sampled by a" and choices(a) == 2
    assert len(b.requests) == 1 and calls(b)[0].wants("best_candidate")


def test_router_falls_back_when_a_deployment_fails(tmp_path):
    with StubOpenAIServer(respond=replying("down"), status=500) as down, StubOpenAIServer(respond=replying("up")) as up:
        backends = backends_for(tmp_path, {
            "models": {"primary": {**model(down, "primary"), "fallbacks": ["backup"]}, "backup": model(up, "backup")},
            "roles": {"generators": "primary", "fusor": "backup"},
            "fusion": {"n": 2},
        })  # fmt: skip
        result = backends.program("question -> answer")(question="q")
    assert [c.answer for c in result.candidates] == ["sampled by up"] * 2
    assert len(down.requests) >= 2 and {body["model"] for body in down.requests} == {"primary"}


def test_replicas_are_load_balanced(tmp_path, servers):
    a, b = servers
    backends = backends_for(tmp_path, {
        "models": {"qwen": {"model": "openai/qwen", "num_retries": 0,
                            "deployments": [{"api_base": a.api_base}, {"api_base": b.api_base}]}},
        "roles": {"generators": "qwen"},
        "fusion": {"n": 20, "method": "select"},
    })  # fmt: skip
    result = backends.program("question -> answer")(question="q")
    assert len(result.candidates) == 20
    assert len(a.requests) + len(b.requests) == 20
    assert a.requests and b.requests, "both replicas must take part (chance of a false failure: 2 in a million)"


def test_api_keys_never_reach_saved_programs_caches_or_logs(tmp_path, servers, monkeypatch, caplog):
    a, b = servers
    monkeypatch.setenv("FUSION_SECRET", SECRET)
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(tmp_path / "cache"))
    backends = backends_for(tmp_path, {
        "models": {"gen": model(a, "gen", api_key_env="FUSION_SECRET"),
                   "fus": model(b, "fus", api_key_env="FUSION_SECRET")},
        "roles": {"generators": "gen", "fusor": "fus"},
        "fusion": {"n": 2},
    })  # fmt: skip
    program = backends.program("question -> answer")
    with caplog.at_level(logging.DEBUG):
        program(question="q")
        program(question="q")  # served from the cache
    program.save(tmp_path / "program.json")
    assert SECRET not in (tmp_path / "program.json").read_text()
    assert SECRET not in caplog.text
    assert SECRET not in repr(backends.lm("gen").history) + repr(backends.lm("gen").dump_state())
    cache_files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cache_files and not any(SECRET.encode() in p.read_bytes() for p in cache_files)
    assert choices(a) == 2, "the second call must come from the cache"

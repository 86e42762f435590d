"""Shared by the serving tests: a scripted backend's replies, a config pointing at it, and a running fusion server."""

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import fusion_dspy as fd
from fusion_dspy.backends.secrets import Redactor
from fusion_dspy.serve import ServeSettings, build_profiles, create_app
from fusion_dspy.serve.server import BackgroundServer
from fusion_dspy.testing import StubOpenAIServer

FUSED_WORDS = " ".join(f"w{i}" for i in range(20))  # a long fused reply, so a stream has a middle


def _outputs(body: dict) -> str:
    return body["messages"][0]["content"].split("Your output fields are:")[-1].split("All interactions")[0]


def tag(body: dict) -> str:
    """The ``q-<k>`` tag of the conversation a request is about ('' if none): each client checks its own answer."""
    found = re.findall(r"q-\d+", body["messages"][-1]["content"])
    return found[-1] if found else ""


def chat_reply(body: dict) -> str:
    """ChatAdapter replies: samples say 'sample <tag>', the fusor 'fused <tag> w0 ... w19', a judge picks 1."""
    outputs = _outputs(body)
    if "`comparison`" in outputs and "`response`" in outputs:
        return (f"[[ ## comparison ## ]]\nthey agree\n\n[[ ## response ## ]]\nfused {tag(body)} {FUSED_WORDS}\n\n"
                "[[ ## completed ## ]]")  # fmt: skip
    if "`best_candidate`" in outputs:
        return "[[ ## comparison ## ]]\n1 is best\n\n[[ ## best_candidate ## ]]\n1\n\n[[ ## completed ## ]]"
    return f"[[ ## response ## ]]\nsample {tag(body)}\n\n[[ ## completed ## ]]"


def json_reply(body: dict) -> str:
    """JSONAdapter replies whose response is a DSPy ChatAdapter answer: for a DSPy program calling the server."""
    answer = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
    if "`comparison`" in _outputs(body):
        return json.dumps({"comparison": "they agree", "response": answer})
    return json.dumps({"response": answer})


def write_config(path: Path, models: dict[str, str], generators, n: int = 3, **fusion) -> Path:
    """A config whose models are the given stub servers (name -> api_base), without retries or caching, and one
    request per candidate (the tests count requests)."""
    config = {
        "models": {name: {"model": f"openai/{name}-model", "api_base": base, "num_retries": 0, "cache": False,
                          "batch_samples": False}
                   for name, base in models.items()},
        "roles": {"generators": generators},
        "fusion": {"n": n, **fusion},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def fusion_server(config: Path, tuned: list[str] = (), redact_also: list[str] = (),
                  **settings) -> Iterator[BackgroundServer]:  # fmt: skip
    """The fusion server for ``config`` on a free loopback port, in a background thread."""
    backends = fd.load_config(config)
    app = create_app(build_profiles(backends, tuned), ServeSettings(**settings),
                     Redactor([settings.get("api_key"), *redact_also]))  # fmt: skip
    with BackgroundServer(app) as server:
        yield server


def stub_usage_total(*stubs: StubOpenAIServer) -> dict[str, int]:
    """What the backends reported, summed over every request they answered."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for stub in stubs:
        for usage in stub.usage:
            for key in totals:
                totals[key] += usage[key]
    return totals


@pytest.fixture(name="stub")
def stub_fixture() -> Iterator[StubOpenAIServer]:
    """``stub``: a loopback stub answering like ``chat_reply`` (import ``stub_fixture`` to use it)."""
    with StubOpenAIServer(chat_reply) as server:
        yield server


@pytest.fixture(name="config")
def config_fixture(tmp_path: Path, stub: StubOpenAIServer) -> Path:
    """``config``: a config of the ``stub``, one generator model, N = 2 (import ``config_fixture``)."""
    return write_config(tmp_path / "config.yaml", {"stub": stub.api_base}, "stub", n=2)

"""`fusion-dspy serve` as a user runs it: one command, in its own process, with a key."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import FUSED_WORDS, chat_reply, write_config

KEY = "cli-test-key-7f2a"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(port: int, process: subprocess.Popen, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"fusion-dspy serve did not answer on port {port} within {seconds} s")


def test_serve_command_with_a_key(tmp_path):
    port = _free_port()
    with StubOpenAIServer(chat_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        command = [sys.executable, "-m", "fusion_dspy.cli", "-v", "serve", "--config", str(config), "--port",
                   str(port), "--api-key-env", "FUSION_TEST_KEY"]  # fmt: skip
        process = subprocess.Popen(command, env={**os.environ, "FUSION_TEST_KEY": KEY}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            _wait_healthy(port, process)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
            reply = client.chat.completions.create(model="fusion", messages=[{"role": "user", "content": "Hi q-2"}])
            refused = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer nope"})
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
    assert reply.choices[0].message.content == f"fused q-2 {FUSED_WORDS}"
    assert refused.status_code == 401
    assert "serving fusion, best-of-n" in err and "POST /v1/chat/completions" in out + err  # access log at -v
    assert KEY not in out + err


def test_readme_serve_examples_are_valid():
    import importlib
    import json
    import re
    from pathlib import Path

    import yaml
    from litellm.llms.custom_llm import CustomLLM

    from fusion_dspy.serve.schema import ChatCompletionRequest

    section = Path(__file__).resolve().parents[1].joinpath("docs", "serving", "index.md").read_text()
    curl = re.search(r"-d '(\{.*?\})'", section, re.DOTALL).group(1)
    request = ChatCompletionRequest.model_validate(json.loads(curl))
    assert request.candidates == 4 and request.fusion.return_candidates
    proxy = yaml.safe_load(re.search(r"```yaml\n(# proxy.yaml.*?)```", section, re.DOTALL).group(1))
    entry = proxy["litellm_settings"]["custom_provider_map"][0]
    module, _, attribute = entry["custom_handler"].rpartition(".")
    assert entry["provider"] == "fusion" and isinstance(getattr(importlib.import_module(module), attribute), CustomLLM)
    assert all(m["litellm_params"]["model"].startswith("fusion/") for m in proxy["model_list"])


def test_serve_command_with_two_workers(tmp_path):
    port = _free_port()
    with StubOpenAIServer(chat_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        command = [sys.executable, "-m", "fusion_dspy.cli", "serve", "--config", str(config), "--port", str(port),
                   "--workers", "2"]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_healthy(port, process)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
            replies = [client.chat.completions.create(model="fusion", messages=[{"role": "user", "content": f"q-{k}"}])
                       for k in range(4)]  # fmt: skip
        finally:
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
    assert [r.choices[0].message.content for r in replies] == [f"fused q-{k} {FUSED_WORDS}" for k in range(4)]
    assert "2 workers" in err


def test_the_served_process_keeps_no_dspy_history_or_trace(tmp_path):
    """A server runs for days: DSPy's LM history and trace would hold up to 10,000 requests and predictions."""
    import gc

    import dspy

    from fusion_dspy.process import SERVER_YOUNG_OBJECTS
    from fusion_dspy.serve.command import ServeOptions

    with StubOpenAIServer(chat_reply) as stub:
        config = write_config(tmp_path / "config.yaml", {"stub": stub.api_base}, "stub", n=2)
        assert not dspy.settings.disable_history and dspy.settings.trace == [] and not gc.get_freeze_count()
        app = ServeOptions(config=str(config)).app()
    assert dspy.settings.disable_history and dspy.settings.trace is None
    assert gc.get_freeze_count() > 0, "its imports frozen: no collection walks them again (freeze_imports)"
    assert not any(alive is app for alive in gc.get_objects()), "the app, built after them, frozen too"
    assert gc.get_threshold()[0] == SERVER_YOUNG_OBJECTS, "young objects collected less often"


def test_each_serve_option_is_an_argument_of_the_command_and_reaches_the_app_s_settings(tmp_path, monkeypatch):
    """A server option is one field of ServeOptions (plus one of ServeSettings when the app reads it): the command's
    argument, its default and its --no- form come from the field, and its value reaches the running app."""
    from dataclasses import fields

    from fusion_dspy.cli import build_parser
    from fusion_dspy.serve.command import ServeOptions

    with StubOpenAIServer(chat_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        defaults = ServeOptions.of(build_parser().parse_args(["serve", "--config", str(config)]))
        assert defaults == ServeOptions(config=str(config))
        given = {"max_concurrency": 3, "timeout": 7.5, "max_n": 4, "max_body_bytes": 2048, "keepalive_s": 0.5,
                 "drain_s": 0.0, "metrics": False, "otel": False, "api_key_env": "FUSION_TEST_SERVE_KEY",
                 "idle_connection_s": 9.0}  # fmt: skip
        assert set(given) == {option.name for option in fields(ServeOptions) if "help" in option.metadata}
        argv = ["serve", "--config", str(config), "--max-concurrency", "3", "--timeout", "7.5", "--max-n", "4",
                "--max-body-bytes", "2048", "--keepalive-s", "0.5", "--drain-s", "0", "--no-metrics", "--no-otel",
                "--api-key-env", "FUSION_TEST_SERVE_KEY", "--idle-connection-s", "9"]  # fmt: skip
        options = ServeOptions.of(build_parser().parse_args(argv))
        assert options == ServeOptions(config=str(config), **given)
        monkeypatch.setenv("FUSION_TEST_SERVE_KEY", KEY)
        settings = options.app().state.settings
    assert (settings.max_concurrency, settings.timeout, settings.limits.max_n, settings.max_body_bytes,
            settings.keepalive_s, settings.drain_s, settings.metrics) == (3, 7.5, 4, 2048, 0.5, 0.0, False)
    assert settings.api_key == KEY


@pytest.mark.parametrize("workers", [1, 2])
def test_an_idle_connection_outlives_the_clients_own_expiry(tmp_path, monkeypatch, workers):
    """uvicorn closes an idle keep-alive connection after 5 s, httpx (so the OpenAI SDK) reuses one for 5 s: a
    request sent as the server closed its connection got a reset (benchmarks/serve.py --against, 64 in flight).
    The server keeps idle connections 75 s, or --idle-connection-s."""
    import uvicorn

    from fusion_dspy.cli import build_parser
    from fusion_dspy.serve.command import ServeOptions, serve_command

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: ran.append(kwargs))
    with StubOpenAIServer(chat_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        for extra in ([], ["--idle-connection-s", "90"]):
            argv = ["serve", "--config", str(config), *extra]
            serve_command(ServeOptions.of(build_parser().parse_args(argv)), workers=workers)
    assert [kwargs["timeout_keep_alive"] for kwargs in ran] == [75.0, 90.0]
    assert httpx.Limits().keepalive_expiry < 75.0, "clients give up an idle connection before the server does"

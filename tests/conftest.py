"""Offline fixtures: no DSPy cache unless a test asks for it, scripted LMs that answer like a task and a fusor."""

import os
from pathlib import Path

import dspy
import pytest

from fusion_dspy.process import ProcessState
from fusion_dspy.testing import ScriptedCall, scripted_lm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_dspy():
    """No DSPy cache, and no global LM/adapter/trace leaking from a test that called dspy.configure or predicted;
    what a command's set-up changed process-wide and never put back (a worker's or a server's, entered for the rest
    of the process) is put back too, as are keys held outside any command."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    found = ProcessState.now()
    yield
    found.restore()
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    dspy.configure(lm=None, adapter=None, track_usage=False, trace=[])


@pytest.fixture
def memory_cache():
    """DSPy's in-memory cache on (fresh), to test cache keys and reuse."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    dspy.cache.reset_memory_cache()
    yield dspy.cache


def qa_responder(call: ScriptedCall) -> dict:
    """Generators answer 'answer <request index>'; the fusor answers 'fused'; judges pick candidate 1 / score 5."""
    if call.wants("comparison", "answer"):
        fused = {"comparison": "candidates compared", "answer": "fused"}
        return {**fused, "reasoning": "fused reasoning"} if call.wants("reasoning") else fused
    if call.wants("best_candidate"):
        return {"comparison": "1 is best", "best_candidate": 1}
    if call.wants("score"):
        return {"score": 5}
    if call.wants("answer"):
        answer = {"answer": f"answer {call.index}"}
        return {"reasoning": "because", **answer} if call.wants("reasoning") else answer
    return {name: f"{name} text" for name in call.output_fields}


@pytest.fixture
def lm():
    return scripted_lm(qa_responder, model="scripted/generator")


# The files whose Ray cases share one local Ray instance (tests.engine_support.shared_ray) while they run back to
# back on a worker; it ends after the last of them (pytest_runtest_teardown), so no other file runs beside it.
RAY_FILES = {"test_engines.py", "test_ray_engine.py"}


@pytest.fixture(scope="module")
def ray_instance():
    """The local Ray instance, with the environment its cases' processes run in (the repository on PYTHONPATH, no
    litellm) set for the whole module: tests/test_ray_engine.py's drivers are processes of the module."""
    from tests.engine_support import ray_cases

    with ray_cases() as ray:
        yield ray


@pytest.fixture
def ray_case():
    """The same, with that environment set for one case only: the other cases of its module keep theirs."""
    from tests.engine_support import ray_cases

    with ray_cases() as ray:
        yield ray


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Starting Ray takes 4-8 s on 2 cores: test_engines.py and test_ray_engine.py share an instance when they run
    one after the other here, and it ends after the last of them (xdist hands a worker its next item before it
    tears down this one, so ``nextitem`` is known)."""
    if item.path.name in RAY_FILES and (nextitem is None or nextitem.path.name not in RAY_FILES):
        from tests.engine_support import stop_shared_ray

        stop_shared_ray()


def short_embedded_config(max_tokens: int = 24):
    """``configs/embedded.toml`` (what runs without a config) with answers cut at ``max_tokens``: the tiny model
    often rambles to its 200-token cap, so a command's every step runs here in a fraction of the time."""
    from fusion_dspy.backends.config import read_config

    config = read_config(REPO / "configs" / "embedded.toml")
    config.models["embedded"].max_tokens = max_tokens
    return config


@pytest.fixture(autouse=True)
def one_core_for_the_embedded_model(request):
    """Under xdist, an embedded test runs on its worker's own core, and so its model (one llama.cpp thread:
    EmbeddedServer's default is the cores it may run on), a notebook kernel's, a subprocess's. llama.cpp's threads
    wait on each other at every token: two per worker on 2 cores, the other worker busy too, timed a notebook
    cell out at 300 s that one thread on its own core runs in about a minute."""
    parallel = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
    if not (parallel and request.node.get_closest_marker("embedded") and hasattr(os, "sched_setaffinity")):
        yield
        return
    cores = os.sched_getaffinity(0)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    os.sched_setaffinity(0, {sorted(cores)[worker % len(cores)]})  # one core per worker; what this thread starts
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


# The files that take longest, longest first (measured with --durations on 2 cores). xdist hands out whole files
# (--dist loadfile) in collection order: started first, they run while the short files fill the other worker, so
# both workers end together instead of one long file running alone at the end. Only the order changes.
LONGEST_FIRST = ["test_notebooks.py", "test_engines.py", "test_faults_batch.py", "test_ray_engine.py",
                 "test_workers.py", "test_serve_ops.py", "test_eval_synth.py", "test_faults.py",
                 "test_docstrings.py", "test_serve_errors.py", "test_search.py", "test_serve.py",
                 "test_lazy_imports.py", "test_serve_cli.py", "test_embedded.py", "test_optimize_cli.py"]


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays

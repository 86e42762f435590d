"""Offline fixtures: no DSPy cache unless a test asks for it, scripted LMs that answer like a task and a fusor."""

import os

import dspy
import pytest

from fusion_dspy.process import ProcessState
from fusion_dspy.testing import ScriptedCall, scripted_lm


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
                 "test_workers.py", "test_lazy_imports.py", "test_serve_ops.py", "test_faults.py",
                 "test_eval_synth.py", "test_docstrings.py", "test_search.py", "test_serve.py",
                 "test_serve_errors.py", "test_optimize_cli.py", "test_serve_cli.py", "test_cli.py"]


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays

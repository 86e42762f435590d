"""The Ray engine (``--engine ray``) against the loopback server: the local engine's records, exactly once after
a killed driver or a killed worker, failing teachers handled as locally. One local Ray instance (2 CPUs, no
dashboard) serves the whole module, and tests/test_engines.py too when it ran just before (tests/conftest.py)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fusion_dspy.cli import main
from fusion_dspy.core.router import Router
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.testing import StubOpenAIServer
from tests.engine_support import (
    by_id,
    lines,
    litellm_importers,
    qa_reply,
    reply,
    same_failures,
    untimed,
    write_config,
)

RAY = ["--engine", "ray", "--actors", "1", "--in-flight", "4", "--quiet"]


@pytest.fixture(scope="module")
def ray_address(ray_instance):
    """The local Ray instance of this test process (``tests/conftest.py``), by its address. Its configs are native:
    no actor may import litellm."""
    return ray_instance.get_runtime_context().gcs_address


def test_synth_on_ray_writes_the_local_records_and_handles_failing_teachers_as_locally(tmp_path, ray_address):
    prompts = tmp_path / "prompts.jsonl"
    texts = [f"prompt {i}" for i in range(10)] + ["poison prompt"]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    with StubOpenAIServer(reply) as good, StubOpenAIServer(reply, status=500) as down:
        config = write_config(tmp_path / "pool.yaml", {
            "good": {"model": "openai/good", "api_base": good.api_base, "cache": False, "num_retries": 0},
            "down": {"model": "openai/down", "api_base": down.api_base, "cache": False, "num_retries": 0},
        }, ["good", "down"])  # fmt: skip
        common = ["synth", "--config", str(config), "--prompts", str(prompts), "--n", "4"]
        assert main([*common, "--output", str(tmp_path / "local.jsonl"), "--quiet"]) == 0
        assert main([*common, "--output", str(tmp_path / "ray.jsonl"), *RAY]) == 0
    local, remote = by_id(tmp_path / "local.jsonl"), by_id(tmp_path / "ray.jsonl")
    assert sorted(remote) == [f"p{i}" for i in range(10)]
    assert same_failures(remote) == same_failures(local), "same ids, texts and provenance"
    assert remote["p0"]["messages"][1]["content"] == "fused"
    assert remote["p0"]["provenance"]["teachers"] == ["openai/good"]
    assert len(remote["p0"]["provenance"]["report"]["failures"]) == 2, "the down teacher's samples are dropped"
    errors = lines(tmp_path / "ray.errors.jsonl")
    assert [e["id"] for e in errors] == ["p10"] and errors[0]["error"].startswith("SamplingError")
    assert [e["id"] for e in lines(tmp_path / "local.errors.jsonl")] == ["p10"]
    assert litellm_importers() == {}, "a Ray actor imported litellm for native models"



def test_eval_on_ray_writes_the_local_records_and_shares_one_candidate_store(tmp_path, ray_address):
    devset = tmp_path / "dev.jsonl"
    devset.write_text("".join(json.dumps({"question": f"question {i} ?", "answer": "42"}) + "\n" for i in range(4)))
    with StubOpenAIServer(qa_reply) as server:
        config = write_config(tmp_path / "qa.yaml", {"m": {"model": "openai/m", "api_base": server.api_base,
                                                           "cache": False}}, "m")  # fmt: skip
        common = ["eval", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset", str(devset),
                  "--n-values", "1,2"]  # fmt: skip
        assert main([*common, "--output-dir", str(tmp_path / "plain"), "--quiet"]) == 0
        Router.fit(tmp_path / "plain" / "results.jsonl").save(tmp_path / "router.json")
        common += ["--router", str(tmp_path / "router.json")]  # the route is scored on Ray too
        assert main([*common, "--output-dir", str(tmp_path / "local"), "--quiet"]) == 0
        assert main([*common, "--output-dir", str(tmp_path / "ray"), *RAY]) == 0
    local, remote = by_id(tmp_path / "local" / "results.jsonl"), by_id(tmp_path / "ray" / "results.jsonl")
    assert sorted(remote) == sorted(f"{i}:{n}" for i in range(4) for n in (1, 2))
    assert untimed(remote) == untimed(local)
    assert all("route" in record["scores"] for record in remote.values())
    assert [remote[f"{i}:2"]["scores"]["single"] for i in range(4)] == [1.0, 0.0, 1.0, 0.0]
    assert all(remote[f"{i}:2"]["scores"]["fusion"] == 1.0 for i in range(4))
    assert len(CandidateStore(tmp_path / "ray" / "candidates")) == 4 * 2, "the actors wrote to the driver's store"


def synth_job(tmp_path: Path, server: StubOpenAIServer, count: int) -> tuple[list[str], Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(count)))
    config = write_config(tmp_path / "config.yaml", {"a": {"model": "openai/teacher-a", "api_base": server.api_base,
                                                           "cache": False}}, [{"model": "a", "count": 2}])  # fmt: skip
    output = tmp_path / "train.jsonl"
    return ["synth", "--config", str(config), "--prompts", str(prompts), "--output", str(output)], output


def wait_for_lines(path: Path, count: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(lines(path)) < count and time.time() < deadline:
        time.sleep(0.05)


def test_a_killed_ray_driver_resumes_and_writes_every_prompt_exactly_once(tmp_path, ray_address):
    with StubOpenAIServer(reply, delay=0.2) as server:
        args, output = synth_job(tmp_path, server, 40)
        driver = subprocess.Popen([sys.executable, "-m", "fusion_dspy.cli", *args, *RAY, "--address", ray_address],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for_lines(output, 4)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        written_before = len(lines(output))
        assert 4 <= written_before < 40, "the kill must land mid-run"
        with open(output, "a") as file:  # the worst case: a line cut in the middle by the kill
            file.write('{"id": "39", "messages": [{"role": "us')
        server.delay = 0.0  # slow only so the kill lands mid-run; nothing interrupts the rerun
        assert main([*args, *RAY]) == 0
    assert sorted(int(i) for i in by_id(output)) == list(range(40)), "every prompt exactly once"


def map_workers() -> list[int]:
    """Pids of this machine's Ray Data actors of the engine (their process title names the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"MapWorker(Map(JobActor))" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_killed_ray_worker_loses_no_row_and_writes_none_twice(tmp_path, ray_address):
    killed: list[tuple[int, int]] = []

    def kill_one_worker_mid_run() -> None:
        wait_for_lines(output, 4)
        workers = map_workers()
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            killed.append((workers[0], len(lines(output))))
            server.delay = 0.0  # slow only so the kill lands mid-run; the rows left run at once

    with StubOpenAIServer(reply, delay=0.2) as server:
        args, output = synth_job(tmp_path, server, 40)
        killer = threading.Thread(target=kill_one_worker_mid_run)
        killer.start()
        assert main([*args, *RAY]) == 0
        killer.join()
    assert killed and killed[0][1] < 40, "a worker was killed mid-run"
    assert sorted(int(i) for i in by_id(output)) == list(range(40)), "every prompt exactly once"
    assert not (tmp_path / "train.errors.jsonl").read_text()


def test_engine_options_need_the_ray_engine(capsys):
    assert main(["synth", "--prompts", "p.jsonl", "--address", "auto"]) == 2
    assert "--engine ray" in capsys.readouterr().err


def test_without_ray_the_error_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when ray is not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main(["synth", "--prompts", "p.jsonl", "--engine", "ray"]) == 2
    assert "pip install 'fusion-dspy[ray]'" in capsys.readouterr().err


def test_run_on_ray_writes_the_local_records_and_errors(tmp_path, ray_address):
    inputs = tmp_path / "inputs.jsonl"
    texts = ["prompt a", "poison prompt", "prompt b", None]  # a null input is refused before any request
    inputs.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    with StubOpenAIServer(reply) as server:
        config = write_config(tmp_path / "c.yaml", {"m": {"model": "openai/m", "api_base": server.api_base,
                                                          "cache": False}}, "m")  # fmt: skip
        common = ["run", "--config", str(config), "--signature", "prompt -> response", "--inputs", str(inputs),
                  "--n", "2"]  # fmt: skip
        assert main([*common, "--output", str(tmp_path / "local.jsonl"), "--quiet"]) == 0
        assert main([*common, "--output", str(tmp_path / "ray.jsonl"), *RAY]) == 0
    remote = untimed(by_id(tmp_path / "ray.jsonl"))
    assert sorted(remote) == ["0", "2"] and remote == untimed(by_id(tmp_path / "local.jsonl"))
    assert remote["0"]["response"] == "fused" and remote["0"]["error"] is None
    for engine in ("local", "ray"):  # failures go to the errors file on both engines, and a rerun retries them
        assert by_id(tmp_path / f"{engine}.errors.jsonl")["1"]["error"].startswith("SamplingError")
        assert by_id(tmp_path / f"{engine}.errors.jsonl")["3"]["error"] == (
            "InputProblem: item 3: the input field 'prompt' is null; give it a value")

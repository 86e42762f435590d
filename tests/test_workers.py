"""``--workers K`` (worker processes on this machine) against loopback stub servers: the records of one process,
every prompt exactly once after a killed worker, Ctrl-C as on the local engine. Two workers; bounded waits."""

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from fusion_dspy.cli import main
from fusion_dspy.testing import StubOpenAIServer
from tests.cli_support import Output, cli_process, wait_until
from tests.engine_support import by_id, lines, model, qa_reply, reply, same_failures, untimed, write_config

REPO = Path(__file__).resolve().parents[1]
WORKERS = ["--workers", "2", "--quiet"]


def test_a_worker_process_keeps_no_history_and_freezes_its_imports():
    """Each worker (and Ray actor) process is the job's: set up like the command's own process."""
    import gc

    import dspy

    from fusion_dspy.workflows.engine import JobActor

    class Nothing:
        def build(self):
            return None

    assert not gc.get_freeze_count() and not dspy.settings.disable_history
    JobActor(Nothing(), in_flight=1, verbose=True)
    assert gc.get_freeze_count() > 0 and gc.isenabled()
    assert dspy.settings.disable_history and dspy.settings.trace is None


def test_synth_on_workers_writes_the_records_of_one_process(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(10)]
    rows += [{"id": "p10", "prompt": "poison prompt"}, {"id": "p11", "prompt": None}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    def cut(call):  # prompt 3's samples are cut short at max_tokens: the workers mark them as one process does
        return "length" if call.inputs.get("prompt") == "prompt 3" and "candidates" not in call.inputs else "stop"

    with StubOpenAIServer(reply, finish_reason=cut) as good, StubOpenAIServer(reply, status=500) as down:
        gone = "http://127.0.0.1:9/v1"  # nothing listens: reachable_pool drops this teacher in the parent
        config = write_config(tmp_path / "pool.yaml", {"good": model("good", good.api_base),
                                                       "down": model("down", down.api_base),
                                                       "gone": model("gone", gone)}, ["good", "down", "gone"])
        common = ["synth", "--config", str(config), "--prompts", str(prompts), "--n", "4", "--concurrency", "4"]
        assert main([*common, "--output", str(tmp_path / "one.jsonl"), "--quiet"]) == 0
        assert main([*common, "--output", str(tmp_path / "two.jsonl"), *WORKERS]) == 0
    assert capsys.readouterr().err.count("teacher 'gone' dropped") == 2
    one, two = by_id(tmp_path / "one.jsonl"), by_id(tmp_path / "two.jsonl")
    assert sorted(two) == sorted(f"p{i}" for i in range(10))
    assert same_failures(two) == same_failures(one), "same ids, fused texts and provenance"
    assert two["p0"]["messages"][1]["content"] == "fused" and two["p0"]["provenance"]["teachers"] == ["openai/good"]
    truncated = [[c["truncated"] for c in run["p3"]["provenance"]["report"]["candidates"]] for run in (one, two)]
    assert truncated[0] == truncated[1] and any(truncated[0])
    errors = {engine: by_id(tmp_path / f"{engine}.errors.jsonl") for engine in ("one", "two")}
    assert sorted(errors["two"]) == ["p10", "p11"] and errors["two"]["p11"] == errors["one"]["p11"]
    assert errors["two"]["p10"]["error"].startswith("SamplingError") and "is null" in errors["two"]["p11"]["error"]


def test_run_on_workers_writes_the_records_and_errors_of_one_process(tmp_path):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["a", "poison prompt", "b", "c", "d"]))
    with StubOpenAIServer(reply) as server:
        config = write_config(tmp_path / "c.yaml", {"m": model("m", server.api_base)}, "m")
        common = ["run", "--config", str(config), "--signature", "prompt -> response", "--inputs", str(inputs),
                  "--n", "2", "--concurrency", "2"]  # fmt: skip
        assert main([*common, "--output", str(tmp_path / "one.jsonl"), "--quiet"]) == 0
        assert main([*common, "--output", str(tmp_path / "two.jsonl"), *WORKERS]) == 0
    two = untimed(by_id(tmp_path / "two.jsonl"))
    assert sorted(two) == ["0", "2", "3", "4"] and two == untimed(by_id(tmp_path / "one.jsonl"))
    assert two["0"]["response"] == "fused" and two["0"]["error"] is None
    assert by_id(tmp_path / "two.errors.jsonl")["1"]["error"].startswith("SamplingError")



def test_eval_on_workers_writes_the_records_of_one_process_and_shares_its_store(tmp_path):
    devset = tmp_path / "dev.jsonl"
    devset.write_text("".join(json.dumps({"question": f"question {i} ?", "answer": "42"}) + "\n" for i in range(4)))
    with StubOpenAIServer(qa_reply) as server:
        config = write_config(tmp_path / "qa.yaml", {"m": model("m", server.api_base)}, "m")
        common = ["eval", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset", str(devset),
                  "--n-values", "1,2", "--threads", "2"]  # fmt: skip
        assert main([*common, "--output-dir", str(tmp_path / "one"), "--quiet"]) == 0
        drawn = len(server.requests)
        assert main([*common, "--output-dir", str(tmp_path / "two"), *WORKERS]) == 0
        assert len(server.requests) == 2 * drawn, "the workers drew what one process draws, no more"
        assert main([*common, "--output-dir", str(tmp_path / "two"), *WORKERS]) == 0
        assert len(server.requests) == 2 * drawn, "a rerun finds every record done"
    one, two = by_id(tmp_path / "one" / "results.jsonl"), by_id(tmp_path / "two" / "results.jsonl")
    assert sorted(two) == sorted(f"{i}:{n}" for i in range(4) for n in (1, 2)) and untimed(two) == untimed(one)
    assert [two[f"{i}:2"]["scores"]["single"] for i in range(4)] == [1.0, 0.0, 1.0, 0.0]


def synth_job(tmp_path: Path, server: StubOpenAIServer, count: int) -> tuple[list[str], Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(count)))
    config = write_config(tmp_path / "config.yaml", {"a": {**model("teacher-a", server.api_base)}},
                          [{"model": "a", "count": 2}])  # fmt: skip
    output = tmp_path / "train.jsonl"
    return ["synth", "--config", str(config), "--prompts", str(prompts), "--output", str(output), "--concurrency",
            "4", *WORKERS], output  # fmt: skip


def worker_pids(parent: int) -> list[int]:
    """The worker processes (multiprocessing spawn children, not its resource tracker) of ``parent``."""
    try:
        children = psutil.Process(parent).children()
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def test_a_killed_worker_loses_no_finished_prompt_and_a_rerun_does_each_once(tmp_path):
    killed: list[int] = []

    def kill_one_worker_mid_run() -> None:
        wait_until(lambda: len(lines(output)) >= 4)
        [victim, *_] = worker_pids(os.getpid())
        os.kill(victim, signal.SIGKILL)
        killed.append(len(lines(output)))
        server.delay = 0.0  # slow only so the kill lands mid-run; the surviving worker finishes at once

    with StubOpenAIServer(reply, delay=0.2) as server:
        args, output = synth_job(tmp_path, server, 40)
        killer = threading.Thread(target=kill_one_worker_mid_run)
        killer.start()
        assert main(args) == 0
        killer.join()
        assert killed and killed[0] < 40, "a worker was killed mid-run"
        failed = lines(tmp_path / "train.errors.jsonl")
        assert failed and all("WorkerDied" in e["error"] and "SIGKILL" in e["error"] for e in failed), failed
        assert len(lines(output)) + len(failed) == 40, "every prompt is either written or failed"
        server.delay = 0.0  # slow only so the kill lands mid-run; nothing interrupts the rerun
        assert main(args) == 0
    assert sorted(int(i) for i in by_id(output)) == list(range(40)), "every prompt exactly once"


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cli_process(*args), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def test_ctrl_c_finishes_the_prompts_in_flight_exits_130_and_a_rerun_completes(tmp_path):
    with StubOpenAIServer(reply, delay=0.2) as server:
        args, output = synth_job(tmp_path, server, 40)
        first = spawn(args)
        wait_until(lambda: len(server.requests) >= 12, process=first)
        os.killpg(first.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group, workers included
        at_signal = len(server.requests)
        text, _ = first.communicate(timeout=120)
        assert first.returncode == 130, text
        assert "Traceback" not in text and "Run the same command again to continue" in text, text
        assert len(server.requests) - at_signal <= 4 * 3, "no new prompt started: only the 4 in flight finished"
        assert 0 < len(lines(output)) < 40 and not lines(tmp_path / "train.errors.jsonl"), "in flight: written"
        server.delay = 0.0  # slow only so Ctrl-C lands mid-run; nothing interrupts the rerun
        assert main(args) == 0
    assert sorted(int(i) for i in by_id(output)) == list(range(40)), "every prompt exactly once"


def test_a_second_ctrl_c_abandons_the_prompts_in_flight_and_ends_the_workers(tmp_path):
    with StubOpenAIServer(reply, delay=60) as server:  # requests that would outlive the test's patience
        args, output = synth_job(tmp_path, server, 8)
        first = spawn(args)
        wait_until(lambda: server.flight.now >= 4, process=first)
        workers = [psutil.Process(pid) for pid in worker_pids(first.pid)]
        assert len(workers) == 2
        output_so_far = Output(first)
        os.killpg(first.pid, signal.SIGINT)
        wait_until(lambda: "Ctrl-C again to abandon" in output_so_far.text(), process=first, output=output_so_far)
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=45)
        text = output_so_far.text(timeout=10)
        assert first.returncode == 130 and "Traceback" not in text, text
        assert lines(output) == [] and not lines(tmp_path / "train.errors.jsonl")
        psutil.wait_procs(workers, timeout=10)
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE], "workers ended"


def test_workers_options_are_checked(capsys):
    assert main(["synth", "--prompts", "p.jsonl", "--engine", "ray", "--workers", "2"]) == 2
    assert "--actors" in capsys.readouterr().err
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as stop:
            main(["synth", "--prompts", "p.jsonl", "--workers", bad])
        assert stop.value.code == 2 and f"must be at least 1, got {bad}" in capsys.readouterr().err
    assert main(["run", "--input", "2+2?", "--workers", "2"]) == 2  # run's --concurrency is 1 by default
    assert "give --concurrency 2 or more" in capsys.readouterr().err


def test_ray_options_without_the_ray_engine_are_refused_not_ignored(capsys):
    assert main(["synth", "--prompts", "p.jsonl", "--actors", "8"]) == 2
    assert "--actors: options of the Ray engine; add --engine ray" in capsys.readouterr().err
    assert main(["run", "--input", "q", "--in-flight", "4", "--address", "auto"]) == 2
    assert "--address and --in-flight: options of the Ray engine" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["synth", "--prompts", "p.jsonl", "--engine", "ray", "--actors", "0"])
    assert stop.value.code == 2 and "--actors: must be at least 1, got 0" in capsys.readouterr().err

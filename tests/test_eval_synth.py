"""The paired evaluation and the synthetic-data pipeline, with scripted backends and a loopback server."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import FusionConfig
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from fusion_dspy.workflows.evaluation import PairedEvaluation
from fusion_dspy.workflows.reports import bootstrap_ci, plot_summary, summarize, write_summary
from fusion_dspy.workflows.synth import synthesize
from tests.cli_support import run_cli
from tests.conftest import qa_responder, short_embedded_config
from tests.scripted_search import DEVSET, TASK, generator_calls, make_backends

REPO = Path(__file__).resolve().parents[1]


def test_paired_evaluation_scores_every_method_on_the_same_candidates(tmp_path):
    backends = make_backends()
    records = PairedEvaluation(backends, TASK, DEVSET, n_values=(1, 2, 4, 8), output_dir=tmp_path).run(False)
    assert len(records) == 4 * len(DEVSET)
    assert generator_calls(backends) == 8 * len(DEVSET), "the largest N is drawn once; smaller N reuse it"
    means = {(row.method, row.n): row.mean for row in summarize(records)}
    # Sample k answers ANSWERS[k] = 41, 42, 42, 43, ...: the first is wrong, a majority of 4 is right, and the
    # fusor under the paper's instruction copies the first candidate.
    assert [means[("single", n)] for n in (1, 2, 4, 8)] == [0.0] * 4
    assert [means[("oracle", n)] for n in (1, 2, 4, 8)] == [0.0, 1.0, 1.0, 1.0]
    assert [means[("bon", n)] for n in (1, 2, 4, 8)] == [0.0, 0.0, 1.0, 1.0]
    assert means[("fusion", 8)] == 0.0 and means[("fusion-bon", 4)] == -1.0
    json_path, csv_path = write_summary(summarize(records), tmp_path)
    assert json.loads(json_path.read_text())[0]["method"] == "single" and csv_path.read_text().startswith("method,")
    assert plot_summary(summarize(records), tmp_path / "q.png", "t").read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_evaluation_picks_up_where_it_stopped(tmp_path):
    backends = make_backends()
    PairedEvaluation(backends, TASK, DEVSET, n_values=(1, 4), output_dir=tmp_path).run(False)
    results = tmp_path / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:3]) + '\n{"id": "2:4", "exam')  # 3 records kept, a 4th cut mid-write
    calls_before = generator_calls(backends)
    records = PairedEvaluation(backends, TASK, DEVSET, n_values=(1, 4), output_dir=tmp_path).run(False)
    assert sorted(r["id"] for r in records) == sorted(f"{i}:{n}" for i in range(3) for n in (1, 4))
    assert generator_calls(backends) == calls_before, "the candidates come back from the store"


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small, large = rng.binomial(1, 0.6, 20).astype(float), rng.binomial(1, 0.6, 2000).astype(float)
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert low_s <= small.mean() <= high_s and low_l <= large.mean() <= high_l
    assert high_l - low_l < high_s - low_s


def pool_backends(failing_teacher: bool) -> Backends:
    config = FusionConfig.model_validate({
        "models": {"good": {"model": "scripted/good"}, "flaky": {"model": "scripted/flaky"},
                   "fusor": {"model": "scripted/fusor"}},
        "roles": {"generators": ["good", "flaky"], "fusor": "fusor"},
    })  # fmt: skip
    lms = {"good": scripted_lm(qa_responder, model="scripted/good"),
           "flaky": scripted_lm(qa_responder, model="scripted/flaky", fail=lambda call: failing_teacher),
           "fusor": scripted_lm(lambda call: {"comparison": "c", "response": "fused response"}, model="scripted/fusor")}
    return Backends(config, lms=lms)


def test_synth_writes_chat_examples_with_provenance_and_survives_a_failing_teacher(tmp_path):
    prompts = [{"id": f"p{i}", "prompt": f"Explain topic {i}."} for i in range(5)]
    program = pool_backends(failing_teacher=True).program("prompt -> response", n=4)
    counts = synthesize(program, prompts, tmp_path / "train.jsonl", concurrency=3, show_progress=False)
    assert counts == {"done": 5, "failed": 0, "skipped": 0}
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"p{i}" for i in range(5)]
    first = records[0]
    assert first["messages"][0]["role"] == "user" and first["messages"][1] == {"role": "assistant",
                                                                               "content": "fused response"}
    assert first["provenance"]["teachers"] == ["scripted/good"]
    assert len(first["provenance"]["report"]["candidates"]) == 2
    assert len(first["provenance"]["report"]["failures"]) == 2 and first["provenance"]["fusor"] == "scripted/fusor"
    again = synthesize(program, prompts, tmp_path / "train.jsonl", show_progress=False)
    assert again == {"done": 0, "failed": 0, "skipped": 5}


def test_synth_failures_go_to_the_errors_file_and_are_retried(tmp_path):
    config = FusionConfig.model_validate({"models": {"down": {"model": "scripted/down"}},
                                          "roles": {"generators": "down"}})  # fmt: skip
    down = Backends(config, lms={"down": scripted_lm(qa_responder, model="scripted/down", fail=lambda c: True)})
    counts = synthesize(down.program("prompt -> response", n=2), [{"prompt": "x"}], tmp_path / "t.jsonl",
                        show_progress=False)  # fmt: skip
    assert counts["failed"] == 1 and not (tmp_path / "t.jsonl").read_text()
    assert "SamplingError" in (tmp_path / "t.errors.jsonl").read_text()


def respond(call):
    return {"comparison": "c", "response": "fused"} if call.wants("comparison") else {"response": "a draft"}


def test_synth_killed_with_sigkill_resumes_and_writes_every_prompt_exactly_once(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(30)))
    output = tmp_path / "train.jsonl"
    with StubOpenAIServer(respond=respond, delay=0.15) as server:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"models": {"a": {"model": "openai/teacher-a", "api_base": server.api_base,
                                                           "cache": False}},
                                          "roles": {"generators": [{"model": "a", "count": 2}]}}))  # fmt: skip
        args = [sys.executable, "-m", "fusion_dspy.cli", "synth", "--config", str(config), "--prompts", str(prompts),
                "--output", str(output), "--concurrency", "3", "--quiet"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while (not output.exists() or len(output.read_text().splitlines()) < 5) and time.time() < deadline:
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait()
        written_before = len(output.read_text().splitlines())
        assert 5 <= written_before < 30, "the kill must land mid-run"
        with open(output, "a") as file:  # the worst case: a line cut in the middle by the kill
            file.write('{"id": "29", "messages": [{"role": "us')
        server.delay = 0.0  # slow only so the kill lands mid-run; nothing interrupts the rerun
        second = run_cli(args[3:])  # the resume is the subject here, not the process: in this one
        assert second.returncode == 0, second.stdout + second.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]  # every line is valid JSON
    assert sorted(int(r["id"]) for r in records) == list(range(30)), "every prompt exactly once"


def qa_respond(call):
    """Every sample answers 42 (right), the fusor 'fused'."""
    return {"comparison": "c", "answer": "fused"} if call.wants("comparison") else {"answer": "42"}


def eval_args(tmp_path: Path, server: StubOpenAIServer, devset: Path, n_values: str) -> list[str]:
    """``fusion-dspy eval`` of the toy task on ``devset`` against ``server`` into ``tmp_path/out``."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"models": {"m": {"model": "openai/m", "api_base": server.api_base,
                                                       "cache": False, "num_retries": 0}},
                                      "roles": {"generators": "m"}}))  # fmt: skip
    return ["eval", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset", str(devset),
            "--n-values", n_values, "--output-dir", str(tmp_path / "out"), "--quiet"]  # fmt: skip


def write_devset(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": "42"}) + "\n" for q in questions))
    return path


def test_eval_command_end_to_end(tmp_path, capsys):
    from fusion_dspy.cli import main

    devset = write_devset(tmp_path / "dev.jsonl", ["q0", "q1", "q2"])
    with StubOpenAIServer(respond=qa_respond) as server:
        assert main(eval_args(tmp_path, server, devset, "1,2")) == 0
    out = capsys.readouterr().out
    assert "Fusion-of-N" in out and "95% CI" in out
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"results.jsonl", "summary.json", "summary.csv",
                                                              "quality.png", "candidates"}


def test_eval_reports_only_the_n_values_asked_for_not_an_earlier_runs(tmp_path, capsys):
    """A rerun with other --n-values whose every result fails is an error, not the earlier run's table."""
    from fusion_dspy.cli import main

    devset = write_devset(tmp_path / "dev.jsonl", ["q0", "q1"])
    with StubOpenAIServer(respond=qa_respond) as server:
        assert main(eval_args(tmp_path, server, devset, "1")) == 0
    with StubOpenAIServer(respond=qa_respond, status=500) as down:
        assert main(eval_args(tmp_path, down, devset, "2")) == 2
    assert "No example could be evaluated" in capsys.readouterr().err


def test_eval_refuses_an_output_dir_another_evaluation_wrote(tmp_path, capsys):
    """Its records would be skipped as done and reported as this run's: another dev set, or a router added."""
    from fusion_dspy.cli import main
    from fusion_dspy.core.router import Router

    first, other = write_devset(tmp_path / "a.jsonl", ["q0", "q1"]), write_devset(tmp_path / "b.jsonl", ["x", "q1"])
    router = tmp_path / "router.json"
    with StubOpenAIServer(respond=qa_respond) as server:
        assert main(eval_args(tmp_path, server, first, "1")) == 0
        Router.fit(tmp_path / "out" / "results.jsonl").save(router)
        requests = len(server.requests)
        assert main(eval_args(tmp_path, server, other, "1")) == 2
        assert re.search(r"results\.jsonl:\d scored other inputs as example 0: the dev set", capsys.readouterr().err)
        assert main([*eval_args(tmp_path, server, first, "1"), "--router", str(router)]) == 2
        assert "was scored without a --router" in capsys.readouterr().err
        assert len(server.requests) == requests, "refused before any request"
        assert main(eval_args(tmp_path, server, first, "1")) == 0, "the same evaluation resumes"


def test_a_pairwise_metric_gets_the_single_sample_as_baseline(tmp_path):
    from fusion_dspy.workflows.task import Task

    seen = []

    def win_over_baseline(example, pred, trace=None):
        seen.append(example.baseline)
        return float(pred.answer != example.baseline)

    task = Task("pairwise", "question -> answer", metric=win_over_baseline, needs_baseline=True)
    records = PairedEvaluation(make_backends(), task, DEVSET[:1], n_values=(4,), output_dir=tmp_path).run(False)
    assert set(seen) == {"41"}, "the baseline is the example's first sample"
    assert records[0]["scores"]["single"] == 0.0 and records[0]["scores"]["bon"] == 1.0


@pytest.mark.embedded
def test_eval_smoke_on_the_embedded_model(tmp_path):
    from fusion_dspy.workflows.task import resolve_task

    task = resolve_task("factual_qa")
    records = PairedEvaluation(Backends(short_embedded_config()), task, task.load("test", 2, 0), n_values=(1, 2),
                               output_dir=tmp_path, num_threads=2).run(False)  # fmt: skip
    assert sorted(r["id"] for r in records) == ["0:1", "0:2", "1:1", "1:2"]
    assert all(0.0 <= r["scores"][m] <= 1.0 for r in records for m in ("single", "bon", "fusion", "oracle"))
    assert all(r["tokens"]["fusion"] > r["tokens"]["single"] > 0 for r in records)

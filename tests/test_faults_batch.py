"""The batch commands' rows of the fault table (docs/operations/faults.md), each named in its test column.

Everything runs against loopback stub servers; each subprocess is bounded by a deadline; nothing is timed.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from fusion_dspy.cli import main
from fusion_dspy.testing import StubOpenAIServer
from tests.cli_support import Output, cli_process, run_cli, wait_until

REPO = Path(__file__).resolve().parents[1]

BAD = "\ud800"  # a lone surrogate: half of a UTF-16 pair, not valid Unicode text


def respond(call):
    """Generators answer 'draft' (or echo a surrogate when asked to); the fusor answers 'fused'."""
    field = call.output_fields[-1]
    if call.wants("comparison"):
        return {"comparison": "c", field: "fused"}
    text = " ".join(str(value) for value in call.inputs.values())
    return {field: f"draft {BAD}" if "echo-bad" in text else "draft"}


def write_config(path: Path, **models: str) -> Path:
    """A config of named models at these api_bases; the first is the generator pool unless `teachers` says."""
    names = list(models)
    path.write_text(yaml.safe_dump({
        "models": {name: {"model": f"openai/{name}", "api_base": base, "cache": False, "num_retries": 0,
                          "batch_samples": False}
                   for name, base in models.items()},
        "roles": {"generators": names[0], "fusor": names[-1]}, "fusion": {"n": 2},
    }))  # fmt: skip
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_inputs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cli_process(*args), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


# --- Ctrl-C and SIGKILL in the middle of each batch command -------------------------------------------------------

def command(name: str, tmp_path: Path, server: StubOpenAIServer) -> tuple[list[str], Path, int, int]:
    """(arguments, the file whose records count, items in all, most requests one item in flight may still send)."""
    config = write_config(tmp_path / "config.yaml", stub=server.api_base)
    if name in ("run", "synth"):
        field = "question" if name == "run" else "prompt"
        inputs = write_inputs(tmp_path / "in.jsonl", [{"id": i, field: f"q{i}"} for i in range(30)])
        output = tmp_path / "out.jsonl"
        source = "--inputs" if name == "run" else "--prompts"
        extra = ["--concurrency", "2"] if name == "synth" else []
        per_item = 3 * (2 if name == "synth" else 1)  # 2 samples + the fusor, per item in flight
        return [name, "--config", str(config), source, str(inputs), "--output", str(output), "--quiet", *extra], \
            output, 30, per_item  # fmt: skip
    devset = write_inputs(tmp_path / "dev.jsonl", [{"question": f"q{i}", "answer": "draft"} for i in range(12)])
    task = ["--config", str(config), "--program", "tests.scripted_search:TASK", "--devset", str(devset),
            "--threads", "2", "--quiet"]  # fmt: skip
    if name == "eval":
        out = tmp_path / "eval"
        return ["eval", *task, "--n-values", "1,2", "--output-dir", str(out)], out / "results.jsonl", 24, 2 * 4
    study = f"sqlite:///{tmp_path / 'study.db'}"
    return ["optimize", *task, "--n-values", "2", "--methods", "select,fuse", "--sampler", "grid", "--trials", "2",
            "--storage", study, "--cache-dir", str(tmp_path / "store"), "--output", str(tmp_path / "tuned.json"),
            "--plot", str(tmp_path / "p.png")], tmp_path / "store", 2, 2 * 3  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
@pytest.mark.parametrize("name", ["run", "synth", "eval", "optimize"])
def test_a_signal_mid_batch_keeps_finished_work_and_a_rerun_completes_it(name, sig, tmp_path):
    with StubOpenAIServer(respond=respond, delay=0.2) as server:
        args, records, total, per_item = command(name, tmp_path, server)
        first = spawn(args)
        wait_until(lambda: len(server.requests) >= 12, process=first)
        first.send_signal(sig)
        at_signal = len(server.requests)
        output, _ = first.communicate(timeout=120)
        after = len(server.requests) - at_signal
        if sig == signal.SIGINT:
            assert first.returncode == 130, output
            assert "Traceback" not in output and "Run the same command again to continue" in output, output
            # No new item starts: only the ones in flight (2 at most) may still send their requests.
            assert after <= 2 * per_item, f"{after} requests after Ctrl-C"
        else:
            assert first.returncode == -signal.SIGKILL
        if name != "optimize":
            assert 0 < len(lines(records)) < total, "the signal must land mid-batch, after some records"
        server.delay = 0.0  # the stub was slow so the signal lands mid-batch; nothing interrupts the rerun
        rerun = run_cli(args)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    if name != "optimize":
        ids = [record["id"] for record in lines(records)]
        assert len(ids) == len(set(ids)) == total, "every item exactly once"


def test_a_second_ctrl_c_abandons_the_items_in_flight(tmp_path):
    with StubOpenAIServer(respond=respond, delay=60) as server:  # requests that would outlive the test's patience
        args, records, _, _ = command("synth", tmp_path, server)
        first = spawn(args)
        wait_until(lambda: server.flight.now >= 2, process=first)
        output_so_far = Output(first)
        first.send_signal(signal.SIGINT)
        wait_until(lambda: "Ctrl-C again to abandon" in output_so_far.text(), process=first,
                   output=output_so_far)  # the first notice
        first.send_signal(signal.SIGINT)
        first.wait(timeout=45)
        output = output_so_far.text(timeout=10)
        assert first.returncode == 130 and "Traceback" not in output, output
        assert server.flight.now >= 1, "the process left while its requests were still in flight"
        assert lines(records) == []


# --- Two processes at once --------------------------------------------------------------------------------------

def test_a_second_process_on_the_same_output_is_refused(tmp_path):
    release = threading.Event()  # the first process is held mid-batch until the second has tried (no race)

    def held(call):
        if call.inputs.get("question") != "q0":
            release.wait(timeout=120)
        return respond(call)

    with StubOpenAIServer(respond=held) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        inputs = write_inputs(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(10)])
        output = tmp_path / "out.jsonl"
        args = ["run", "--config", str(config), "--inputs", str(inputs), "--output", str(output), "--quiet"]
        first = spawn(args)
        wait_until(lambda: len(lines(output)) >= 1, process=first)
        try:
            second = run_cli(args)
        finally:
            release.set()
        first_output, _ = first.communicate(timeout=300)
    assert second.returncode == 2 and "being written by another process" in second.stderr, second.stderr
    assert first.returncode == 0, first_output
    assert sorted(record["id"] for record in lines(output)) == sorted(str(i) for i in range(10))
    assert len(server.requests) == 10 * 3, "every item paid once"


def test_two_processes_share_one_candidate_store(tmp_path):
    with StubOpenAIServer(respond=respond, delay=0.05) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        devset = write_inputs(tmp_path / "dev.jsonl", [{"question": f"q{i}", "answer": "draft"} for i in range(3)])

        def optimize(study: str) -> list[str]:
            return ["optimize", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset",
                    str(devset), "--n-values", "1,2", "--methods", "select", "--sampler", "grid", "--trials", "2",
                    "--storage", f"sqlite:///{tmp_path / study}.db", "--cache-dir", str(tmp_path / "store"),
                    "--output", str(tmp_path / f"{study}.json"), "--plot", str(tmp_path / f"{study}.png"),
                    "--quiet"]  # fmt: skip

        workers = [spawn(optimize("a")), spawn(optimize("b"))]
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], outputs
        drawn = len(server.requests)
        assert 3 * 2 <= drawn <= 2 * 3 * 2, "each sample drawn once, or at most once by each process"
        third = run_cli(optimize("c"))
        assert third.returncode == 0, third.stdout + third.stderr
        assert len(server.requests) == drawn, "a third process finds every sample in the shared store"


# --- Bad input lines and bad replies -----------------------------------------------------------------------------

def test_a_lone_surrogate_fails_its_input_item_and_is_replaced_in_a_reply(tmp_path):
    with StubOpenAIServer(respond=respond) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        inputs = write_inputs(tmp_path / "in.jsonl", [{"question": "fine"}, {"question": f"broken {BAD}"},
                                                      {"question": "echo-bad"}, {"question": "also fine"}])
        output = tmp_path / "out.jsonl"
        args = ["run", "--config", str(config), "--inputs", str(inputs), "--output", str(output), "--method",
                "select", "--quiet"]  # fmt: skip
        assert main(args) == 0
        assert len(server.requests) == 3 * 2, "the broken input is never sent"
        assert sorted(r["id"] for r in lines(output)) == ["0", "2", "3"]
        assert next(r for r in lines(output) if r["id"] == "2")["answer"] == f"draft {BAD}", "kept as it came"
        [failed] = lines(tmp_path / "out.errors.jsonl")
        assert failed["id"] == "1" and "not valid Unicode" in failed["error"]
        assert main(args) == 0, "a rerun does not stop at it"
        assert len(server.requests) == 3 * 2
        # Fused: the fusor is shown the reply's surrogate as U+FFFD (DSPy would refuse to send it), so it is fused.
        prompts = write_inputs(tmp_path / "p.jsonl", [{"prompt": f"broken {BAD}"}, {"prompt": "echo-bad"},
                                                      {"prompt": "fine"}])  # fmt: skip
        train = tmp_path / "train.jsonl"
        before = len(server.requests)
        assert main(["synth", "--config", str(config), "--prompts", str(prompts), "--output", str(train),
                     "--quiet"]) == 0  # fmt: skip
        assert sorted(r["id"] for r in lines(train)) == ["1", "2"]
        fused = next(body for body in server.requests[before:] if "echo-bad" in body["messages"][-1]["content"]
                     and "comparison" in body["messages"][0]["content"])  # fmt: skip
        assert "draft \ufffd" in fused["messages"][-1]["content"]
        [failed] = lines(tmp_path / "train.errors.jsonl")
        assert failed["id"] == "0" and "not valid Unicode" in failed["error"], "only the broken input fails"


def test_a_reply_cut_short_is_marked_in_the_batch_records(tmp_path, capsys):
    """The commands quiet DSPy's own warnings; the cut replies are still noticed, and said in the records."""
    def cut(call):
        return "stop" if call.wants("comparison") else "length"

    with StubOpenAIServer(respond=respond, finish_reason=cut) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        inputs = write_inputs(tmp_path / "in.jsonl", [{"question": "q0"}])
        prompts = write_inputs(tmp_path / "p.jsonl", [{"prompt": "p0"}])
        assert main(["run", "--config", str(config), "--inputs", str(inputs), "--output", str(tmp_path / "o.jsonl"),
                     "--quiet"]) == 0  # fmt: skip
        assert main(["synth", "--config", str(config), "--prompts", str(prompts), "--output",
                     str(tmp_path / "t.jsonl"), "--quiet"]) == 0  # fmt: skip
    [record] = lines(tmp_path / "o.jsonl")
    assert record["answer"] == "fused" and sum(c["truncated"] for c in record["report"]["candidates"]) == 2
    [example] = lines(tmp_path / "t.jsonl")
    assert sum(c["truncated"] for c in example["provenance"]["report"]["candidates"]) == 2
    assert "LM response was truncated" not in capsys.readouterr().err, "DSPy's own warning stays quiet"


def test_a_missing_misspelt_or_null_field_fails_that_item_before_any_request(tmp_path):
    with StubOpenAIServer(respond=respond) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        rows = [{"questoin": "typo"}, {"question": None}, {"question": "fine"}]
        output = tmp_path / "out.jsonl"
        assert main(["run", "--config", str(config), "--inputs", str(write_inputs(tmp_path / "in.jsonl", rows)),
                     "--output", str(output), "--quiet"]) == 0  # fmt: skip
        assert len(server.requests) == 3, "only the good item is paid for"
        errors = {r["id"]: r["error"] for r in lines(tmp_path / "out.errors.jsonl")}
        assert "lacks the input field 'question' (did you mean 'questoin'?" in errors["0"]
        assert "'question' is null" in errors["1"] and [r["id"] for r in lines(output)] == ["2"]
        train = tmp_path / "train.jsonl"
        prompts = write_inputs(tmp_path / "p.jsonl", [{"promt": "typo"}, {"prompt": "fine"}])
        assert main(["synth", "--config", str(config), "--prompts", str(prompts), "--output", str(train),
                     "--quiet"]) == 0  # fmt: skip
        [record] = lines(train)  # no training example with an empty user turn
        assert record["id"] == "1" and record["messages"][0]["content"].strip()


@pytest.mark.parametrize("row, message", [
    ({"questoin": "2+2?", "answer": "4"}, "dev.jsonl:3: lacks the input field 'question' (did you mean 'questoin'?"),
    ({"question": None, "answer": "4"}, "dev.jsonl:3: the input field 'question' is null"),
    ({"question": f"2+2{BAD}", "answer": "4"}, "dev.jsonl:3: the input field 'question' holds text that is not valid"),
    ({"question": "2+2?", "answer": None}, "dev.jsonl:3: the output field 'answer' is null"),
    ({"question": "2+2?", "answer": f"4{BAD}"}, "dev.jsonl:3: the output field 'answer' holds text that is not valid"),
])  # fmt: skip
def test_a_devset_example_with_a_missing_null_or_broken_field_is_an_error_naming_its_line(row, message, tmp_path):
    from fusion_dspy.errors import FusionDSPyError
    from tests.scripted_search import TASK

    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(FusionDSPyError, match=re.escape(message)) as raised:
        TASK.read_examples(path)
    assert "(task 'toy': question -> answer)" in str(raised.value)


@pytest.mark.parametrize("rows, named", [
    ([{"id": 0, "question": "a"}, {"id": "0", "question": "b"}], ["in.jsonl:1", "in.jsonl:2"]),
    ([{"question": "a"}, {"question": "b"}, {"id": "0", "question": "c"}], ["in.jsonl:1 (no id", "in.jsonl:3"]),
])  # fmt: skip
def test_colliding_ids_are_an_error_naming_the_lines(rows, named, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in.jsonl", rows)
    assert main(["run", "--inputs", str(inputs), "--output", str(tmp_path / "out.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in named) and "same id '0'" in err, err
    assert not (tmp_path / "out.jsonl").exists(), "nothing started"


# --- Outages ---------------------------------------------------------------------------------------------------

def test_run_retries_the_items_that_failed(tmp_path, capsys):
    with StubOpenAIServer(respond=respond, status=503) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        inputs = write_inputs(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(3)])
        output = tmp_path / "out.jsonl"
        args = ["run", "--config", str(config), "--inputs", str(inputs), "--output", str(output), "--quiet"]
        assert main(args) == 1
        assert "0 done, 3 failed (in" in " ".join(capsys.readouterr().err.split()), "where the failures are"
        assert not lines(output) and len(lines(tmp_path / "out.errors.jsonl")) == 3
        server.status = 200
        assert main(args) == 0
        assert "3 done, 0 failed, 0 already there" in " ".join(capsys.readouterr().err.split()), "nothing to retry"
        assert sorted(r["id"] for r in lines(output)) == ["0", "1", "2"]


def test_the_errors_file_keeps_only_the_items_still_failing_after_a_rerun(tmp_path):
    def answer(call):
        return "no fields here" if "q2" in call.user and not call.wants("comparison") else respond(call)

    with StubOpenAIServer(respond=answer, status=503) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        inputs = write_inputs(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(3)])
        output, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
        args = ["run", "--config", str(config), "--inputs", str(inputs), "--output", str(output), "--quiet"]
        assert main(args) == 1
        assert sorted(r["id"] for r in lines(errors)) == ["0", "1", "2"]
        server.status = 200  # q0 and q1 now succeed; q2's samples cannot be parsed
        assert main(args) == 0
        assert sorted(r["id"] for r in lines(output)) == ["0", "1"]
        [still] = lines(errors)
        assert still["id"] == "2" and "SamplingError" in still["error"], "this run's failure, not the old one"
        server.respond = respond  # q2 can be parsed now too
        assert main(args) == 0
        assert sorted(r["id"] for r in lines(output)) == ["0", "1", "2"] and lines(errors) == []
        # eval: an example whose sampling failed is an error line per (example, N), pruned once they are scored.
        server.status = 503
        devset = write_inputs(tmp_path / "dev.jsonl", [{"question": "q0", "answer": "draft"}])
        out = tmp_path / "eval"
        evaluate = ["eval", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset",
                    str(devset), "--n-values", "1,2", "--output-dir", str(out), "--quiet"]  # fmt: skip
        assert main(evaluate) == 2
        assert sorted(r["id"] for r in lines(out / "results.errors.jsonl")) == ["0:1", "0:2"]
        server.status = 200
        assert main(evaluate) == 0 and lines(out / "results.errors.jsonl") == []


def test_the_errors_file_is_pruned_only_when_a_run_ends_so_a_crash_loses_no_line(tmp_path):
    from fusion_dspy.workflows.jsonl import ResultsLog, errors_path

    output = tmp_path / "out.jsonl"
    errors_path(output).write_text('{"id": "a", "error": "old"}\n{"id": "b", "error": "old"}\n')
    log = ResultsLog(output)
    log.write({"id": "a", "answer": "now it works"})
    assert [r["id"] for r in lines(errors_path(output))] == ["a", "b"], "mid-run (a crash here): every line kept"
    log.close()
    assert [r["id"] for r in lines(errors_path(output))] == ["b"], "at the end: only what still fails"
    assert not list(tmp_path.glob("*.tmp")), "the rewrite leaves no temporary file"


def test_synth_starts_with_the_teachers_it_can_reach(tmp_path, capsys):
    with StubOpenAIServer(respond=respond) as server:
        down = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "models": {name: {"model": f"openai/{name}", "api_base": base, "cache": False, "num_retries": 0,
                          "batch_samples": False}
                       for name, base in (("up", server.api_base), ("down", down))},
            "roles": {"generators": ["up", "down"], "fusor": "up"},
        }))  # fmt: skip
        prompts = write_inputs(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
        train = tmp_path / "train.jsonl"
        args = ["synth", "--config", str(path), "--prompts", str(prompts), "--output", str(train), "--quiet"]
        assert main(args) == 0
        assert "teacher 'down' dropped from the pool" in capsys.readouterr().err
        assert [r["provenance"]["teachers"] for r in lines(train)] == [["openai/up"], ["openai/up"]]
        path.write_text(path.read_text().replace(server.api_base, down))
        assert main([*args[:-2], str(tmp_path / "t2.jsonl"), "--quiet"]) == 2, "no teacher at all: an error"


def test_eval_does_not_score_a_fusor_outage_and_a_rerun_scores_it(tmp_path, capsys):
    with StubOpenAIServer(respond=respond) as generator, StubOpenAIServer(respond=respond, status=503) as fusor:
        config = write_config(tmp_path / "config.yaml", gen=generator.api_base, fusor=fusor.api_base)
        devset = write_inputs(tmp_path / "dev.jsonl", [{"question": f"q{i}", "answer": "draft"} for i in range(2)])
        out = tmp_path / "eval"
        args = ["eval", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset", str(devset),
                "--n-values", "1,2", "--output-dir", str(out), "--quiet"]  # fmt: skip
        assert main(args) == 2, "nothing could be scored: an error, not a table of zeros"
        assert not lines(out / "results.jsonl")
        assert all("unavailable" in r["error"] for r in lines(out / "results.errors.jsonl"))
        drawn = len(generator.requests)
        fusor.status = 200
        assert main(args) == 0
        records = lines(out / "results.jsonl")
        assert len(records) == 4 and all(r["scores"]["fusion"] == 0.0 or r["scores"]["fusion"] == 1.0
                                         for r in records)  # fmt: skip
        assert all(not r["errors"] for r in records), "scored for real, not as an outage"
        assert len(generator.requests) == drawn, "the candidates come back from the store"
        assert lines(out / "results.errors.jsonl") == [], "nothing is still failing"
    capsys.readouterr()


def test_optimize_fails_a_trial_on_a_fusor_outage_instead_of_scoring_it_0_and_a_rerun_retries_it(tmp_path, capsys):
    import optuna
    from optuna.trial import TrialState

    with StubOpenAIServer(respond=respond) as generator, StubOpenAIServer(respond=respond, status=503) as fusor:
        config = write_config(tmp_path / "config.yaml", gen=generator.api_base, fusor=fusor.api_base)
        devset = write_inputs(tmp_path / "dev.jsonl", [{"question": f"q{i}", "answer": "draft"} for i in range(2)])
        storage = f"sqlite:///{tmp_path / 'study.db'}"
        args = ["optimize", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset",
                str(devset), "--n-values", "2", "--methods", "select,fuse", "--sampler", "grid", "--trials", "2",
                "--threads", "1", "--storage", storage, "--cache-dir", str(tmp_path / "store"), "--output",
                str(tmp_path / "tuned.json"), "--plot", str(tmp_path / "p.png"), "--quiet"]  # fmt: skip
        capsys.readouterr()
        assert main(args) == 1, "incomplete: a trial could not be scored"
        err = " ".join(capsys.readouterr().err.split())
        assert "1 trial could not be scored because a model was unavailable" in err and "rerun" in err, err
        study = optuna.load_study(study_name="fusion-toy", storage=storage)
        by_method = {t.params["method"]: t for t in study.trials}
        assert by_method["fuse"].state == TrialState.FAIL, "an outage is not a score of 0"
        assert "unavailable" in by_method["fuse"].user_attrs["outage"]
        assert by_method["select"].state == TrialState.COMPLETE
        assert len(fusor.requests) == 1, "no new dev example starts once the fusor is known to be down"
        fusor.status = 200
        assert main(args) == 0
        study = optuna.load_study(study_name="fusion-toy", storage=storage)
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["method"] for t in complete) == ["fuse", "select"], "the failed trial is retried"
    capsys.readouterr()


def test_batch_commands_keep_no_lm_history(tmp_path, monkeypatch):
    """DSPy keeps every request and response by default: a long batch grew without bound (benchmarks/soak.py).
    The command's process keeps none while the command runs; back in the caller, DSPy's settings are as they were."""
    import gc

    import dspy

    from fusion_dspy.workflows import runner

    seen = {}
    run_items = runner.run_items

    def watched(*args, **kwargs):  # inside the command, before its items run
        lm = dspy.LM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm", cache=False)
        dspy.Predict("question -> answer")(question="q", lm=lm)
        seen.update(history=dspy.settings.disable_history, trace=dspy.settings.trace, gc=gc.isenabled(),
                    frozen=gc.get_freeze_count() > 0, recorded=list(lm.history))  # fmt: skip
        return run_items(*args, **kwargs)

    monkeypatch.setattr(runner, "run_items", watched)
    with StubOpenAIServer(respond=respond) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        inputs = write_inputs(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(3)])
        assert not dspy.settings.disable_history and dspy.settings.trace == [] and not gc.get_freeze_count()
        assert main(["run", "--config", str(config), "--inputs", str(inputs), "--output", str(tmp_path / "o.jsonl"),
                     "--quiet"]) == 0  # fmt: skip
    assert seen["history"]
    assert seen["trace"] is None, "no trace either: it held every prediction (benchmarks/soak.py)"
    assert seen["gc"] and seen["frozen"], "imports frozen, the collector on again"
    assert seen["recorded"] == [], "nothing recorded"
    assert not dspy.settings.disable_history and dspy.settings.trace == [] and not gc.get_freeze_count(), \
        "all put back when the command returns"


def test_a_fallback_pick_after_a_fusor_outage_is_not_scored_as_fusion():
    """With fallback="select", a fusor outage returns the vote's pick with its cause: not fusion's score."""
    import dspy

    from fusion_dspy.core.prediction import FusionPrediction
    from fusion_dspy.core.report import Failure, FallbackReport, FusionReport
    from fusion_dspy.workflows.scoring import StageUnavailable, score_stage
    from tests.scripted_search import TASK

    class FellBack(dspy.Module):
        stage_name = "fuse"

        def __init__(self, cause):
            super().__init__()
            self.cause = cause

        def forward(self, candidates, **inputs):
            report = FusionReport("fuse", fallback=FallbackReport(Failure.of(self.cause, "fuse"), "majority", 0))
            return FusionPrediction(answer="42", candidates=[], report=report)

    example = dspy.Example(question="q", answer="42").with_inputs("question")
    with pytest.raises(StageUnavailable, match="unavailable"):
        score_stage(TASK, FellBack(dspy.LMServerError("503 from the fusor")), example, [], "example 0, N=2")
    unparsable = dspy.AdapterParseError("ChatAdapter", dspy.Signature("q -> a"), "garbage", "no answer field")
    scored = score_stage(TASK, FellBack(unparsable), example, [], "example 0, N=2")
    assert scored.score == 1.0, "a fallback after bad output is what the user gets: scored"


def test_litellm_is_imported_with_the_collector_off_and_frozen_and_the_collector_restored(monkeypatch):
    """A command's start and exit are ~2 s shorter (benchmarks/workers.py); the collector is as it was after.
    litellm is imported only when a model needs it (fusion_dspy._litellm), no longer when imports are frozen."""
    import gc
    import importlib

    import litellm

    from fusion_dspy import _litellm
    from fusion_dspy.workflows import batch

    seen = []

    def watching(name):
        assert name == "litellm"
        seen.append(gc.isenabled())
        return litellm  # as imported: the test process keeps its one litellm

    monkeypatch.delitem(sys.modules, "litellm")
    monkeypatch.setattr(importlib, "import_module", watching)
    batch.freeze_imports()
    assert seen == [], "freezing the imports imports no litellm"
    frozen = gc.get_freeze_count()
    assert _litellm.import_litellm() is litellm and seen == [False], "litellm is imported with the collector off"
    assert gc.isenabled() and frozen > 0 and gc.get_freeze_count() >= frozen
    gc.disable()
    try:
        batch.freeze_imports()
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()


def test_run_input_twice_runs_both_and_the_same_input_once(tmp_path):
    """--input names the item by its text: a second question is a new item, the same question is already there."""
    with StubOpenAIServer(respond=respond) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        output = tmp_path / "o.jsonl"
        for question in ("first question", "second question", "first question"):
            assert main(["run", "--config", str(config), "--input", question, "--output", str(output),
                         "--quiet"]) == 0  # fmt: skip
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["inputs"]["question"] for r in records] == ["first question", "second question"]


def test_an_output_line_without_an_id_is_named_not_a_traceback(tmp_path, capsys):
    """--output pointed at the inputs file (or an edited one): the error names the file and line."""
    output = tmp_path / "o.jsonl"
    output.write_text('{"id": "a", "answer": "x"}\n{"question": "no id here"}\n')
    with StubOpenAIServer(respond=respond) as server:
        config = write_config(tmp_path / "config.yaml", stub=server.api_base)
        assert main(["run", "--config", str(config), "--input", "q", "--output", str(output), "--quiet"]) == 2
    assert f"{output}:2: a line without an \"id\"" in capsys.readouterr().err
    assert server.requests == [], "refused before any request"


def test_a_crash_while_optimize_writes_tuned_json_keeps_the_last_one(tmp_path, monkeypatch):
    import dspy

    import fusion_dspy as fd
    from fusion_dspy.optimizers.tuned import save_tuned
    from fusion_dspy.testing import scripted_lm

    program = fd.FusionOfN(dspy.Predict("question -> answer"), n=2, lm=scripted_lm(lambda call: {"answer": "4"}))
    path = save_tuned(program, {"n": 2, "temperature": 0.7, "method": "fuse"}, tmp_path / "tuned.json")
    before = path.read_text()

    def crash(*args):  # the process dies after the new file is written, before it replaces the old one
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_tuned(program, {"n": 4, "temperature": 0.9, "method": "fuse"}, path)
    assert path.read_text() == before, "the last tuned.json is whole, not half of the new one"


def test_a_key_an_upstream_echoes_reaches_neither_the_errors_file_nor_the_log(tmp_path, monkeypatch, capsys, caplog):
    import logging

    key = "sk-batch-echo-0123456789abcdef"
    monkeypatch.setenv("ECHO_KEY", key)
    factory = logging.getLogRecordFactory()
    with StubOpenAIServer(respond=respond, status=401, echo_authorization=True) as server:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "models": {"m": {"model": "openai/m", "api_base": server.api_base, "api_key_env": "ECHO_KEY",
                             "cache": False, "num_retries": 0, "batch_samples": False}},
            "roles": {"generators": "m"}, "fusion": {"n": 2}}))  # fmt: skip
        try:
            with caplog.at_level(logging.WARNING):
                code = main(["-v", "run", "--config", str(config), "--input", "q", "--output",
                             str(tmp_path / "o.jsonl"), "--quiet"])  # fmt: skip
        finally:
            logging.setLogRecordFactory(factory)
    errors = (tmp_path / "o.errors.jsonl").read_text()
    assert code == 1 and key in server.authorizations[0] and "(sent Bearer ***)" in errors
    assert key not in errors and key not in capsys.readouterr().err and key not in caplog.text
    assert "(sent Bearer ***)" in caplog.text, "the failure is logged, masked"


def test_a_full_disk_while_rewriting_a_file_keeps_the_old_one_its_mode_and_no_stray_copy(tmp_path, monkeypatch):
    from fusion_dspy.workflows.jsonl import write_atomically

    path = tmp_path / "tuned.json"
    path.write_text("old")
    path.chmod(0o644)
    write_atomically(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o644, "a rewrite keeps the file's mode"

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, "newer")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["tuned.json"]

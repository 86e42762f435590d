"""`fusion-dspy optimize` as a user runs it: end to end, killed and resumed, and two workers on one study."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from fusion_dspy.cli import main
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.testing import StubOpenAIServer
from tests.cli_support import run_cli

REPO = Path(__file__).resolve().parents[1]


def respond(call):
    return {"comparison": "c", "answer": "42"} if call.wants("comparison") else {"answer": "42"}


def generator_requests(server) -> int:
    return sum("`comparison`" not in body["messages"][0]["content"] for body in server.requests)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": "42"}) + "\n"
                                                for i in range(2)))  # fmt: skip
    return tmp_path


def write_config(workdir, server) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"stub": {"model": "openai/stub", "api_base": server.api_base,
                                                        "num_retries": 0, "cache": False,
                                                        "batch_samples": False}},  # the tests count requests
                                    "roles": {"generators": "stub"}}))  # fmt: skip
    return path


def arguments(workdir, config, trials, extra=()):
    return ["optimize", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset",
            str(workdir / "dev.jsonl"), "--trials", str(trials), "--storage", f"sqlite:///{workdir / 'study.db'}",
            "--cache-dir", str(workdir / "store"), "--output", str(workdir / "tuned.json"),
            "--plot", str(workdir / "plot.png"), "--quiet", *extra]  # fmt: skip


def spawn(args, workdir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "fusion_dspy.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def complete_trials(workdir, name="fusion-toy"):
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'study.db'}")
    except KeyError:
        return []
    return study.get_trials(states=(TrialState.COMPLETE,))


def test_optimize_end_to_end(workdir, capsys):
    with StubOpenAIServer(respond=respond) as server:
        assert main(arguments(workdir, write_config(workdir, server), 6, ["--sampler", "grid", "--methods",
                                                                          "select", "--n-values", "1,2"])) == 0
    err = capsys.readouterr().err
    assert "complete trials" in err and "best:" in err
    tuned = json.loads((workdir / "tuned.json").read_text())
    assert tuned["settings"]["method"] == "select" and tuned["settings"]["n"] in (1, 2)
    assert tuned["settings"]["program"] == "tests.scripted_search:TASK"  # so `serve --tuned` rebuilds its module
    assert (workdir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(complete_trials(workdir)) == 6


def test_killed_study_resumes_without_losing_work(workdir):
    with StubOpenAIServer(respond=respond, delay=0.4) as server:
        config = write_config(workdir, server)
        args = arguments(workdir, config, 10, ["--methods", "select"])
        worker = spawn(args, workdir)
        deadline = time.time() + 120
        while len(complete_trials(workdir)) < 2 and time.time() < deadline and worker.poll() is None:
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        before = {t.number: t.values for t in complete_trials(workdir)}
        assert len(before) >= 2, "the first run should have finished some trials before the kill"
        drawn_before, stored_before = generator_requests(server), len(CandidateStore(workdir / "store"))
        server.delay = 0.0
        rerun = run_cli(args)  # the resume is the subject here, not the process: in this one
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = {t.number: t.values for t in complete_trials(workdir)}
    assert len(after) >= 10
    assert all(after[number] == values for number, values in before.items()), "finished trials are kept"
    assert stored_before > 0 and drawn_before >= stored_before
    # The rerun draws only the samples the store lacks: at most 8 samples x 2 questions in all.
    assert generator_requests(server) - drawn_before <= 8 * 2 - stored_before
    assert len(CandidateStore(workdir / "store")) <= 8 * 2


def test_two_workers_share_one_study(workdir):
    with StubOpenAIServer(respond=respond, delay=0.2) as server:
        args = arguments(workdir, write_config(workdir, server), 8, ["--methods", "select,fuse"])
        workers = [spawn(args, workdir) for _ in range(2)]
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = complete_trials(workdir)
    assert 8 <= len(trials) <= 9  # both stop at 8; a trial each may be under way when the 8th completes
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers must have run trials"

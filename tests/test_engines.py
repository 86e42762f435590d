"""One suite every batch engine passes (``workflows.engine.Engine``): this process, worker processes and Ray run the
same job into the same records, error records and counts, and resume alike, against one loopback stub server.
The reference is the library path (``run_batch``, ``synthesize``, ``PairedEvaluation.run``): a program built in
this process, driven synchronously."""

import json
import os
from pathlib import Path

import dspy
import pytest

from fusion_dspy.backends import load_config
from fusion_dspy.testing import StubOpenAIServer
from fusion_dspy.workflows.batch import run_batch
from fusion_dspy.workflows.engine import Outcome
from fusion_dspy.workflows.evaluation import PairedEvaluation
from fusion_dspy.workflows.jobs import ConfigText, EvalJob, RunJob, SynthJob
from fusion_dspy.workflows.local_engine import LocalEngine
from fusion_dspy.workflows.ray_engine import RayEngine
from fusion_dspy.workflows.runner import run_examples, run_items
from fusion_dspy.workflows.synth import synthesize
from fusion_dspy.workflows.task import MetricError, Task
from fusion_dspy.workflows.worker_engine import WorkerEngine
from tests.engine_support import by_id, model, qa_reply, reply, untimed, write_config
from tests.scripted_search import TASK

REPO = Path(__file__).resolve().parents[1]
ENGINES = ["local", "workers", "ray"]


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param == "ray":
        request.getfixturevalue("ray_case")
        return RayEngine(actors=1, in_flight=4)
    return {"local": LocalEngine(4), "workers": WorkerEngine(workers=2, concurrency=4)}[request.param]


def untimed_records(path: Path) -> dict[str, dict]:
    return untimed(by_id(path))


def asked(server: StubOpenAIServer, text: str) -> int:
    return sum(text in json.dumps(body) for body in server.requests)


def test_run_writes_the_records_errors_and_counts_of_the_library_and_resumes(tmp_path, engine):
    items = [{"id": "a", "prompt": "prompt a"}, {"prompt": "poison prompt"}, {"id": 7, "prompt": "prompt b"},
             {"id": "null", "prompt": None}, {"id": "done", "prompt": "prompt done"}, {"prompt": "prompt c"}]
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({"id": "done", "response": "earlier"}) + "\n")  # an earlier run's record
    with StubOpenAIServer(reply) as server:
        config = write_config(tmp_path / "c.yaml", {"m": model("m", server.api_base)}, "m")
        job = RunJob(ConfigText.read(config), "prompt -> response", n=2)
        reference = run_batch(load_config(config).program("prompt -> response", n=2), items,
                              tmp_path / "reference.jsonl", ["prompt"], show_progress=False)  # fmt: skip
        by_reference = asked(server, "prompt done")
        counts = run_items(job, items, ["prompt"], output, engine, show_progress=False)
        assert asked(server, "prompt done") == by_reference, "a done id is skipped, never asked for"
        again = run_items(job, items, ["prompt"], output, engine, show_progress=False)
    assert reference == {"done": 4, "failed": 2, "skipped": 0} and counts == {"done": 3, "failed": 2, "skipped": 1}
    assert again == {"done": 0, "failed": 2, "skipped": 4}, "a rerun skips the done ids and retries the failed"
    records = untimed_records(output)
    assert sorted(records) == ["5", "7", "a", "done"], "ids: the item's own, else its position"
    reference_records = untimed_records(tmp_path / "reference.jsonl")
    assert {i: records[i] for i in ("5", "7", "a")} == {i: reference_records[i] for i in ("5", "7", "a")}
    errors = by_id(tmp_path / "out.errors.jsonl")
    assert errors == by_id(tmp_path / "reference.errors.jsonl") and sorted(errors) == ["1", "null"]
    assert errors["1"]["error"].startswith("SamplingError")
    assert errors["null"]["error"] == "InputProblem: item null: the input field 'prompt' is null; give it a value"


def test_synth_writes_the_training_records_of_the_library(tmp_path, engine):
    prompts = [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(6)] + [{"id": "bad", "prompt": "poison"}]
    with StubOpenAIServer(reply) as server:
        config = write_config(tmp_path / "pool.yaml", {"a": model("a", server.api_base),
                                                       "b": model("b", server.api_base)}, ["a", "b"])  # fmt: skip
        program = load_config(config).program("prompt -> response", method="fuse", n=4)
        reference = synthesize(program, prompts, tmp_path / "reference.jsonl", show_progress=False)
        job = SynthJob(ConfigText.read(config), n=4)
        counts = run_items(job, prompts, ["prompt"], tmp_path / "train.jsonl", engine, show_progress=False)
    assert counts == reference == {"done": 6, "failed": 1, "skipped": 0}
    assert untimed_records(tmp_path / "train.jsonl") == untimed_records(tmp_path / "reference.jsonl")
    assert by_id(tmp_path / "train.jsonl")["p0"]["provenance"]["teachers"] == ["openai/a", "openai/b"]
    assert list(by_id(tmp_path / "train.errors.jsonl")) == ["bad"]


def examples(count: int) -> list[dspy.Example]:
    return [dspy.Example(question=f"question {i} ?", answer="42").with_inputs("question") for i in range(count)]


def test_eval_writes_the_records_of_the_library_and_resumes(tmp_path, engine):
    with StubOpenAIServer(qa_reply) as server:
        config = write_config(tmp_path / "qa.yaml", {"m": model("m", server.api_base)}, "m")
        PairedEvaluation(load_config(config), TASK, examples(4), (1, 2), tmp_path / "reference").run(False)
        job = EvalJob.of(ConfigText.read(config), "tests.scripted_search:TASK", examples(4), (1, 2), tmp_path / "e")
        (tmp_path / "e").mkdir()
        done = by_id(tmp_path / "reference" / "results.jsonl")["0:1"]  # one (example, N) done already
        (tmp_path / "e" / "results.jsonl").write_text(json.dumps(done) + "\n")
        records = run_examples(job, job.todo, job.output_dir, engine, show_progress=False)
        asked_for = len(server.requests)
        assert run_examples(job, job.todo, job.output_dir, engine, show_progress=False) == records
        assert len(server.requests) == asked_for, "a rerun finds every (example, N) done"
    assert sorted(r["id"] for r in records) == sorted(f"{i}:{n}" for i in range(4) for n in (1, 2))
    reference = untimed_records(tmp_path / "reference" / "results.jsonl")
    assert untimed_records(tmp_path / "e" / "results.jsonl") == reference


def broken_metric(example, prediction, trace=None):
    raise ZeroDivisionError("the metric's own bug")


BROKEN = Task("broken", "question -> answer", metric=broken_metric)


def test_a_broken_metric_stops_the_evaluation_on_every_engine(tmp_path, engine):
    with StubOpenAIServer(qa_reply) as server:
        config = write_config(tmp_path / "qa.yaml", {"m": model("m", server.api_base)}, "m")
        job = EvalJob.of(ConfigText.read(config), "tests.test_engines:BROKEN", examples(12), (1,), tmp_path / "e")
        with pytest.raises(MetricError, match="the metric's own bug"):
            run_examples(job, job.todo, job.output_dir, engine, show_progress=False)


class Lost:
    """A job whose every row raises past its own handling: the engine records ``failed``'s outcome instead."""

    label = "lost"

    def build(self):
        def row(item_id, data):
            raise RuntimeError(f"row {item_id} lost")
            yield

        return row

    def failed(self, item_id, data, error):
        return Outcome(errors=[{"id": item_id, "error": f"{type(error).__name__}: {error}"}])


def test_a_row_that_raises_becomes_its_jobs_failed_record(tmp_path, engine):
    counts = run_items(Lost(), [{"x": i} for i in range(3)], ["x"], tmp_path / "out.jsonl", engine,
                       show_progress=False)  # fmt: skip
    assert counts == {"done": 0, "failed": 3, "skipped": 0}
    errors = by_id(tmp_path / "out.errors.jsonl")
    assert sorted(errors) == ["0", "1", "2"] and errors["2"]["error"].endswith("row 2 lost")


def test_a_killed_driver_takes_its_own_local_ray_down_with_it(tmp_path):
    """``--engine ray`` without ``--address`` starts a Ray instance of its own: killed (``kill -9``), the driver
    takes every process of it along (the raylet's agents and the actors too), and no actor sends another request.
    A driver joined to a cluster with ``--address`` leaves it up (tests/test_ray_engine.py reruns on it)."""
    import subprocess
    import sys
    import threading
    import time

    import psutil

    from tests.engine_support import lines

    release = threading.Event()
    release.set()

    def held(call) -> float:  # answered 0.3 s after it arrives, once released
        release.wait(timeout=120)
        return 0.3

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(200)))
    output = tmp_path / "train.jsonl"
    with StubOpenAIServer(reply, delay=held) as server:
        config = write_config(tmp_path / "c.yaml", {"a": model("a", server.api_base)}, [{"model": "a", "count": 2}])
        environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        driver = subprocess.Popen([sys.executable, "-m", "fusion_dspy.cli", "synth", "--config", str(config),
                                   "--prompts", str(prompts), "--output", str(output), "--engine", "ray", "--actors",
                                   "1", "--in-flight", "4", "--quiet"], cwd=tmp_path,
                                  env={**environment, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 300
        while len(lines(output)) < 4:
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < deadline, "no line written in time"
            time.sleep(0.05)
        instance = psutil.Process(driver.pid).children(recursive=True)  # its Ray: GCS, raylet, agents, the actor
        names = [process.name() for process in instance]
        assert "raylet" in names and any("JobActor" in name for name in names), names
        release.clear()  # from now on requests are held: the ones in flight finish, what follows them waits
        time.sleep(1.0)
        asked = len(server.requests)
        driver.kill()
        driver.wait()
        time.sleep(0.5)
        release.set()  # an actor still alive now would get its answers and go on asking
        _, alive = psutil.wait_procs(instance, timeout=20)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.name()) for p in alive]
        time.sleep(2)
        assert len(server.requests) == asked, "no request after the driver's death"


def test_a_driver_that_joins_a_running_instance_leaves_it_up(ray_case):
    """Without ``--address``, ``ray.init`` joins the instance ``RAY_ADDRESS`` names (``ray job submit`` sets it):
    this driver did not start it, so its end takes nothing down."""
    import subprocess
    import sys
    import time

    import psutil
    import ray

    agents = [p for p in psutil.Process().children(recursive=True) if p.name().endswith("Agent")]
    address = ray.get_runtime_context().gcs_address
    script = "from fusion_dspy.workflows.ray_engine import RayEngine\nwith RayEngine()._session() as ray:\n" \
             "    print(ray.get_runtime_context().gcs_address)"  # fmt: skip
    joined = subprocess.run([sys.executable, "-c", script], env={**os.environ, "RAY_ADDRESS": address},
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert joined.returncode == 0 and address in joined.stdout, joined.stdout + joined.stderr
    time.sleep(1)  # what a watchdog would take to act
    assert agents and all(agent.is_running() for agent in agents), "the instance's agents are still there"
    assert ray.get(ray.remote(worker_pid).remote()) > 0, "and it still runs tasks"


def worker_pid() -> int:
    return os.getpid()

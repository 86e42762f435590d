"""Route (method="auto"): a router trained on eval's results picks one sample, select or fuse per input."""

import json
import threading
from collections import defaultdict

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import FusionConfig
from fusion_dspy.core.router import Router
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.optimizers.tuned import load_tuned, save_tuned
from fusion_dspy.testing import scripted_lm
from fusion_dspy.workflows.evaluation import PairedEvaluation
from fusion_dspy.workflows.reports import position_bias, summarize
from fusion_dspy.workflows.task import Task


def synthetic_results(path, examples=12):
    """Fusion wins on poems and loses on sums; selection the other way round; one sample is always wrong."""
    with open(path, "w") as file:
        for i in range(examples):
            poem = i % 2 == 0
            question = f"write a poem about the {['sea', 'moon', 'rain'][i % 3]}" if poem else f"sum {i} and {i + 3}"
            for n in (1, 2, 4):
                scores = {"single": 0.0, "bon": 0.0 if poem or n < 4 else 1.0, "fusion": 1.0 if poem else 0.0,
                          "oracle": 1.0}  # fmt: skip
                tokens = {"single": 10, "bon": 10 * n, "fusion": 10 * n + 30, "oracle": 10 * n}
                file.write(json.dumps({"id": f"{i}:{n}", "example": i, "n": n, "inputs": {"question": question},
                                       "scores": scores, "tokens": tokens, "agreement": 0.5}) + "\n")  # fmt: skip
    return path


def responder(call):
    if call.wants("comparison"):
        return {"comparison": "compared", "answer": "fused"}
    return {"answer": f"sample {call.index}"}


@pytest.mark.parametrize("use_async", [False, True])
async def test_the_router_picks_per_input_as_trained(tmp_path, use_async):
    router = Router.fit(synthetic_results(tmp_path / "results.jsonl"))
    assert router.choose({"question": "write a poem about snow"}) == ("fuse", 1), "fusing one is as good, cheaper"
    assert router.choose({"question": "sum 40 and 2"}) == ("select", 4)
    assert router.choose({"question": "sum 40 and 2"}, max_n=2) == ("single", 1), "all score 0: the cheapest"
    lm = scripted_lm(responder)
    route = fd.Route("question -> answer", n=4, lm=lm, router=router)
    call = route.acall if use_async else route
    poem = await call(question="write a poem about snow") if use_async else call(question="write a poem about snow")
    assert poem.route == {"method": "fuse", "n": 1} and poem.answer == "fused" and len(poem.candidates) == 1
    assert len(lm.engine.calls) == 1 + 1, "only the chosen N is drawn, then one fusor call"
    total = await call(question="sum 40 and 2") if use_async else call(question="sum 40 and 2")
    assert total.route == {"method": "select", "n": 4} and len(lm.engine.calls) == 2 + 4, "select: no fusor call"
    assert total.answer.startswith("sample") and set(total.stage_tokens) == {"sample", "select"}


def test_a_route_saves_and_loads_its_router_like_a_tuned_program(tmp_path):
    router = Router.fit(synthetic_results(tmp_path / "results.jsonl"))
    lm = scripted_lm(responder)
    route = fd.Route("question -> answer", n=4, lm=lm, router=router)
    route.save(tmp_path / "route.json")
    fresh = fd.Route("question -> answer", n=4, lm=lm)
    with pytest.raises(FusionDSPyError, match="no router"):
        fresh(question="sum 1 and 2")
    fresh.load(tmp_path / "route.json")
    assert fresh(question="sum 1 and 2").route == {"method": "select", "n": 4}
    config = FusionConfig.model_validate({"models": {"lm": {"model": "scripted/lm"}}, "roles": {"generators": "lm"},
                                          "fusion": {"method": "auto", "n": 4}})  # fmt: skip
    backends = Backends(config, lms={"lm": lm})
    program = backends.program(dspy.Predict("question -> answer"), router=router)
    assert isinstance(program, fd.Route)
    path = save_tuned(program, {"n": 4, "temperature": 0.7, "method": "auto"}, tmp_path / "tuned.json")
    loaded = load_tuned(path, backends, dspy.Predict("question -> answer"))
    assert loaded(question="write a poem about snow").route == {"method": "fuse", "n": 1}
    router.save(tmp_path / "router.json")
    assert Router.load(tmp_path / "router.json").choose({"question": "sum 3 and 4"}) == ("select", 4)


def test_records_without_inputs_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"id": "0:1", "example": 0, "n": 1, "scores": {"single": 1.0}}) + "\n")
    with pytest.raises(FusionDSPyError, match="no 'inputs'.*rerun"):
        Router.fit(path)


# --- eval with a router, on scripted candidates ------------------------------------------------------------------
def kind_backends() -> Backends:
    """Sums: sample 0 is wrong, the rest right, so majority wins from N=4 and the fusor (copying the first) loses.
    Poems: every sample has one line, the gold is all of them, which only the fusor writes."""
    drawn: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def generator(call):
        with lock:
            k = drawn[call.inputs["question"]]
            drawn[call.inputs["question"]] += 1
        if call.inputs["question"].startswith("sum"):
            return {"answer": "41" if k == 0 else "42"}
        return {"answer": f"line {k}"}

    def fusor(call):
        first = call.inputs["candidates"].split("\n")[1]
        return {"comparison": "c", "answer": "all lines" if call.inputs["question"].startswith("poem") else first}

    config = FusionConfig.model_validate({
        "models": {"gen": {"model": "scripted/gen"}, "fusor": {"model": "scripted/fusor"}},
        "roles": {"generators": "gen", "fusor": "fusor"},
        "fusion": {"select": "majority", "max_concurrency": 1},
    })  # fmt: skip
    return Backends(config, lms={"gen": scripted_lm(generator, model="scripted/gen"),
                                 "fusor": scripted_lm(fusor, model="scripted/fusor")})  # fmt: skip


def examples(start: int, count: int) -> list[dspy.Example]:
    rows = []
    for i in range(start, start + count):
        poem = i % 2 == 0
        question, gold = (f"poem number {i}", "all lines") if poem else (f"sum of {i} things", "42")
        rows.append(dspy.Example(question=question, answer=gold).with_inputs("question"))
    return rows


TASK = Task("kinds", "question -> answer", metric=lambda example, pred, trace=None: pred.answer == example.answer)


def test_eval_with_the_trained_router_scores_at_least_the_better_of_fuse_and_select(tmp_path):
    backends = kind_backends()
    PairedEvaluation(backends, TASK, examples(0, 8), n_values=(1, 4), output_dir=tmp_path / "train").run(False)
    router = Router.fit(tmp_path / "train" / "results.jsonl")
    records = PairedEvaluation(backends, TASK, examples(100, 8), n_values=(1, 4), output_dir=tmp_path / "test",
                               router=router).run(False)  # fmt: skip
    rows = {(row.method, row.n): row.mean for row in summarize(records)}
    assert rows[("fusion", 4)] == 0.5 and rows[("bon", 4)] == 0.5, "each fixed method wins on one kind only"
    assert rows[("route", 4)] >= max(rows[("fusion", 4)], rows[("bon", 4)])
    assert rows[("route", 4)] == 1.0
    chosen = {r["inputs"]["question"].split()[0]: r["route"]["method"] for r in records if r["n"] == 4}
    assert chosen == {"poem": "fuse", "sum": "select"}
    assert all(r["task"] == "kinds" and 0.0 <= r["agreement"] <= 1.0 for r in records)
    # The fusor copies the first candidate on sums: the position-bias report sees it.
    bias = {row.n: row for row in position_bias(records)}
    assert set(bias) == {4} and bias[4].fusions == 8 and bias[4].follows_first == 1.0 > bias[4].chance == 0.625


def test_an_agreement_router_draws_the_largest_n_then_decides_from_the_candidates(tmp_path):
    path = tmp_path / "results.jsonl"
    with open(path, "w") as file:  # the same words every time: only the candidates' agreement tells them apart
        for i in range(10):
            agree = i % 2 == 0
            for n in (1, 4):
                scores = {"single": float(agree), "bon": float(agree), "fusion": 1.0 if agree or n == 4 else 0.0}
                file.write(json.dumps({"id": f"{i}:{n}", "example": i, "n": n, "inputs": {"question": "tell me"},
                                       "agreement": 1.0 if agree else 0.1, "scores": scores,
                                       "tokens": {"single": 10, "bon": 10 * n, "fusion": 10 * n + 30}}) + "\n")
    router = Router.fit(path, use_agreement=True)
    with pytest.raises(FusionDSPyError, match="agreement"):
        router.choose({"question": "tell me"})
    same = scripted_lm(lambda call: {"comparison": "c", "answer": "fused"} if call.wants("comparison")
                       else {"answer": "the same"})  # fmt: skip
    p = fd.Route("question -> answer", n=4, lm=same, router=router)(question="tell me")
    assert p.route == {"method": "single", "n": 1} and len(same.engine.calls) == 4, "drew 4, kept one, no fusor"
    split = scripted_lm(responder)
    q = fd.Route("question -> answer", n=4, lm=split, router=router)(question="tell me")
    assert q.route == {"method": "fuse", "n": 4} and q.answer == "fused" and len(split.engine.calls) == 4 + 1


def test_eval_command_trains_on_its_own_results_and_scores_the_route_over_http(tmp_path, capsys):
    import yaml

    from fusion_dspy.cli import main
    from fusion_dspy.testing import StubOpenAIServer

    devset = tmp_path / "dev.jsonl"
    devset.write_text("".join(json.dumps({"question": f"q{i}", "answer": "42"}) + "\n" for i in range(3)))

    def respond(call):
        return {"comparison": "c", "answer": "fused"} if call.wants("comparison") else {"answer": "42"}

    with StubOpenAIServer(respond=respond) as server:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"models": {"m": {"model": "openai/m", "api_base": server.api_base,
                                                           "cache": False}}, "roles": {"generators": "m"}}))
        common = ["eval", "--config", str(config), "--program", "tests.scripted_search:TASK", "--devset", str(devset),
                  "--n-values", "1,2", "--quiet"]  # fmt: skip
        assert main([*common, "--output-dir", str(tmp_path / "first")]) == 0
        first = capsys.readouterr().out
        Router.fit(tmp_path / "first" / "results.jsonl").save(tmp_path / "router.json")
        assert main([*common, "--output-dir", str(tmp_path / "second"), "--router", str(tmp_path / "router.json")]) == 0
    second = capsys.readouterr().out
    assert "position bias of the fusor" in first and "follows the first shown" in first
    # The table may wrap a label over two lines; the words are there either way.
    assert "Route" in second and "(auto)" in second and "Route" not in first
    records = [json.loads(line) for line in (tmp_path / "second" / "results.jsonl").read_text().splitlines()]
    assert all(r["scores"]["route"] == 1.0 and r["route"]["method"] == "single" for r in records), \
        "every sample is right: one sample is as good as fusing, and cheapest"

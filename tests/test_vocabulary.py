"""One typed vocabulary: option objects from config to every stage, one fallback word, one report, typed failures."""

import inspect
import json
import threading
import warnings

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import FusionConfig
from fusion_dspy.core.layers import Layers
from fusion_dspy.core.options import FuseOptions, SampleOptions, SelectOptions
from fusion_dspy.core.permute import Permutations
from fusion_dspy.core.report import FusionReport
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from tests.conftest import qa_responder


def scripted_backends(fusion: dict, lm: dspy.LM, **model: object) -> Backends:
    config = FusionConfig.model_validate({"models": {"lm": {"model": "scripted/lm", **model}},
                                          "roles": {"generators": "lm"}, "fusion": fusion})  # fmt: skip
    return Backends(config, lms={"lm": lm})


def test_a_config_knob_reaches_every_layers_sample_and_layer_2_does_not_wait_for_its_straggler():
    released, first_of_layer_2 = threading.Event(), threading.Lock()

    def respond(call):
        layer_2 = call.wants("answer") and "candidates" in call.inputs and not call.wants("comparison")
        if layer_2 and first_of_layer_2.acquire(blocking=False):  # layer 2's first request hangs until the end
            released.wait(timeout=30)
        return qa_responder(call)

    lm = scripted_lm(respond)
    program = scripted_backends({"n": 4, "layers": 2, "quorum": 3, "straggler_grace_s": 0.3}, lm).program(
        "question -> answer")  # fmt: skip
    try:
        assert program.layers.layer_2.options == program.sample.options  # quorum, grace ... every knob, not 8 of them
        assert program.layers.layer_2.options.quorum == 3 and program.layers.layer_2.options.straggler_grace_s == 0.3
        result = program(question="Why?")
        assert not released.is_set(), "the call returned while layer 2's straggler still hung"
        stragglers = [f for f in result.report.stragglers if f.stage == "layer_2"]
        assert len(stragglers) == 1 and stragglers[0].kind == "straggler" and result.answer == "fused"
    finally:
        released.set()


def test_layer_2_is_batched_with_n_as_the_config_says():
    def respond(call):
        return qa_responder(call)

    with StubOpenAIServer(respond=respond) as server:
        config = FusionConfig.model_validate({
            "models": {"stub": {"model": "openai/stub", "api_base": server.api_base, "batch_samples": True}},
            "roles": {"generators": "stub"}, "fusion": {"n": 4, "layers": 2}})  # fmt: skip
        result = Backends(config).program("question -> answer")(question="Why?")
    samples = [body for body in server.requests if "comparison" not in str(body["messages"][0]["content"])]
    assert [body.get("n") for body in samples] == [4, 4], "layer 1 and layer 2: one request of n=4 each"
    assert result.answer == "fused" and len(server.requests) == 3


def test_one_fallback_word_honours_the_configured_selection():
    lm = scripted_lm(lambda call: {"answer": ["Paris", "Paris, France", "Paris"][call.index % 3]}
                     if not call.wants("comparison") else "garbage without fields")  # fmt: skip
    consensus = scripted_backends({"n": 3, "fallback": "select", "select": "consensus"}, lm).program(
        "question -> answer", fusing=FuseOptions(retries=0))  # fmt: skip
    report = consensus(question="Capital?").report
    assert report.fallback is not None and report.fallback.method == "consensus"
    assert report.fallback.cause.stage == "fuse" and report.fallback.cause.kind == "unparsable"
    down = scripted_lm(qa_responder, fail=lambda call: True)
    best = fd.BestOfN("question -> answer", fallback="select",
                      selection=SelectOptions(judge="listwise", judge_lm=down, vote="consensus"))  # fmt: skip
    picked = best(candidates=[{"answer": "a b"}, {"answer": "a b c"}, {"answer": "x"}], question="q")
    assert picked.report.fallback.method == "consensus" and picked.report.fallback.cause.stage == "select"
    with pytest.warns(DeprecationWarning, match="'select' everywhere"):
        assert fd.Select("question -> answer", fallback="vote").fallback == "select"
    with pytest.raises(ValueError, match="fallback must be 'raise', 'select' or a SelectOptions"):
        fd.FusionOfN("question -> answer", fallback="vote")


def test_route_composes_the_two_programs_over_one_sample_and_loads_a_02_save():
    lm = scripted_lm(qa_responder)
    route = fd.Route("question -> answer", n=3, lm=lm, selection=SelectOptions(vote="majority"))
    assert not isinstance(route, fd.FusionOfN) and route.best.sample is route.fusion.sample is route.sample
    copied = route.deepcopy()
    assert copied.best.sample is copied.fusion.sample and copied.fusion.sample is not route.fusion.sample
    predict = route.fusion.fuse.predict
    predict.signature = predict.signature.with_instructions("Merge the drafts well.")
    state = route.dump_state()
    old = {key.removeprefix("fusion.").replace("best.select.", "select."): value for key, value in state.items()}
    fresh = fd.Route("question -> answer", n=3, lm=lm)
    fresh.load_state(json.loads(json.dumps(old)))
    assert fresh.fusion.fuse.predict.signature.instructions == "Merge the drafts well."


@pytest.mark.parametrize("cls", [fd.Sample, fd.Fuse, fd.Select, fd.FusionOfN, fd.BestOfN, fd.Route, Layers,
                                 Permutations])  # fmt: skip
def test_no_public_constructor_takes_more_than_12_parameters(cls):
    parameters = [p for name, p in inspect.signature(cls.__init__).parameters.items()
                  if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]  # fmt: skip
    assert len(parameters) <= 12, [p.name for p in parameters]


def test_the_02_keywords_still_work_with_a_deprecation_warning():
    lm = scripted_lm(qa_responder)
    with pytest.warns(DeprecationWarning, match=r"sampling=SampleOptions\(quorum=...\)"):
        fused = fd.FusionOfN("question -> answer", n=3, lm=lm, quorum=2, instructions="Merge them.")
    assert fused.sample.options.quorum == 2 and fused.fusing.instructions == "Merge them."
    with pytest.warns(DeprecationWarning, match=r"selection=SelectOptions\(judge=..., vote=...\)"):
        best = fd.BestOfN("question -> answer", lm=lm, judge="listwise", vote="consensus")
    assert best.selection.judge == "listwise" and best.select.judge_lm is lm
    with pytest.raises(TypeError, match="unexpected keyword argument.*'quorumm'"):
        fd.FusionOfN("question -> answer", quorumm=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 0.3 spelling warns about nothing
        fd.FusionOfN("question -> answer", n=3, lm=lm, sampling=SampleOptions(quorum=2))
    p = fused(question="q")
    with pytest.warns(DeprecationWarning, match="read prediction.report"):
        assert p.stage_tokens == p.report.tokens and p.get("fusion_error") is None
    assert sorted(p.keys()) == ["answer", "candidates", "report"]


def test_option_objects_are_frozen_validated_and_derived_with_replace():
    options = SampleOptions(quorum=3)
    with pytest.raises(Exception, match="frozen"):
        options.quorum = 4
    assert options.replace(quorum=4).quorum == 4 and options.quorum == 3
    with pytest.raises(ValueError, match="SampleOptions: straggler_grace_s: Input should be greater than or equal"):
        options.replace(straggler_grace_s=-1)
    with pytest.raises(ValueError, match="quorum must be between min_candidates=1 and n=2"):
        fd.Sample("question -> answer", n=2, options=options)


def test_the_same_report_from_a_module_a_served_response_and_a_run_record(tmp_path):
    from fusion_dspy.cli import main

    module_report = fd.FusionOfN("question -> answer", n=2, lm=scripted_lm(qa_responder))(question="q").report
    assert isinstance(module_report, FusionReport)
    keys = set(module_report.to_dict())
    with StubOpenAIServer(respond=qa_responder) as upstream:
        config = tmp_path / "stub.yaml"
        config.write_text(json.dumps({"models": {"stub": {"model": "openai/stub", "api_base": upstream.api_base}},
                                      "roles": {"generators": "stub"}, "fusion": {"n": 2}}))  # fmt: skip
        (tmp_path / "in.jsonl").write_text(json.dumps({"question": "2+2?"}) + "\n")
        assert main(["run", "--config", str(config), "--inputs", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / "out.jsonl"), "--quiet"]) == 0  # fmt: skip
        record = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
        from fusion_dspy.serve.profiles import build_profiles
        from fusion_dspy.serve.run import FusionRun
        from fusion_dspy.serve.schema import ChatCompletionRequest

        profiles = build_profiles(fd.load_config(config))
        run = FusionRun(profiles["fusion"], ChatCompletionRequest(model="fusion", messages=[
            {"role": "user", "content": "Hi"}]))  # fmt: skip
        pool = run.sample()
        served = json.loads(json.dumps(run.response(pool, run.combine(pool))["fusion"]))
    assert set(record["report"]) == keys and set(served) - {"profile", "n"} == keys
    assert record["report"]["method"] == served["method"] == "fuse" and served["samples_drawn"] == 2

import asyncio

import dspy
import pytest
from dspy.teleprompt import BootstrapFewShot, MIPROv2

import fusion_dspy as fd
from fusion_dspy.testing import scripted_lm
from tests.conftest import qa_responder


def test_fusion_returns_task_fields_candidates_and_stage_stats():
    lm = scripted_lm(qa_responder, model="scripted/generator", delay=0.05)  # every request takes >= 0.05 s
    fused = fd.FusionOfN(dspy.ChainOfThought("question -> answer"), n=3, lm=lm)
    result = fused(question="Capital of France?")
    assert (result.answer, result.reasoning) == ("fused", "fused reasoning")
    assert [c.answer for c in result.candidates] and len(result.candidates) == 3
    assert set(result.stage_tokens) == {"sample", "fuse"} and all(result.stage_tokens.values())
    assert result.stage_usage["sample"]["scripted/generator"]["total_tokens"] == result.stage_tokens["sample"]
    assert result.stage_seconds["sample"] >= 0.05 and result.stage_seconds["fuse"] >= 0.05


async def test_async_fusion_and_best_of_n(lm):
    fused = fd.FusionOfN("question -> answer", n=3, lm=lm)
    best = fd.BestOfN(sample=fused.sample)
    fused_result, best_result = await asyncio.gather(fused.acall(question="q"), best.acall(question="q"))
    assert fused_result.answer == "fused" and len(fused_result.candidates) == 3
    assert best_result.answer.startswith("answer ") and "select" in best_result.stage_tokens


def test_each_role_has_its_own_lm():
    generator = scripted_lm(qa_responder, model="scripted/generator")
    fusor = scripted_lm(qa_responder, model="scripted/fusor")
    judge = scripted_lm(qa_responder, model="scripted/judge")
    fused = fd.FusionOfN("question -> answer", n=4, lm=generator, fusor_lm=fusor)
    fused(question="q")
    assert len(generator.engine.calls) == 4 and all(not c.wants("comparison") for c in generator.engine.calls)
    assert len(fusor.engine.calls) == 1 and fusor.engine.calls[0].wants("comparison")
    best = fd.BestOfN(sample=fused.sample, judge="listwise", judge_lm=judge)
    best(question="q")
    assert len(judge.engine.calls) == 1 and judge.engine.calls[0].wants("best_candidate")


def test_paired_comparison_on_the_same_candidates(lm):
    fused = fd.FusionOfN("question -> answer", n=4, lm=lm)
    best = fd.BestOfN(sample=fused.sample, reward_fn=lambda inputs, pred: float(pred.answer.split()[-1]))
    pool = fused.sample(question="q")
    fused_result = fused(question="q", candidates=pool)
    best_result = best(question="q", candidates=pool)
    assert len(lm.engine.calls) == 4 + 1  # four samples, one fusion, nothing sampled twice
    assert fused_result.candidates == best_result.candidates == pool.predictions
    assert best_result.answer == max((c.answer for c in pool.predictions), key=lambda a: int(a.split()[-1]))


class Pipeline(dspy.Module):
    """A larger program: rewrite the question, answer it with Fusion-of-N, then polish the answer."""

    def __init__(self, n=3):
        super().__init__()
        self.rewrite = dspy.Predict("question -> clear_question")
        self.answer = fd.FusionOfN(dspy.ChainOfThought("clear_question -> answer"), n=n)
        self.polish = dspy.Predict("answer -> final")

    def forward(self, question):
        clear = self.rewrite(question=question).clear_question
        return self.polish(answer=self.answer(clear_question=clear).answer)

    async def aforward(self, question):
        clear = (await self.rewrite.acall(question=question)).clear_question
        return await self.polish.acall(answer=(await self.answer.acall(clear_question=clear)).answer)


def test_composes_inside_a_larger_program_sync_and_async(lm):
    program = Pipeline()
    assert [name for name, _ in program.named_predictors()] == [
        "rewrite", "answer.sample.module.predict", "answer.fuse.predict", "polish",
    ]  # fmt: skip
    with dspy.context(lm=lm, track_usage=True):
        result = program(question="q")
        aresult = asyncio.run(program.acall(question="q"))
    assert result.final == aresult.final == "final text"
    assert len(lm.engine.calls) == 2 * (1 + 3 + 1 + 1)
    assert result.get_lm_usage()["scripted/generator"]["total_tokens"] > 0


def test_save_and_load_round_trip_instructions_and_demos(tmp_path, lm):
    program = Pipeline()
    fusor = program.answer.fuse.predict
    fusor.signature = fusor.signature.with_instructions("Fuse carefully.")
    fusor.demos = [dspy.Example(clear_question="q", candidates="<candidate id=\"1\">a</candidate>",
                                comparison="c", answer="a")]  # fmt: skip
    program.save(tmp_path / "program.json")
    loaded = Pipeline()
    loaded.load(tmp_path / "program.json")
    assert loaded.answer.fuse.predict.signature.instructions == "Fuse carefully."
    assert loaded.answer.fuse.predict.demos[0]["comparison"] == "c"
    assert "api_key" not in (tmp_path / "program.json").read_text()


def _trainset():
    return [dspy.Example(question=f"q{i}", final="final text").with_inputs("question") for i in range(6)]


def test_bootstrap_few_shot_collects_demos_for_generator_and_fusor(lm):
    metric = lambda example, pred, trace=None: pred.final == example.final  # noqa: E731
    with dspy.context(lm=lm):
        compiled = BootstrapFewShot(metric=metric, max_bootstrapped_demos=2, max_labeled_demos=0).compile(
            Pipeline(), trainset=_trainset()
        )
    demos = {name: predictor.demos for name, predictor in compiled.named_predictors()}
    assert len(demos["answer.sample.module.predict"]) == 2
    assert len(demos["answer.fuse.predict"]) == 2 and "candidates" in demos["answer.fuse.predict"][0]
    assert demos["answer.fuse.predict"][0]["answer"] == "fused"


def test_dspy_best_of_n_collects_no_demos_where_ours_does(lm):
    """The reason not to build on dspy.BestOfN (docs/design.md): its deep copies hide the calls."""
    metric = lambda example, pred, trace=None: True  # noqa: E731
    trainset = [dspy.Example(question=f"q{i}", answer="x").with_inputs("question") for i in range(3)]
    theirs = dspy.BestOfN(dspy.Predict("question -> answer"), N=2, reward_fn=lambda i, p: 1.0, threshold=2.0)
    ours = fd.BestOfN("question -> answer", n=2, reward_fn=lambda i, p: 1.0)
    with dspy.context(lm=lm):
        compiled_theirs = BootstrapFewShot(metric=metric, max_labeled_demos=0).compile(theirs, trainset=trainset)
        compiled_ours = BootstrapFewShot(metric=metric, max_labeled_demos=0).compile(ours, trainset=trainset)
    assert sum(len(p.demos) for p in compiled_theirs.predictors()) == 0
    assert len(compiled_ours.sample.module.demos) > 0


def test_mipro_v2_tunes_the_fusor_instruction_and_bootstraps_demos_for_both(monkeypatch):
    def respond(call):
        if call.wants("proposed_instruction"):
            return {"proposed_instruction": "Pick the capital and state it plainly."}
        if call.wants("comparison", "answer"):
            # Right with the proposed instruction, or on the easy training questions (so traces pass the metric
            # and MIPROv2 has demos to bootstrap), wrong on the held-out ones otherwise.
            right = "capital" in call.system or call.inputs.get("question") in ("q0", "q1", "q2")
            return {"comparison": "c", "answer": "Paris" if right else "not sure"}
        return qa_responder(call)

    lm = scripted_lm(respond)
    trainset = [dspy.Example(question=f"q{i}", answer="Paris").with_inputs("question") for i in range(8)]
    metric = lambda example, pred, trace=None: float(pred.answer == example.answer)  # noqa: E731
    program = fd.FusionOfN("question -> answer", n=2)
    bootstrapped = []
    original = MIPROv2._bootstrap_fewshot_examples

    def spy(self, *args, **kwargs):
        bootstrapped.append(original(self, *args, **kwargs))
        return bootstrapped[-1]

    monkeypatch.setattr(MIPROv2, "_bootstrap_fewshot_examples", spy)
    with dspy.context(lm=lm):
        before = dspy.Evaluate(devset=trainset[4:], metric=metric, display_progress=False)(program).score
        optimizer = MIPROv2(metric=metric, auto=None, num_candidates=2, max_bootstrapped_demos=1,
                            max_labeled_demos=0, num_threads=1, verbose=False)  # fmt: skip
        compiled = optimizer.compile(program, trainset=trainset[:4], valset=trainset[4:], num_trials=4,
                                     minibatch=False)  # fmt: skip
        after = dspy.Evaluate(devset=trainset[4:], metric=metric, display_progress=False)(compiled).score
    assert before == 0.0 and after == 100.0
    assert "capital" in compiled.fuse.predict.signature.instructions
    demo_sets = bootstrapped[0]  # {predictor index: candidate demo sets}; 0 = generator, 1 = fusor
    assert any(len(demos) for demos in demo_sets[0]) and any(len(demos) for demos in demo_sets[1])
    assert any("candidates" in demo for demos in demo_sets[1] for demo in demos)


def test_constructor_errors(lm):
    with pytest.raises(ValueError, match="module"):
        fd.FusionOfN()
    with pytest.raises(ValueError, match="fallback"):
        fd.FusionOfN("q -> a", fallback="ignore")
    two_step = Pipeline()
    with pytest.raises(fd.FusionDSPyError, match="signature="):
        fd.FusionOfN(two_step)
    assert fd.FusionOfN(two_step, signature="question -> final").fuse.task_signature.output_fields.keys() == {"final"}

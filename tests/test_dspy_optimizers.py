"""tune_fusor runs MIPROv2, GEPA and COPRO offline on a nested FusionOfN and tunes only the fusor."""

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.optimizers.dspy_optimizers import fusor_predictors, tune_fusor
from fusion_dspy.testing import scripted_lm
from tests.conftest import qa_responder

KEYWORD = "capital"
PROPOSAL = f"Fuse the candidates and name the {KEYWORD} city plainly."
GENERATOR_DEMO = dspy.Example(question="Capital of Peru?", reasoning="known", answer="Lima")


def respond(call):
    """The prompt / reflection model proposes an instruction with KEYWORD; the fusor is right only under it."""
    if call.wants("proposed_instruction"):  # MIPROv2's GroundedProposer and COPRO's prompt model
        prefix = {"proposed_prefix_for_output_field": "Answer:"}  # COPRO also asks for an output prefix
        return {"proposed_instruction": PROPOSAL, **(prefix if call.wants(*prefix) else {})}
    if call.wants("new_instruction"):  # GEPA's reflection LM (InstructionProposer, JSONAdapter)
        return {"new_instruction": PROPOSAL}
    if call.wants("comparison", "answer"):
        answer = "Paris" if KEYWORD in call.system else "not sure"
        return {"comparison": "c", "reasoning": "r", "answer": answer}
    return qa_responder(call)


class Program(dspy.Module):
    """FusionOfN (n=2) nested inside a user program, its generator carrying a demo that must survive tuning."""

    def __init__(self):
        super().__init__()
        self.answer = fd.FusionOfN(dspy.ChainOfThought("question -> answer"), n=2)
        self.answer.sample.module.predict.demos = [GENERATOR_DEMO]

    def forward(self, question):
        return self.answer(question=question)


def metric(example, pred, trace=None):
    return float(pred.answer == example.answer)


def examples(count, start=0):
    return [dspy.Example(question=f"q{i}", answer="Paris").with_inputs("question") for i in range(start, start + count)]


def score(program, devset):
    return dspy.Evaluate(devset=devset, metric=metric, display_progress=False, num_threads=1)(program).score


def generator_state(program):
    predictor = program.answer.sample.module.predict
    return predictor.signature.instructions, [demo.toDict() for demo in predictor.demos]


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ("mipro", {"max_labeled_demos": 0, "max_bootstrapped_demos": 1, "num_trials": 4, "num_threads": 1}),
        ("gepa", {"num_threads": 1, "use_merge": False}),
        ("copro", {}),
    ],
)
def test_tunes_the_fusor_instruction_and_leaves_the_generator_alone(optimizer, kwargs):
    lm = scripted_lm(respond)
    trainset, devset = examples(4), examples(3, start=10)
    program = Program()
    before_generator = generator_state(program)
    default_instruction = program.answer.fuse.predict.signature.instructions
    with dspy.context(lm=lm):
        assert score(program, devset) == 0.0
        tuned = tune_fusor(program, trainset, metric, optimizer=optimizer, valset=examples(3, start=4), **kwargs)
        assert score(tuned, devset) == 100.0
    assert KEYWORD in tuned.answer.fuse.predict.signature.instructions
    assert tuned.answer.fuse.predict.signature.instructions != default_instruction
    assert generator_state(tuned) == before_generator
    assert program.answer.fuse.predict.signature.instructions == default_instruction  # the input is not modified
    assert [name for name, _ in tuned.named_predictors()] == ["answer.sample.module.predict", "answer.fuse.predict"]
    if optimizer == "gepa":  # the reflection LM got the wrapped metric's feedback, naming the expected answer
        reflections = [call for call in lm.engine.calls if call.wants("new_instruction")]
        assert reflections and "The expected output was: {'answer': 'Paris'}" in reflections[0].user


def test_gepa_feedback_metric_sees_the_fusor_by_its_name_in_the_program():
    seen = []

    def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        seen.append(pred_name)
        return dspy.Prediction(score=metric(gold, pred), feedback=f"expected {gold.answer}")

    with dspy.context(lm=scripted_lm(respond)):
        tuned = tune_fusor(Program(), examples(3), feedback_metric, optimizer="gepa", num_threads=1, use_merge=False)
    assert KEYWORD in tuned.answer.fuse.predict.signature.instructions
    assert "answer.fuse.predict" in seen


def test_only_fusor_false_exposes_every_predictor():
    with dspy.context(lm=scripted_lm(respond)):
        tuned = tune_fusor(Program(), examples(3), metric, optimizer="copro", only_fusor=False)
    assert KEYWORD in tuned.answer.fuse.predict.signature.instructions
    assert KEYWORD in tuned.answer.sample.module.predict.signature.instructions  # COPRO rewrote the generator too


def test_finds_fusors_at_any_depth_and_adapts_two_arg_metrics():
    assert [name for name, _ in fusor_predictors(Program())] == ["answer.fuse.predict"]
    assert [name for name, _ in fusor_predictors(fd.FusionOfN("q -> a", n=2))] == ["fuse.predict"]
    assert [name for name, _ in fusor_predictors(fd.Fuse("q -> a"))] == ["predict"]
    with dspy.context(lm=scripted_lm(respond)):
        tuned = tune_fusor(Program(), examples(3), lambda example, pred: pred.answer == example.answer, "copro")
    assert KEYWORD in tuned.answer.fuse.predict.signature.instructions


def test_errors():
    with pytest.raises(fd.FusionDSPyError, match="No FusionOfN or Fuse"):
        tune_fusor(dspy.ChainOfThought("question -> answer"), examples(2), metric)
    with pytest.raises(fd.FusionDSPyError, match="No FusionOfN or Fuse"):
        tune_fusor(fd.BestOfN("question -> answer", n=2), examples(2), metric)
    with pytest.raises(ValueError, match="Unknown optimizer 'simba'"):
        tune_fusor(Program(), examples(2), metric, optimizer="simba")
    with pytest.raises(ValueError, match="trainset is empty"):
        tune_fusor(Program(), [], metric)
    with pytest.raises(TypeError, match="no argument"):
        tune_fusor(Program(), examples(2), metric, optimizer="copro", num_trials=3)
    with pytest.raises(ValueError, match="reflection LM"):
        tune_fusor(Program(), examples(2), metric, optimizer="gepa")

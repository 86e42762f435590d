import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

import fusion_dspy as fd
from fusion_dspy.backends.plain_adapter import PlainAdapter
from fusion_dspy.testing import scripted_lm


def test_plain_turn_and_whole_reply_as_the_answer():
    lm = scripted_lm(lambda call: "  Paris, on the Seine.\n")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        result = dspy.Predict("question -> answer")(question="Capital of France?")
    assert result.answer == "Paris, on the Seine."
    call = lm.engine.calls[0]
    assert call.system == "" and call.user == "Capital of France?"  # no field markers, no DSPy boilerplate


def test_instructions_demos_and_several_inputs():
    lm = scripted_lm(lambda call: "42")
    predict = dspy.Predict(dspy.Signature("question, context -> answer: int", "Answer with a number."))
    predict.demos = [dspy.Example(question="1+1?", context="math", answer=2)]
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        assert predict(question="40+2?", context="math").answer == 42
    call = lm.engine.calls[0]
    assert call.system == "Answer with a number."
    assert call.user == "Question:\n40+2?\n\nContext:\nmath"


def test_unusable_replies_raise_adapter_parse_errors():
    cases = [("   ", dspy.Predict("question -> answer")), ("forty-two", dspy.Predict("question -> answer: int")),
             ("no markers", dspy.ChainOfThought("question -> answer"))]  # fmt: skip
    for reply, module in cases:
        with dspy.context(lm=scripted_lm(lambda call, reply=reply: reply), adapter=PlainAdapter()), pytest.raises(
            AdapterParseError
        ):
            module(question="?")


def test_a_plain_fusor_without_comparison():
    lm = scripted_lm(lambda call: "fused" if "<candidate" in call.user else f"draft {call.index}")
    fused = fd.FusionOfN("question -> answer", n=3, lm=lm, sampling=fd.SampleOptions(adapter=PlainAdapter()),
                         fusing=fd.FuseOptions(compare=False, adapter=PlainAdapter()))  # fmt: skip
    result = fused(question="Why?")
    assert result.answer == "fused" and "comparison" not in result.report.details
    fusor_call = lm.engine.calls[-1]
    assert "Reply with that response only" in fusor_call.system
    assert 'Candidates:\n<candidate id="1">' in fusor_call.user
    # a small model answers what it read last: the candidates first, the task's own input after them
    assert fusor_call.user.startswith("Candidates:") and fusor_call.user.endswith("Question:\nWhy?")

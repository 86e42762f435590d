import asyncio

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.testing import scripted_lm

POOL = [dspy.Prediction(reasoning=f"r{i}", answer=a) for i, a in enumerate(["Lyon", "Paris", "paris.", "Nice"])]


def test_reward_fn_picks_the_highest_reward():
    seen = []

    def reward(inputs, pred):
        seen.append(inputs)
        return {"Nice": 3.0}.get(pred.answer, 1.0)

    best = fd.Select("question -> answer", reward_fn=reward)(candidates=POOL, question="q")
    assert (best.answer, best.selected_index, best.scores) == ("Nice", 3, [1.0, 1.0, 1.0, 3.0])
    assert best.reasoning == "r3"
    assert seen[0] == {"question": "q"}


def test_a_reward_that_raises_skips_that_candidate():
    def reward(inputs, pred):
        if pred.answer == "Nice":
            raise ValueError("boom")
        return float(len(pred.answer))

    assert fd.Select("question -> answer", reward_fn=reward)(candidates=POOL, question="q").answer == "paris."
    with pytest.raises(fd.SelectionError, match="None of the 4 candidates"):
        fd.Select("question -> answer", reward_fn=lambda i, p: 1 / 0)(candidates=POOL, question="q")


def test_majority_vote_ignores_reasoning_case_and_trailing_period():
    best = fd.Select("question -> reasoning, answer")(candidates=POOL, question="q")
    assert best.answer == "Paris" and best.selected_index == 1 and best.scores == [1.0, 2.0, 2.0, 1.0]


def test_listwise_judge_maps_its_pick_back_through_the_shuffle():
    # The judge always picks whichever candidate shows "Nice", wherever the shuffle put it.
    def respond(call):
        blocks = call.inputs["candidates"].split("\n\n")
        return {"comparison": "c", "best_candidate": next(i for i, b in enumerate(blocks, 1) if "Nice" in b)}

    judge_lm = scripted_lm(respond)
    best = fd.Select("question -> answer", judge="listwise", judge_lm=judge_lm)(candidates=POOL, question="q")
    assert best.answer == "Nice" and best.judge_comparison == "c"
    assert asyncio.run(
        fd.Select("question -> answer", judge="listwise", judge_lm=judge_lm).acall(candidates=POOL, question="q")
    ).answer == "Nice"


def test_listwise_judge_naming_no_candidate_is_an_error():
    judge_lm = scripted_lm(lambda call: {"comparison": "c", "best_candidate": 9})
    with pytest.raises(fd.SelectionError, match="ids run from 1 to 4"):
        fd.Select("question -> answer", judge="listwise", judge_lm=judge_lm)(candidates=POOL, question="q")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_pointwise_judge_scores_each_candidate_concurrently(asynchronous):
    def respond(call):
        return {"score": 9 if "Paris" in call.inputs["candidates"] else 2}

    judge_lm = scripted_lm(respond, rendezvous=4)
    select = fd.Select("question -> answer", judge="pointwise", judge_lm=judge_lm)
    if asynchronous:
        best = asyncio.run(select.acall(candidates=POOL, question="q"))
    else:
        best = select(candidates=POOL, question="q")
    assert best.answer == "Paris" and best.scores == [2.0, 9.0, 2.0, 2.0]
    assert judge_lm.engine.peak_in_flight == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        fd.Select("q -> a", reward_fn=lambda i, p: 0.0, judge="listwise")
    with pytest.raises(ValueError, match="listwise"):
        fd.Select("q -> a", judge="pairwise")
    with pytest.raises(fd.FusionDSPyError, match="no candidates"):
        fd.Select("q -> a")(candidates=[], q="x")


def test_consensus_keeps_the_answer_closest_to_all_others():
    pool = [dspy.Prediction(answer=a) for a in [
        "The sky is blue because air scatters blue sunlight more than red.",
        "Because the ocean reflects onto it.",
        "Air molecules scatter blue sunlight more strongly than red light, so the sky looks blue.",
        "Blue light is scattered more by the air than red light.",
    ]]  # fmt: skip
    best = fd.Select("question -> answer", vote="consensus")(candidates=pool, question="Why is the sky blue?")
    assert best.selected_index in (0, 2) and best.scores[1] == min(best.scores)
    assert fd.Select("q -> a", vote="consensus")(candidates=[dspy.Prediction(a="x")], q="?").scores == [1.0]
    with pytest.raises(ValueError, match="vote"):
        fd.Select("q -> a", vote="mbr")

import asyncio
import logging
import pickle

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.core.options import SampleOptions
from fusion_dspy.testing import scripted_lm
from tests.conftest import qa_responder


def test_n_distinct_requests_at_the_sampling_temperature(memory_cache):
    lm = scripted_lm(qa_responder, cache=True)
    sample = fd.Sample(dspy.Predict("question -> answer"), n=4, temperature=0.9, lm=lm)
    pool = sample(question="Why?")
    assert len(pool.candidates) == 4
    assert len(lm.engine.calls) == 4  # distinct rollout ids: four requests, not one cached answer
    assert {call.temperature for call in lm.engine.calls} == {0.9}
    assert len({c.answer for c in pool.predictions}) == 4
    sample(question="Why?")
    assert len(lm.engine.calls) == 4, "a rerun must be served sample by sample from DSPy's cache"
    fd.Sample(dspy.Predict("question -> answer"), n=6, temperature=0.9, lm=lm)(question="Why?")
    assert len(lm.engine.calls) == 6, "a larger N reuses the first samples and draws only the new ones"


def test_sync_forward_is_concurrent():
    lm = scripted_lm(qa_responder, rendezvous=6)  # each request waits until six are in flight together
    pool = fd.Sample("question -> answer", n=6, lm=lm)(question="q")
    assert len(pool.candidates) == 6
    assert lm.engine.peak_in_flight == 6


async def test_aforward_is_concurrent_and_bounded():
    lm = scripted_lm(qa_responder, rendezvous=3)
    pool = await fd.Sample("question -> answer", n=6, lm=lm, max_concurrency=3).acall(question="q")
    assert len(pool.candidates) == 6
    assert lm.engine.peak_in_flight == 3


def test_token_usage_is_tracked_through_threads(lm):
    with dspy.context(track_usage=True):
        pool = fd.Sample("question -> answer", n=3, lm=lm)(question="q")
    usage = pool.get_lm_usage()["scripted/generator"]
    assert usage["total_tokens"] > 0
    assert usage["total_tokens"] == 3 * (usage["total_tokens"] // 3)  # three identical-size requests


def test_teacher_pool_spreads_samples_and_weights_by_repetition(memory_cache):
    a = scripted_lm(qa_responder, model="scripted/a", cache=True)
    b = scripted_lm(qa_responder, model="scripted/b", cache=True)
    sample = fd.Sample("question -> answer", lms=[a, a, b], max_concurrency=1)
    pool = sample(question="q")
    assert pool.models == ["scripted/a", "scripted/a", "scripted/b"]
    assert (len(a.engine.calls), len(b.engine.calls)) == (2, 1), "a teacher listed twice makes two requests"
    assert [d.rollout_id for d in sample.plan()] == [0, 1, 0]
    cool, warm = a.copy(temperature=0.2), a.copy(temperature=1.0)
    assert [d.rollout_id for d in fd.Sample("q -> a", lms=[cool, warm], temperature=0.7).plan()] == [0, 1]
    assert [d.rollout_id for d in fd.Sample("q -> a", lms=[cool, warm], temperature=None).plan()] == [0, 0]
    # Replicas of one model on two servers are one model to the store and to DSPy's cache: distinct rollouts,
    # or both samples would be one cached answer.
    here = dspy.LM("openai/qwen", api_base="http://replica-1/v1", api_key="x", engine="litellm")
    there = here.copy(api_base="http://replica-2/v1")
    assert [d.rollout_id for d in fd.Sample("q -> a", lms=[here, there]).plan()] == [0, 1]


def test_uses_the_context_lm(lm):
    with dspy.context(lm=lm):
        fd.Sample("question -> answer", n=2)(question="q")
    assert len(lm.engine.calls) == 2


def test_failed_samples_are_dropped_with_a_warning(caplog):
    lm = scripted_lm(qa_responder, fail=lambda call: call.index in (1, 3))
    with caplog.at_level(logging.WARNING):
        pool = fd.Sample("question -> answer", n=5, lm=lm,
                         options=SampleOptions(max_concurrency=1, min_candidates=3))(question="q")
    assert len(pool.candidates) == 3
    assert len(pool.failures) == 2
    assert "Dropping a failed candidate" in caplog.text
    first = pool.failures[0]  # a typed failure that keeps its parts (what the server reports per model), even pickled
    assert str(first).startswith("sample 1 (scripted/lm): LMUnexpectedError: ") and first.index == 1
    assert (first.stage, first.model, first.error_type) == ("sample", "scripted/lm", "LMUnexpectedError")
    again = pickle.loads(pickle.dumps(first))
    assert again == first and (again.index, again.model, again.kind) == (1, "scripted/lm", first.kind)


def test_too_few_survivors_raise_a_clear_error():
    lm = scripted_lm(qa_responder, fail=lambda call: True)
    with pytest.raises(fd.SamplingError, match=r"Only 0 of 3 samples succeeded") as raised:
        fd.Sample("question -> answer", n=3, lm=lm)(question="q")
    assert len(raised.value.failures) == 3
    with pytest.raises(fd.SamplingError):
        asyncio.run(fd.Sample("question -> answer", n=2, lm=lm).acall(question="q"))


def test_bad_arguments_say_what_to_fix(lm):
    with pytest.raises(ValueError, match="not both"):
        fd.Sample("q -> a", lm=lm, lms=[lm])
    with pytest.raises(ValueError, match="min_candidates"):
        fd.Sample("q -> a", n=2, min_candidates=3)
    with pytest.raises(ValueError, match="No LM to sample from"):
        fd.Sample("q -> a", n=2)(q="x")
    pinned = dspy.Predict("q -> a")
    pinned.lm = lm
    with pytest.raises(ValueError, match="carry their own LM"):
        fd.Sample(pinned, n=2, lm=lm)(q="x")
    with pytest.raises(ValueError, match=r"set their own temperature.*pass temperature= to Sample"):
        fd.Sample(dspy.Predict("q -> a", temperature=0.0), n=2, lm=lm, temperature=0.9)(q="x")  # N alike

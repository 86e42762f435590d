import asyncio

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.testing import scripted_lm
from tests.conftest import qa_responder

QUESTIONS = ["q1", "q2", "q3"]


def generator_calls(lm):
    return [call for call in lm.engine.calls if not call.wants("comparison")]


def test_sweep_over_n_costs_the_largest_n_and_a_rerun_costs_nothing(tmp_path):
    lm = scripted_lm(qa_responder)
    store = CandidateStore(tmp_path / "store")
    for n in (1, 2, 4, 8):
        program = fd.FusionOfN("question -> answer", n=n, lm=lm, store=store)
        for question in QUESTIONS:
            result = program(question=question)
            assert len(result.candidates) == n
    assert len(generator_calls(lm)) == 8 * len(QUESTIONS), "not 1+2+4+8 = 15 per example"
    CandidateStore(tmp_path / "store")  # reopened, as a second run of the study would
    rerun = fd.FusionOfN("question -> answer", n=8, lm=lm, store=CandidateStore(tmp_path / "store"))
    for question in QUESTIONS:
        rerun(question=question)
    assert len(generator_calls(lm)) == 8 * len(QUESTIONS), "a rerun must sample nothing new"


def test_smaller_n_reuses_exactly_the_first_samples(tmp_path):
    store = CandidateStore(tmp_path)
    big = fd.Sample("question -> answer", n=4, lm=scripted_lm(qa_responder), store=store)(question="q")
    small = fd.Sample("question -> answer", n=2, lm=scripted_lm(qa_responder), store=store)(question="q")
    assert [c.answer for c in small.predictions] == [c.answer for c in big[:2].predictions]
    assert [c.cached for c in small] == [True, True] and [c.cached for c in big] == [False] * 4
    assert [c.usage for c in small] == [c.usage for c in big[:2]]
    assert all(c.usage["scripted/lm"]["total_tokens"] > 0 for c in small)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 1.0},
        {"lm": scripted_lm(qa_responder, model="scripted/other")},
        {"lm": scripted_lm(qa_responder, max_tokens=99)},
        {"module": dspy.Predict(dspy.Signature("question -> answer", "Answer in French."))},
    ],
    ids=["temperature", "model", "max_tokens", "instructions"],
)
def test_anything_that_changes_the_samples_changes_the_key(tmp_path, change):
    store = CandidateStore(tmp_path)
    base = {"module": "question -> answer", "n": 2, "lm": scripted_lm(qa_responder), "temperature": 0.7}
    fd.Sample(**{**base, "store": store})(question="q")
    changed = {**base, **change, "store": store}
    assert [c.cached for c in fd.Sample(**changed)(question="q").candidates] == [False, False]
    other = fd.Sample(**{**base, "store": store})(question="other question")
    assert [c.cached for c in other] == [False, False]


def test_a_new_server_port_or_key_keeps_the_pool(tmp_path):
    store = CandidateStore(tmp_path)
    first = dspy.LM("openai/local-model", api_base="http://127.0.0.1:1111/v1", api_key="a", engine="litellm")
    second = first.copy(api_base="http://127.0.0.1:2222/v1", api_key="b")
    state = store.generator_state(dspy.Predict("question -> answer"))
    assert store.key(first, 0.7, state, None, {"question": "q"}, 0) == store.key(second, 0.7, state, None,
                                                                                  {"question": "q"}, 0)


def test_samples_drawn_before_a_crash_are_kept(tmp_path):
    lm = scripted_lm(qa_responder, fail=lambda call: call.index == 2)
    store = CandidateStore(tmp_path)
    with pytest.raises(fd.SamplingError):
        fd.Sample("question -> answer", n=3, lm=lm, store=store, max_concurrency=1, min_candidates=3)(question="q")
    assert len(store) == 2
    healthy = scripted_lm(qa_responder)
    pool = fd.Sample("question -> answer", n=3, lm=healthy, store=store)(question="q")
    assert [c.cached for c in pool] == [True, True, False] and len(healthy.engine.calls) == 1


def test_async_sampling_uses_the_store(tmp_path):
    lm = scripted_lm(qa_responder)
    store = CandidateStore(tmp_path)
    sample = fd.Sample("question -> answer", n=3, lm=lm, store=store)
    asyncio.run(sample.acall(question="q"))
    again = asyncio.run(sample.acall(question="q"))
    assert [c.cached for c in again] == [True] * 3 and len(lm.engine.calls) == 3
    assert store.hits == 3 and store.misses == 3


def test_an_empty_store_is_still_truthy(tmp_path):
    store = CandidateStore(tmp_path)
    assert len(store) == 0 and bool(store)


def test_a_request_time_limit_is_not_part_of_a_candidates_key():
    """The timeout follows the model's roles (a generator that is also the fusor gets the fusor's): choosing
    another fusor must not throw the generator's stored candidates away."""
    lm = dspy.LM("openai/m", api_base="http://127.0.0.1:9/v1", api_key="x", engine="litellm")
    key = lambda model: CandidateStore.key(model, 0.7, "state", None, {"question": "q"}, 0)  # noqa: E731
    assert key(lm.copy(timeout=180.0)) == key(lm.copy(timeout=60.0)) != key(lm.copy(max_tokens=20))


def test_a_generators_own_settings_and_field_types_are_part_of_its_key():
    """A predictor's max_tokens or an int output changes the replies: a stored str reply must not come back."""
    state = CandidateStore.generator_state
    plain = state(dspy.Predict("question -> answer"))
    assert plain == state(dspy.Predict("question -> answer")), "one digest for the same generator"
    assert state(dspy.Predict("question -> answer", max_tokens=20)) != state(dspy.Predict("question -> answer",
                                                                                       max_tokens=2000))
    assert state(dspy.Predict("question -> answer: int")) != plain

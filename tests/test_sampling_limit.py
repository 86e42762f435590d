"""Sampling at the physical limit: N samples in one request (OpenAI `n`), straggler cut-off, adaptive N."""

import asyncio
import logging
import threading
import time

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.core import batching
from fusion_dspy.core.adaptive import Adaptive
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from tests.conftest import qa_responder


def respond(call):
    answer = {"comparison": "compared", "answer": "fused"} if call.wants("comparison") else {
        "answer": f"answer {call.index}"}  # fmt: skip
    return {**{name: "because" for name in call.output_fields}, **answer}


def http_lm(server: StubOpenAIServer, model: str = "openai/stub") -> dspy.LM:
    return dspy.LM(model, api_base=server.api_base, api_key="not-a-secret", engine="litellm", num_retries=0)


def sample_bodies(server):
    return [body for body in server.requests if "comparison" not in str(body["messages"][0]["content"])]


@pytest.mark.parametrize("module", [dspy.Predict("question -> answer"), dspy.ChainOfThought("question -> answer")])
def test_n_samples_in_one_request(module):
    with StubOpenAIServer(respond=respond) as server:
        result = fd.FusionOfN(module, n=5, lm=http_lm(server), batch_samples=True)(question="Why?")
    bodies = sample_bodies(server)
    assert len(bodies) == 1 and bodies[0]["n"] == 5 and len(server.requests) == 2  # 1 sample request + 1 fusor
    assert sorted(p.answer for p in result.candidates) == [f"answer {i}" for i in range(5)]
    assert result.answer == "fused" and result.samples_drawn == 5 and result.stop_reason == "complete"


def test_batched_prompt_tokens_are_counted_once():
    usage = {}
    for batch in (False, True):
        with StubOpenAIServer(respond=respond) as server:
            result = fd.FusionOfN("question -> answer", n=4, lm=http_lm(server), batch_samples=batch)(question="Why?")
        usage[batch] = result.stage_usage["sample"]["openai/stub"]
    assert usage[True]["prompt_tokens"] * 4 == usage[False]["prompt_tokens"]  # sent (and billed) once, not 4 times
    assert usage[True]["completion_tokens"] == usage[False]["completion_tokens"]


def test_a_teacher_pool_sends_one_batched_request_per_teacher():
    with StubOpenAIServer(respond=respond) as a, StubOpenAIServer(respond=respond) as b:
        pool = fd.Sample("question -> answer", n=6, lms=[http_lm(a, "openai/a"), http_lm(b, "hosted_vllm/b")],
                         batch_samples="auto")(question="q")  # fmt: skip
    assert [len(a.requests), len(b.requests)] == [1, 1] and a.requests[0]["n"] == b.requests[0]["n"] == 3
    assert [c.index for c in pool] == list(range(6)) and pool.models == ["openai/a", "hosted_vllm/b"] * 3
    assert sum(c.usage["openai/a"]["prompt_tokens"] for c in pool if c.model == "openai/a") > 0


def test_batched_samples_are_stored_one_by_one(tmp_path):
    store = fd.CandidateStore(tmp_path / "candidates")
    with StubOpenAIServer(respond=respond) as server:
        lm = http_lm(server)
        first = fd.Sample("question -> answer", n=4, lm=lm, store=store, batch_samples=True)(question="q")
        grown = fd.Sample("question -> answer", n=6, lm=lm, store=store, batch_samples=True)(question="q")
        single = fd.Sample("question -> answer", n=6, lm=lm, store=store)(question="q")  # unbatched: same keys
    assert [body["n"] for body in server.requests] == [4, 2]  # the sweep to N=6 drew only the two new samples
    assert [c.cached for c in grown] == [True] * 4 + [False] * 2 and all(c.cached for c in single)
    assert [c.prediction.answer for c in grown][:4] == [c.prediction.answer for c in first]
    assert [c.prediction.answer for c in single] == [c.prediction.answer for c in grown]


def test_a_server_rejecting_n_gets_separate_requests_once_and_it_is_logged(caplog):
    with StubOpenAIServer(respond=respond, reject_n=True) as server, caplog.at_level(logging.WARNING):
        lm = http_lm(server)
        first = fd.Sample("question -> answer", n=3, lm=lm, batch_samples=True)(question="q")
        second = fd.Sample("question -> answer", n=3, lm=lm, batch_samples=True)(question="q")
    assert len(first) == len(second) == 3 and not first.failures
    assert [body.get("n") for body in server.requests] == [3] + [None] * 6  # one rejected try, then singles
    assert sum("rejected a request for n choices" in r.message for r in caplog.records) == 1


def test_a_server_ignoring_n_gets_separate_requests():
    with StubOpenAIServer(respond=respond, ignore_n=True) as server:
        pool = fd.Sample("question -> answer", n=3, lm=http_lm(server), batch_samples=True)(question="q")
    assert len(pool) == 3 and not pool.failures and [body.get("n") for body in server.requests] == [3] + [None] * 3


def test_batching_async_equals_sync():
    results = {}
    for mode in ("sync", "async"):
        with StubOpenAIServer(respond=respond) as server:
            sample = fd.Sample("question -> answer", n=4, lm=http_lm(server), batch_samples=True)
            pool = sample(question="q") if mode == "sync" else asyncio.run(sample.acall(question="q"))
        results[mode] = ([c.prediction.answer for c in pool], [c.index for c in pool], pool.tokens,
                         [body["n"] for body in server.requests])  # fmt: skip
    assert results["sync"] == results["async"]
    assert results["sync"][1] == [0, 1, 2, 3] and results["sync"][3] == [4]


def test_auto_batches_only_where_n_is_sent_in_one_request():
    predict = dspy.Predict("q -> a")
    assert batching.batches("auto", dspy.LM("openai/x", engine="litellm"), predict)
    assert not batching.batches("auto", dspy.LM("anthropic/x", engine="litellm"), predict)
    assert not batching.batches("auto", scripted_lm(qa_responder), predict)  # a custom engine: N requests
    assert not batching.batches(True, dspy.LM("openai/x", engine="litellm"), dspy.ReAct("q -> a", tools=[]))
    with pytest.raises(ValueError, match="litellm engine"):
        batching.batches(True, scripted_lm(qa_responder), predict)


def _straggling_server(release: threading.Event) -> StubOpenAIServer:
    def delay(call):  # the 4th request (a sample, after the warm-up) hangs until released (<= 10 s): a straggler
        if call.index == 3:
            release.wait(10)
            return 0.0
        return 0.1

    return StubOpenAIServer(respond=respond, delay=delay)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stragglers_are_cut_off_after_the_grace(mode):
    release = threading.Event()
    with _straggling_server(release) as server:
        lm = http_lm(server)
        dspy.Predict("question -> answer")(question="warm-up", lm=lm)  # litellm's first-call set-up is not timed
        fused = fd.FusionOfN("question -> answer", n=4, lm=lm, quorum=3, straggler_grace_s=0.2)
        start = time.monotonic()
        result = fused(question="q") if mode == "sync" else asyncio.run(fused.acall(question="q"))
        wall, still_serving = time.monotonic() - start, server.flight.now
        release.set()
    assert still_serving == 1, "the call must return while the straggler is still being served"
    assert len(result.candidates) == 3 and len(result.stragglers) == 1 and not result.sample_failures
    assert "not waited for" in result.stragglers[0] and result.stop_reason == "quorum"
    assert wall < 8, "generous bound: it did not wait for the straggler's 10 s"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_quorum_met_by_stored_candidates_still_waits_for_the_first_new_draw(tmp_path, mode):
    store = fd.CandidateStore(tmp_path / "candidates")
    fd.Sample("question -> answer", n=4, lm=scripted_lm(qa_responder), store=store)(question="q")
    slow = scripted_lm(qa_responder, delay=0.8)  # the same LM, each request slower than the grace
    sample = fd.Sample("question -> answer", n=8, lm=slow, store=store, quorum=4, straggler_grace_s=0.4)
    pool = sample(question="q") if mode == "sync" else asyncio.run(sample.acall(question="q"))
    assert [c.cached for c in pool] == [True] * 4 + [False] * 4, "the 4 new draws must not be cut at the start"
    assert pool.stragglers == [] and pool.stop_reason == "complete" and len(slow.engine.calls) == 4


def test_without_a_quorum_every_sample_is_waited_for(lm):
    pool = fd.Sample("question -> answer", n=3, lm=lm)(question="q")
    assert pool.stragglers == [] and pool.stop_reason == "complete" and pool.drawn == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_adaptive_n_stops_after_the_first_wave_when_candidates_agree(mode):
    lm = scripted_lm(lambda call: {"answer": "42"})
    sample = fd.Sample("question -> answer", n=16, lm=lm, adaptive=Adaptive(wave=4))
    pool = sample(question="q") if mode == "sync" else asyncio.run(sample.acall(question="q"))
    assert len(lm.engine.calls) == 4 and pool.drawn == 4 and pool.stop_reason == "agreement"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_adaptive_n_draws_all_n_when_candidates_disagree(mode):
    lm = scripted_lm(qa_responder)  # "answer <i>": every candidate differs
    sample = fd.Sample("question -> answer", n=10, lm=lm, adaptive=Adaptive(wave=4))
    pool = sample(question="q") if mode == "sync" else asyncio.run(sample.acall(question="q"))
    assert len(lm.engine.calls) == 10 and pool.drawn == 10 and pool.stop_reason == "complete"


def test_adaptive_n_on_free_text_and_on_a_token_budget():
    text = "The sky looks blue because air scatters short blue wavelengths of sunlight far more than red ones"
    agreeing = scripted_lm(lambda call: {"answer": text if call.index % 2 else text + " at noon"})
    pool = fd.Sample("question -> answer", n=12, lm=agreeing, adaptive=True)(question="q")
    assert pool.drawn == 4 and pool.stop_reason == "agreement"
    spent = fd.Sample("question -> answer", n=12, lm=scripted_lm(qa_responder),
                      adaptive=Adaptive(wave=3, max_tokens=1))(question="q")  # fmt: skip
    assert spent.drawn == 3 and spent.stop_reason == "budget"


def test_fusion_reports_samples_drawn_and_why_it_stopped():
    lm = scripted_lm(lambda call: {"comparison": "same", "answer": "42"} if call.wants("comparison")
                     else {"answer": "42"})  # fmt: skip
    result = fd.FusionOfN("question -> answer", n=12, lm=lm, adaptive=Adaptive(wave=4))(question="q")
    assert (result.samples_drawn, result.stop_reason, len(result.candidates)) == (4, "agreement", 4)

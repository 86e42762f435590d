"""The OpenAI `n` parameter on the native engine: a wave's samples in one request (backends/native_choices.py)."""

import asyncio
import json
import logging
import pickle

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine
from fusion_dspy.core import batching
from fusion_dspy.core.options import SampleOptions
from fusion_dspy.testing import StubOpenAIServer
from tests.test_native_engine import KEY, native_backends
from tests.test_sampling_limit import respond, sample_bodies

BATCHED = SampleOptions(batch_samples=True)


def native_lm(server: StubOpenAIServer, model: str = "openai/stub") -> dspy.LM:
    return dspy.LM(model, engine=NativeEngine(model, server.api_base), async_engine=AsyncNativeEngine(
        model, server.api_base), cache=False, num_retries=0)  # fmt: skip


def run(module, mode: str, **inputs):
    return module(**inputs) if mode == "sync" else asyncio.run(module.acall(**inputs))


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("module", [dspy.Predict("question -> answer"), dspy.ChainOfThought("question -> answer")],
                         ids=["Predict", "ChainOfThought"])  # fmt: skip
def test_n_samples_in_one_request_on_the_native_engine(module, mode):
    with StubOpenAIServer(respond=respond) as server:
        result = run(fd.FusionOfN(module, n=5, lm=native_lm(server), sampling=BATCHED), mode, question="Why?")
    bodies = sample_bodies(server)
    assert len(bodies) == 1 and bodies[0]["n"] == 5 and len(server.requests) == 2  # 1 sample request + 1 fusor
    assert sorted(p.answer for p in result.candidates) == [f"answer {i}" for i in range(5)]
    assert result.answer == "fused" and result.samples_drawn == 5 and not result.sample_failures
    if isinstance(module, dspy.ChainOfThought):
        assert all(p.reasoning == "because" for p in result.candidates)


def test_batched_prompt_tokens_are_counted_once_on_the_native_engine():
    usage = {}
    for batch in (False, True):
        with StubOpenAIServer(respond=respond) as server:
            pool = fd.Sample("question -> answer", n=4, lm=native_lm(server),
                             options=SampleOptions(batch_samples=batch))(question="Why?")  # fmt: skip
        assert [body.get("n") for body in server.requests] == ([4] if batch else [None] * 4)
        usage[batch] = {kind: sum(c.usage["openai/stub"][kind] for c in pool) for kind in (
            "prompt_tokens", "completion_tokens")}  # fmt: skip
    assert usage[True]["prompt_tokens"] * 4 == usage[False]["prompt_tokens"]  # sent (and billed) once, not 4 times
    assert usage[True]["completion_tokens"] == usage[False]["completion_tokens"] > 0


def test_each_choice_s_response_holds_its_own_choice_not_the_whole_reply():
    """Each Response keeps (and lm15 checks) its body: the whole reply in each would cost N x N at n = N."""
    from fusion_dspy.backends.native_choices import read_choices

    reply = {"choices": [{"index": i, "message": {"role": "assistant", "content": f"answer {i}"},
                          "finish_reason": "stop"} for i in range(3)],
             "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}  # fmt: skip
    responses = read_choices(None, 200, json.dumps(reply).encode(), 3, "m")
    assert [r.provider_data["choices"] for r in responses] == [[choice] for choice in reply["choices"]]
    assert [r.message.parts[0].text for r in responses] == ["answer 0", "answer 1", "answer 2"]
    assert [r.usage.input_tokens for r in responses] == [9, 0, 0]  # the prompt was billed once


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("server_option", ["reject_n", "ignore_n"])
def test_a_server_refusing_or_ignoring_n_gets_separate_requests_once_and_it_is_logged(server_option, mode, caplog):
    model = f"openai/{server_option}-{mode}"  # its own identity: the fallback is remembered for the process
    with StubOpenAIServer(respond=respond, **{server_option: True}) as server, caplog.at_level(logging.WARNING):
        lm = native_lm(server, model)
        first = run(fd.Sample("question -> answer", n=3, lm=lm, options=BATCHED), mode, question="q")
        second = run(fd.Sample("question -> answer", n=3, lm=lm, options=BATCHED), mode, question="q")
    assert len(first) == len(second) == 3 and not first.failures and not second.failures
    assert [body.get("n") for body in server.requests] == [3] + [None] * 6  # one try, then singles from now on
    assert sum("rejected a request for n choices" in r.message for r in caplog.records) == 1
    assert not batching.batches(True, lm, dspy.Predict("question -> answer"))


def test_auto_batches_native_openai_and_vllm_models_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # deciding reads no key: a missing one fails at the request
    predict = dspy.Predict("q -> a")
    for model, api_base in (("openai/x", None), ("hosted_vllm/x", "http://127.0.0.1:9/v1")):
        assert batching.batches("auto", dspy.LM(model, engine=NativeEngine(model, api_base)), predict)
    anthropic = dspy.LM("anthropic/x", engine=NativeEngine("anthropic/x", "http://127.0.0.1:9"))
    assert not batching.batches("auto", anthropic, predict)  # its wire has no `n`: N requests
    with pytest.raises(ValueError, match="native engine"):
        batching.batches(True, anthropic, predict)


def test_the_key_stays_out_of_a_batched_request_s_reprs_and_logs(tmp_path, monkeypatch, caplog):
    with StubOpenAIServer(respond=respond, ignore_n=True) as server, caplog.at_level(logging.DEBUG):
        lm = native_backends(tmp_path, server, monkeypatch, cache=False, model="openai/key-test").lm("gen")
        pool = fd.Sample("question -> answer", n=2, lm=lm, options=BATCHED)(question="q")
        engines = lm.engine.for_n(2)
    assert server.requests[0]["n"] == 2 and server.authorizations[0] == f"Bearer {KEY}", "the key is sent"
    assert len(pool) == 2 and "ignores `n`" in caplog.text
    seen = [caplog.text, repr(engines), repr(vars(engines[0])), repr(vars(engines[1])), repr(pool.failures)]
    assert not [text for text in seen if KEY in text] and KEY.encode() not in pickle.dumps(lm.engine)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_batched_request_keeps_the_native_timeout_and_dspy_s_error_type(mode):
    with StubOpenAIServer(respond=respond, delay=lambda call: 1.0) as server:
        route = ("openai/slow", server.api_base, None, 0.2)
        lm = dspy.LM("openai/slow", engine=NativeEngine(*route), async_engine=AsyncNativeEngine(*route), cache=False,
                     num_retries=0)  # fmt: skip
        engine, async_engine = lm.engine.for_n(2)
        batched = lm.copy(engine=engine, async_engine=async_engine, n=2)
        with pytest.raises(dspy.LMTimeoutError):
            run(dspy.Predict("question -> answer"), mode, question="q", lm=batched)
    assert server.requests[0]["n"] == 2

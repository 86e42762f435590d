"""`engine: native`: DSPy's lm15 client behind the public engine contract, routed once (backends/native.py)."""

import asyncio
import copy
import gc
import logging
import os
import pickle

import dspy
import psutil
import pytest

import fusion_dspy as fd
from fusion_dspy.backends import Backends
from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine
from fusion_dspy.testing import StubOpenAIServer
from tests.test_sampling_config import backends_for

KEY = "sk-native-test-0123456789"


def respond(call):
    if call.wants("comparison"):
        return {"comparison": "compared", "answer": "fused"}
    return {"answer": f"answer {call.index}"}


def native_backends(tmp_path, server, monkeypatch, **model) -> Backends:
    monkeypatch.setenv("NATIVE_TEST_KEY", KEY)
    return backends_for(tmp_path, {"models": {"gen": {"model": "openai/gen", "api_base": server.api_base,
                                                      "api_key_env": "NATIVE_TEST_KEY", "engine": "native",
                                                      "num_retries": 0, **model}},
                                   "roles": {"generators": "gen"}, "fusion": {"n": 3}})  # fmt: skip


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_native_model_samples_and_fuses_through_the_server(tmp_path, monkeypatch, mode):
    with StubOpenAIServer(respond=respond) as server:
        program = native_backends(tmp_path, server, monkeypatch, cache=False).program("question -> answer")
        result = program(question="q") if mode == "sync" else asyncio.run(program.acall(question="q"))
    assert result.answer == "fused" and sorted(c.answer for c in result.candidates) == [
        "answer 0", "answer 1", "answer 2"]  # fmt: skip
    assert {body["model"] for body in server.requests} == {"gen"}, "the wire gets the model without its prefix"
    assert result.stage_usage["sample"]["openai/gen"]["prompt_tokens"] > 0  # DSPy's usage tracking is kept


def test_the_lm_keeps_dspy_cache_rollouts_and_history(tmp_path, monkeypatch, memory_cache):
    with StubOpenAIServer(respond=respond) as server:
        lm = native_backends(tmp_path, server, monkeypatch, cache=True).lm("gen")
        predict = dspy.Predict("question -> answer")
        first = predict(question="cached?", lm=lm).answer
        again = predict(question="cached?", lm=lm).answer  # DSPy's cache answers: no request
        other = predict(question="cached?", lm=lm.copy(rollout_id=1, temperature=1.0)).answer
    assert first == again != other and len(server.requests) == 2
    assert lm.history[0]["model"] == "openai/gen" and lm.history[0]["usage"]["prompt_tokens"] > 0


def test_each_event_loop_gets_its_own_client_and_closed_loops_leave_nothing_open(tmp_path, monkeypatch):
    with StubOpenAIServer(respond=respond) as server:
        lm = native_backends(tmp_path, server, monkeypatch, cache=False).lm("gen")
        predict = dspy.Predict("question -> answer")
        asyncio.run(predict.acall(question="q", lm=lm))
        gc.collect()
        before = psutil.Process().num_fds()
        answers = [asyncio.run(predict.acall(question="q", lm=lm)).answer for _ in range(6)]  # a new loop each
        gc.collect()
        grown = psutil.Process().num_fds() - before
    assert len(answers) == 6 and len(server.requests) == 7
    assert grown <= 1, f"{grown} more open files after 6 event loops: a client per closed loop was kept"


def test_server_errors_keep_dspy_types_and_retries(tmp_path, monkeypatch):
    with StubOpenAIServer(respond=respond, status=429, retry_after=3600) as server:
        lm = native_backends(tmp_path, server, monkeypatch, num_retries=2).lm("gen")
        with pytest.raises(dspy.LMRateLimitError, match="longer than max_retry_wait_s=60"):
            dspy.Predict("question -> answer")(question="q", lm=lm)
    assert len(server.requests) == 1  # the server's 3600 s wait was over the cap: not retried
    with StubOpenAIServer(respond=respond, status=lambda i: 503 if i == 0 else 200) as server:
        lm = native_backends(tmp_path, server, monkeypatch, num_retries=1, cache=False).lm("gen")
        assert dspy.Predict("question -> answer")(question="q", lm=lm).answer == "answer 1"
    with StubOpenAIServer(respond=respond, delay=2.0) as server:
        lm = native_backends(tmp_path, server, monkeypatch, timeout=0.3, cache=False).lm("gen")
        with pytest.raises(dspy.LMTimeoutError, match="read timed out"):  # a timeout, as on litellm (504 served)
            dspy.Predict("question -> answer")(question="q", lm=lm)


def test_a_reply_cut_at_max_tokens_is_marked(tmp_path, monkeypatch, caplog):
    with StubOpenAIServer(respond=respond, finish_reason="length") as server, caplog.at_level(logging.WARNING):
        pool = native_backends(tmp_path, server, monkeypatch, cache=False, max_tokens=5).program(
            "question -> answer").sample(question="q")  # fmt: skip
    assert [c.truncated for c in pool] == [True] * 3


def test_streaming_through_the_native_engine(tmp_path, monkeypatch):
    with StubOpenAIServer(respond=lambda call: {"answer": "streamed words"}) as server:
        lm = native_backends(tmp_path, server, monkeypatch, cache=False).lm("gen")
        predict = dspy.Predict("question -> answer")
        listener = dspy.streaming.StreamListener(signature_field_name="answer")
        stream = dspy.streamify(predict, stream_listeners=[listener])

        async def chunks():
            with dspy.context(lm=lm):
                return [chunk async for chunk in stream(question="q")]

        received = asyncio.run(chunks())
    assert received[-1].answer == "streamed words" and server.requests[0].get("stream") is True
    assert "".join(c.chunk for c in received if isinstance(c, dspy.streaming.StreamResponse)).strip()


def test_the_key_stays_out_of_reprs_saved_programs_and_history(tmp_path, monkeypatch):
    with StubOpenAIServer(respond=respond) as server:
        backends = native_backends(tmp_path, server, monkeypatch, cache=False)
        lm, program = backends.lm("gen"), backends.program("question -> answer")
        program(question="q")
        program.save(tmp_path / "program.json")
    assert server.authorizations[0] == f"Bearer {KEY}", "the key is sent"
    seen = [repr(lm), str(lm.dump_state()), str(lm.history), (tmp_path / "program.json").read_text()]
    assert not [text for text in seen if KEY in text] and KEY.encode() not in pickle.dumps(lm.engine)
    assert lm.dump_state()["engine"]["state"]["api_key_env"] == "NATIVE_TEST_KEY"
    restored = pickle.loads(pickle.dumps(lm.engine))  # the key is read again from its variable
    assert (restored.route, restored.config.api_keys) == (lm.engine.route, lm.engine.config.api_keys)
    assert copy.deepcopy(lm).engine is lm.engine, "copies of a program share the engine, as DSPy's LMs do"


def test_a_native_program_deep_copies_without_warnings(tmp_path, monkeypatch, caplog):
    with StubOpenAIServer(respond=respond) as server, caplog.at_level(logging.WARNING):
        program = native_backends(tmp_path, server, monkeypatch).program("question -> answer")
        copy.deepcopy(program)  # what Module.load_state does (load_tuned, serve --tuned) and optimizers do
    assert "Failed to deep copy" not in caplog.text


def test_config_errors_of_a_native_model_name_the_field(tmp_path, monkeypatch):
    with StubOpenAIServer(respond=respond) as server:
        with pytest.raises(fd.ConfigError, match=r"models\.gen\.model: could not read 'foo/bar'"):
            native_backends(tmp_path, server, monkeypatch, model="foo/bar").lm("gen")
        with pytest.raises(fd.ConfigError, match=r"models\.gen\.extra: .*extra_headers"):
            native_backends(tmp_path, server, monkeypatch, extra={"extra_headers": {"X-Trace": "1"}}).lm("gen")


def test_a_missing_key_is_reported_at_the_first_request_not_at_start_up(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = dspy.LM("openai/gpt-4o-mini", engine=NativeEngine("openai/gpt-4o-mini"),
                 async_engine=AsyncNativeEngine("openai/gpt-4o-mini"), cache=False)  # fmt: skip
    assert lm.engine.config.api_keys is None, "no key given: the provider's own variable is read, at the request"
    with pytest.raises(dspy.LMError, match="OPENAI_API_KEY"):
        dspy.Predict("question -> answer")(question="q", lm=lm)


def test_native_async_equals_sync(tmp_path, monkeypatch):
    results = {}
    for mode in ("sync", "async"):
        with StubOpenAIServer(respond=respond) as server:
            sample = native_backends(tmp_path, server, monkeypatch, cache=False).program("question -> answer").sample
            pool = sample(question="q") if mode == "sync" else asyncio.run(sample.acall(question="q"))
        results[mode] = (sorted(c.prediction.answer for c in pool), [c.index for c in pool], pool.tokens)
    assert results["sync"] == results["async"]  # same candidates, indexes and tokens


def _without_proxies(monkeypatch):
    for name in [name for name in os.environ if name.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_a_proxy_set_the_environment_is_not_read_again_at_each_request(monkeypatch, mode):
    """lm15 reads the proxy variables per request (a walk over the whole environment); with none set when the
    client is built, ours never looks again (backends/transport.py): a proxy set afterwards is not used."""
    _without_proxies(monkeypatch)
    monkeypatch.setenv("NO_PROXY", "internal.example")  # often set where no proxy is: it names none
    monkeypatch.setenv("ADMIN_SERVICE_PORT_PROXY", "3128")  # Kubernetes, for a Service port named "proxy": nor this
    with StubOpenAIServer(respond=respond) as server, StubOpenAIServer(respond=respond) as proxy:
        lm = dspy.LM("openai/gen", engine=NativeEngine("openai/gen", server.api_base),
                     async_engine=AsyncNativeEngine("openai/gen", server.api_base), cache=False)  # fmt: skip
        predict = dspy.Predict("question -> answer")
        transport = lm.engine._client().transport
        assert (transport.max_connections, transport.copy().max_connections) == (1024, 1024), "the router's limits"

        async def twice():
            first = await predict.acall(question="q", lm=lm)
            monkeypatch.setenv("HTTP_PROXY", proxy.api_base.removesuffix("/v1"))
            return first, await predict.acall(question="q", lm=lm)

        if mode == "sync":
            answers = [predict(question="q", lm=lm)]
            monkeypatch.setenv("HTTP_PROXY", proxy.api_base.removesuffix("/v1"))
            answers.append(predict(question="q", lm=lm))
        else:
            answers = list(asyncio.run(twice()))
    assert [a.answer for a in answers] == ["answer 0", "answer 1"]
    assert len(server.requests) == 2 and proxy.requests == [], "both went straight to the server"


def test_a_proxy_set_when_the_client_is_built_is_honoured_per_request(monkeypatch):
    """With a proxy variable set, lm15's own per-request reading stays: requests go through the proxy."""
    _without_proxies(monkeypatch)
    with StubOpenAIServer(respond=respond) as server, StubOpenAIServer(respond=respond) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.api_base.removesuffix("/v1"))  # a plain-HTTP proxy, loopback
        lm = dspy.LM("openai/gen", engine=NativeEngine("openai/gen", server.api_base), cache=False)
        answer = dspy.Predict("question -> answer")(question="q", lm=lm).answer
    assert answer == "answer 0" and len(proxy.requests) == 1 and server.requests == [], "the proxy answered"

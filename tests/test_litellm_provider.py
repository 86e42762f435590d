"""The ``fusion/`` litellm provider: completion, acompletion and streaming run the fusion in-process."""

import litellm
import openai
import pytest

import fusion_dspy.litellm_provider as provider
from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import FUSED_WORDS, chat_reply, stub_usage_total, write_config

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France? q-3"}]


@pytest.fixture
def stub(tmp_path):
    with StubOpenAIServer(chat_reply) as server:
        provider.register(config=write_config(tmp_path / "c.yaml", {"stub": server.api_base}, "stub", n=3))
        yield server
    provider.register()  # back to the default (embedded, lazy: nothing started)


def test_import_registers_the_fusion_prefix():
    assert any(item["provider"] == "fusion" and item["custom_handler"] is provider.handler
               for item in litellm.custom_provider_map)  # fmt: skip


def test_completion(stub):
    response = litellm.completion(model="fusion/fusion", messages=MESSAGES, fusion={"return_candidates": True})
    assert response.choices[0].message.content == f"fused q-3 {FUSED_WORDS}"
    assert len(stub.requests) == 3 + 1
    assert "Be brief." in stub.requests[0]["messages"][-1]["content"]
    assert response.usage.total_tokens == stub_usage_total(stub)["total_tokens"]
    fusion = response._hidden_params["fusion"]
    assert [c["text"] for c in fusion["candidates"]] == ["sample q-3"] * 3 and fusion["failures"] == []
    assert response._hidden_params["response_cost"] is None  # a self-hosted stub has no price: unknown, not 0


async def test_acompletion_best_of_n_with_n(stub):
    response = await litellm.acompletion(model="fusion/best-of-n", messages=MESSAGES, n=2, temperature=0.1)
    assert response.choices[0].message.content == "sample q-3"
    assert len(stub.requests) == 2 and {body["temperature"] for body in stub.requests} == {0.1}
    assert response.usage.prompt_tokens == stub_usage_total(stub)["prompt_tokens"]


def test_sync_stream(stub):
    chunks = list(litellm.completion(model="fusion/fusion", messages=MESSAGES, stream=True,
                                     stream_options={"include_usage": True}))  # fmt: skip
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == f"fused q-3 {FUSED_WORDS}" and len(pieces) > 10
    assert stub.requests[-1]["stream"] is True
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage[-1].total_tokens == stub_usage_total(stub)["total_tokens"]


async def test_async_stream(stub):
    stream = await litellm.acompletion(model="fusion/fusion", messages=MESSAGES, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == f"fused q-3 {FUSED_WORDS}" and len(pieces) > 10


def test_errors_keep_their_status(stub, tmp_path):
    with pytest.raises(litellm.BadRequestError, match="limit of 16 candidates"):
        litellm.completion(model="fusion/fusion", messages=MESSAGES, n=99)
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="fusion/nope", messages=MESSAGES)
    with StubOpenAIServer(chat_reply, status=500) as bad:
        provider.register(config=write_config(tmp_path / "bad.yaml", {"bad": bad.api_base}, "bad", n=2))
        with pytest.raises(litellm.BadGatewayError) as raised:
            litellm.completion(model="fusion/fusion", messages=MESSAGES)
    assert raised.value.status_code == 502 and "0 of 2 samples" in str(raised.value)


def test_fields_a_fusion_cannot_honour_are_refused_not_dropped(stub):
    """Legacy functions or logprobs would silently be dropped, a malformed tool or schema would reach no model:
    refused with a 400, as by the server (tools, JSON answers and stop are honoured: tests/test_agents_clients.py)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
    for extra, field in (({"tools": [tool]}, "tools"), ({"functions": [{"name": "f"}]}, "functions"),
                         ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}},
                          "response_format")):  # fmt: skip
        with pytest.raises(litellm.BadRequestError, match=field):
            litellm.completion(model="fusion/fusion", messages=MESSAGES, **extra)
    assert stub.requests == [], "nothing is sampled for a refused request"


# --- errors are litellm's own types, with our message: litellm prints no "bug in LiteLLM" notice -------------
BUG_NOTICE = "bug in LiteLLM"


def raised(**completion) -> Exception:
    with pytest.raises(openai.OpenAIError) as caught:  # litellm's exception types derive from openai's
        litellm.completion(messages=MESSAGES, **{"model": "fusion/fusion", **completion})
    assert BUG_NOTICE not in str(caught.value)
    return caught.value


def test_a_missing_tuned_file_is_a_not_found_error_saying_what_to_give(stub, tmp_path):
    provider.register(config=provider.handler.config, tuned=[f"qa={tmp_path / 'tuned.json'}"])
    error = raised(model="fusion/qa")
    assert type(error) is litellm.NotFoundError and error.status_code == 404
    assert f"--tuned qa={tmp_path / 'tuned.json'}: no such file" in str(error) and "fusion-dspy optimize" in str(error)
    assert "register(config=..., tuned=[...])" in str(error) and stub.requests == []


def test_setup_errors_of_the_config(tmp_path, monkeypatch):
    provider.register(config=tmp_path / "missing.yaml")
    assert type(raised()) is litellm.NotFoundError
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {m: {model: openai/m, no_such_field: 1}}\n")
    provider.register(config=bad)
    error = raised()
    assert type(error) is litellm.BadRequestError and "no_such_field" in str(error)
    monkeypatch.delenv("FUSION_TEST_UNSET_KEY", raising=False)
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text("models: {m: {model: openai/m, api_key_env: FUSION_TEST_UNSET_KEY}}\nroles: {generators: m}\n")
    provider.register(config=keyed)
    error = raised()
    assert type(error) is litellm.AuthenticationError and "FUSION_TEST_UNSET_KEY is not set" in str(error)
    with StubOpenAIServer(chat_reply) as gone:
        closed = write_config(tmp_path / "closed.yaml", {"gone": gone.api_base}, "gone", n=2)
    provider.register(config=closed)  # its server has stopped: nothing answers at that address
    error = raised()
    assert type(error) is litellm.APIConnectionError and "cannot reach" in str(error)
    provider.register()


@pytest.mark.parametrize(("status", "expected", "hint"), [
    (401, litellm.AuthenticationError, "refused the key"),
    (500, litellm.BadGatewayError, "0 of 2 samples"),
])  # fmt: skip
def test_upstream_failures_by_their_kind(tmp_path, status, expected, hint):
    with StubOpenAIServer(chat_reply, status=status) as bad:
        provider.register(config=write_config(tmp_path / "bad.yaml", {"bad": bad.api_base}, "bad", n=2))
        error = raised()
    provider.register()
    assert type(error) is expected and hint in str(error)


@pytest.mark.parametrize(("model", "cut", "finish"), [
    ("fusion/fusion", "fusor", "length"), ("fusion/fusion", "samples", "stop"),
    ("fusion/best-of-n", "samples", "length"), ("fusion/best-of-n", "fusor", "stop"),
])  # fmt: skip
async def test_finish_reason_says_when_the_reply_was_cut_at_max_tokens(tmp_path, model, cut, finish):
    """The reply is the fusor's (or, for Best-of-N, the kept candidate's): "length" exactly when that one was cut,
    sync and async, streamed (its last chunk) or not."""

    def finish_reason(call):
        return "length" if call.wants("comparison") == (cut == "fusor") else "stop"

    with StubOpenAIServer(chat_reply, finish_reason=finish_reason) as server:
        provider.register(config=write_config(tmp_path / "c.yaml", {"stub": server.api_base}, "stub", n=2))
        replies = [litellm.completion(model=model, messages=MESSAGES),
                   await litellm.acompletion(model=model, messages=MESSAGES)]  # fmt: skip
        chunks = list(litellm.completion(model=model, messages=MESSAGES, stream=True))
        chunks += [chunk async for chunk in await litellm.acompletion(model=model, messages=MESSAGES, stream=True)]
    provider.register()
    assert [reply.choices[0].finish_reason for reply in replies] == [finish, finish]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [finish, finish]

"""The OpenAI-compatible server, driven by the official openai client and by DSPy, against loopback backends."""

import asyncio
import threading

import dspy
import openai
import pytest

from fusion_dspy.optimizers.tuned import save_tuned
from fusion_dspy.serve.chat import ChatReply
from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import (  # noqa: F401 - stub_fixture: the `stub` fixture
    FUSED_WORDS,
    chat_reply,
    fusion_server,
    json_reply,
    stub_fixture,
    stub_usage_total,
    write_config,
)

CONVERSATION = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is the capital of France? q-7"},
]


@pytest.fixture
def config(tmp_path, stub):
    return write_config(tmp_path / "config.yaml", {"stub": stub.api_base}, "stub", n=3)


def _client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def test_models_and_health(config):
    with fusion_server(config) as server:
        assert [m.id for m in _client(server).models.list().data] == ["fusion", "best-of-n"]
        import httpx

        assert httpx.get(f"http://127.0.0.1:{server.port}/health").json()["status"] == "ok"


def test_openai_client_gets_one_fused_reply_over_the_whole_conversation(config, stub):
    with fusion_server(config) as server:
        reply = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION,
                                                        extra_body={"fusion": {"return_candidates": True}})
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == f"fused q-7 {FUSED_WORDS}"
    assert len(stub.requests) == 3 + 1
    sample_prompt = stub.requests[0]["messages"][-1]["content"]
    for message in CONVERSATION:  # the whole conversation reached the generators, not just the last line
        assert message["content"] in sample_prompt
    fusion = reply.model_extra["fusion"]
    assert [c["text"] for c in fusion["candidates"]] == ["sample q-7"] * 3
    assert [c["model"] for c in fusion["candidates"]] == ["stub"] * 3 and fusion["failures"] == []
    totals = stub_usage_total(stub)
    assert reply.usage.prompt_tokens == totals["prompt_tokens"]
    assert reply.usage.completion_tokens == totals["completion_tokens"]
    assert reply.usage.total_tokens == totals["total_tokens"]
    sample_tokens = sum(u["total_tokens"] for u in stub.usage[:3])
    assert fusion["stages"]["sample"]["total_tokens"] == sample_tokens
    assert fusion["stages"]["fuse"]["total_tokens"] == stub.usage[3]["total_tokens"]


def test_request_n_temperature_and_max_tokens_go_to_the_candidates(config, stub):
    with fusion_server(config) as server:
        _client(server).chat.completions.create(model="fusion", messages=CONVERSATION, n=5, temperature=0.2,
                                                max_tokens=77)  # fmt: skip
    samples, fusor = stub.requests[:5], stub.requests[5]
    assert len(stub.requests) == 6
    assert {body["temperature"] for body in samples} == {0.2}
    # OpenAI's two names for it: litellm sends max_tokens, the native engine max_completion_tokens
    limit = lambda body: body.get("max_completion_tokens", body.get("max_tokens"))  # noqa: E731
    assert {limit(body) for body in samples} == {77}
    assert limit(fusor) != 77


async def test_async_client_best_of_n_with_a_judge(tmp_path, stub):
    config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=4, select="listwise")
    with fusion_server(config) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(model="best-of-n", messages=CONVERSATION)
    assert reply.choices[0].message.content == "sample q-7"
    assert len(stub.requests) == 4 + 1  # four samples and the judge
    assert reply.model_extra["fusion"]["method"] == "select"
    assert reply.usage.total_tokens == stub_usage_total(stub)["total_tokens"]


def test_streaming_sends_the_fusors_words_while_it_is_still_writing(tmp_path):
    gate = threading.Event()
    with StubOpenAIServer(chat_reply, stream_gate=gate) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            stream = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION, stream=True,
                                                             stream_options={"include_usage": True})  # fmt: skip
            chunks, text = [], ""
            for chunk in stream:
                chunks.append(chunk)
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    if not gate.is_set():
                        # The client holds the first words while the backend still holds the rest of the reply
                        # (it may still be sending the words before its gate: a bounded wait, not a race).
                        assert stub.waiting_at_gate.wait(10)
                        gate.set()
    assert text == f"fused q-7 {FUSED_WORDS}"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 10, "token by token, not one chunk"
    assert stub.requests[-1]["stream"] is True and not any(body.get("stream") for body in stub.requests[:2])
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finish) == 1 and [c["model"] for c in finish[0].model_extra["fusion"]["candidates"]] == ["stub", "stub"]
    assert chunks[-1].usage.total_tokens == stub_usage_total(stub)["total_tokens"]


def test_streaming_best_of_n_sends_the_kept_candidate(config, stub):
    with fusion_server(config) as server:
        stream = _client(server).chat.completions.create(model="best-of-n", messages=CONVERSATION, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "sample q-7"


def test_fusion_object_chooses_method_panel_and_fusor(tmp_path):
    with StubOpenAIServer(chat_reply) as a, StubOpenAIServer(chat_reply) as b:
        config = write_config(tmp_path / "c.yaml", {"a": a.api_base, "b": b.api_base}, "a", n=3)
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(
                model="fusion", messages=CONVERSATION,
                extra_body={"fusion": {"models": ["a", "b"], "fusor": "b", "n": 4}})  # fmt: skip
            picked = _client(server).chat.completions.create(
                model="fusion", messages=CONVERSATION, extra_body={"fusion": {"method": "select"}})
    fusion = reply.model_extra["fusion"]
    assert [c["model"] for c in fusion["candidates"]] == ["a", "b", "a", "b"]
    assert len(a.requests) == 2 + 3 and len(b.requests) == 2 + 1  # b also fused; the select call sampled a only
    assert picked.model_extra["fusion"]["method"] == "select" and picked.choices[0].message.content == "sample q-7"


def test_a_failed_panel_member_is_dropped_and_named(tmp_path):
    with StubOpenAIServer(chat_reply) as good, StubOpenAIServer(chat_reply, status=500) as bad:
        config = write_config(tmp_path / "c.yaml", {"good": good.api_base, "bad": bad.api_base}, ["good", "bad"],
                              n=4, min_candidates=2)  # fmt: skip
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION)
    fusion = reply.model_extra["fusion"]
    assert [c["model"] for c in fusion["candidates"]] == ["good", "good"]
    assert [f["model"] for f in fusion["failures"]] == ["bad", "bad"] and {f["stage"] for f in fusion["failures"]} == {
        "sample"}
    assert reply.usage.total_tokens == stub_usage_total(good)["total_tokens"]


def test_fifty_concurrent_clients_each_get_their_own_answer(config, stub):
    stub.delay = 0.05

    async def ask(client, k):
        reply = await client.chat.completions.create(model="fusion",
                                                     messages=[{"role": "user", "content": f"Question q-{k}?"}])
        return reply

    async def main(server):
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        return await asyncio.gather(*(ask(client, k) for k in range(50)))

    with fusion_server(config) as server:
        replies = asyncio.run(main(server))
    for k, reply in enumerate(replies):
        assert reply.choices[0].message.content == f"fused q-{k} {FUSED_WORDS}"
        assert [c["model"] for c in reply.model_extra["fusion"]["candidates"]] == ["stub"] * 3
    assert len(stub.requests) == 50 * 4
    assert stub.peak_in_flight > 3, "requests of different clients must overlap"
    assert sum(r.usage.total_tokens for r in replies) == stub_usage_total(stub)["total_tokens"]


def test_a_dspy_program_uses_a_deployed_fusion_as_its_lm(tmp_path):
    with StubOpenAIServer(json_reply) as stub:
        config = tmp_path / "c.yaml"
        write_config(config, {"stub": stub.api_base}, "stub", n=2)
        config.write_text(config.read_text().replace("num_retries: 0", "num_retries: 0\n    adapter: json"))
        with fusion_server(config) as server:
            lm = dspy.LM("openai/fusion", api_base=server.base_url, api_key="unused", cache=False)
            with dspy.context(lm=lm):
                answer = dspy.Predict("question -> answer")(question="Capital of France?").answer
    assert answer == "Paris"
    assert len(stub.requests) == 3
    assert "Capital of France?" in stub.requests[0]["messages"][-1]["content"]


def test_a_tuned_program_is_served_under_its_own_name(tmp_path, stub):
    config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3)
    import fusion_dspy as fd

    program = fd.load_config(config).program(dspy.Predict(ChatReply), method="fuse", n=2, temperature=0.3)
    program.fuse.predict.signature = program.fuse.predict.signature.with_instructions("TUNED FUSOR PROMPT")
    save_tuned(program, {"n": 2, "temperature": 0.3, "method": "fuse", "teachers": None}, tmp_path / "qa.json")
    with fusion_server(config, tuned=[str(tmp_path / "qa.json")]) as server:
        assert "qa" in [m.id for m in _client(server).models.list().data]
        reply = _client(server).chat.completions.create(model="qa", messages=CONVERSATION)
    assert reply.choices[0].message.content.startswith("fused q-7")
    assert len(stub.requests) == 2 + 1
    assert {body["temperature"] for body in stub.requests[:2]} == {0.3}
    assert "TUNED FUSOR PROMPT" in stub.requests[2]["messages"][0]["content"]


def test_a_load_balanced_fusor_streams_through_its_router(tmp_path):
    with StubOpenAIServer(chat_reply) as one, StubOpenAIServer(chat_reply) as two:
        config = tmp_path / "c.yaml"
        config.write_text(f"""
models:
  pair:
    model: openai/pair-model
    deployments: [{{api_base: "{one.api_base}"}}, {{api_base: "{two.api_base}"}}]
    num_retries: 0
    cache: false
roles: {{generators: pair}}
fusion: {{n: 2}}
""")
        with fusion_server(config) as server:
            stream = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION, stream=True)
            pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == f"fused q-7 {FUSED_WORDS}" and len(pieces) > 10
    assert [body.get("stream") for body in one.requests + two.requests].count(True) == 1


def plain_reply(body: dict) -> str:
    """Plain chat (PlainAdapter): the whole reply is the answer; whitespace around it is the parser's to strip."""
    from tests.serve_support import tag

    if "<candidate" in body["messages"][-1]["content"]:  # the fusor is shown the candidates
        return f"\n  fused {tag(body)} {FUSED_WORDS} \n"
    return f"sample {tag(body)}"


def test_a_plain_chat_fusor_streams_its_whole_reply(tmp_path):
    with StubOpenAIServer(plain_reply) as stub:
        config = tmp_path / "c.yaml"
        write_config(config, {"stub": stub.api_base}, "stub", n=2)
        config.write_text(config.read_text().replace("num_retries: 0", "num_retries: 0\n    adapter: plain"))
        with fusion_server(config) as server:
            stream = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION, stream=True)
            pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
            plain = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION)
    assert "".join(pieces) == f"fused q-7 {FUSED_WORDS}" == plain.choices[0].message.content
    assert len(pieces) > 10


def math_reply(body: dict) -> str:
    """ChainOfThought replies of the math program: reasoning, then the answer (the fusor compares first)."""
    system = body["messages"][0]["content"]
    if "`comparison`" in system.split("Your output fields are:")[-1]:
        return ("[[ ## comparison ## ]]\nboth say 42\n\n[[ ## reasoning ## ]]\n6 times 7\n\n[[ ## answer ## ]]\n42\n\n"
                "[[ ## completed ## ]]")  # fmt: skip
    return "[[ ## reasoning ## ]]\n6 times 7\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"


def test_a_tuned_file_naming_its_program_is_served_over_that_program(tmp_path):
    import fusion_dspy as fd
    from fusion_dspy.workflows.task import resolve_task

    with StubOpenAIServer(math_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3)
        program = fd.load_config(config).program(resolve_task("math").generator(), method="fuse", n=2)
        save_tuned(program, {"n": 2, "temperature": 0.5, "method": "fuse", "teachers": None, "program": "math"},
                   tmp_path / "math.json")  # fmt: skip
        with fusion_server(config, tuned=[f"solver={tmp_path / 'math.json'}"]) as server:
            reply = _client(server).chat.completions.create(model="solver",
                                                            messages=[{"role": "user", "content": "What is 6 x 7?"}])
    assert reply.choices[0].message.content == "42"  # the reply is the task's answer field, not its reasoning
    assert "[[ ## question ## ]]\nWhat is 6 x 7?" in stub.requests[0]["messages"][-1]["content"]
    assert len(stub.requests) == 2 + 1


@pytest.mark.embedded
def test_without_a_config_it_serves_the_embedded_model_offline():
    import fusion_dspy as fd
    from fusion_dspy.serve import build_profiles, create_app
    from fusion_dspy.serve.server import BackgroundServer

    backends = fd.load_config(None)
    backends.check()
    with BackgroundServer(create_app(build_profiles(backends))) as server:
        stream = _client(server, timeout=600).chat.completions.create(
            model="fusion", messages=[{"role": "user", "content": "Name one primary color."}], n=2, max_tokens=24,
            stream=True, stream_options={"include_usage": True})  # fmt: skip
        chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finish = next(c for c in chunks if c.choices and c.choices[0].finish_reason)  # "length" when cut at 24 tokens
    assert finish.choices[0].finish_reason in ("stop", "length")
    assert "".join(pieces).strip() and len(pieces) > 1, "the embedded fusor's reply streams in pieces"
    assert [c["model"] for c in finish.model_extra["fusion"]["candidates"]] == ["embedded", "embedded"]
    stages = finish.model_extra["fusion"]["stages"]
    assert chunks[-1].usage.total_tokens == sum(stage["total_tokens"] for stage in stages.values()) > 0


def test_adaptive_n_reports_what_it_drew_and_no_undrawn_sample_as_failed(tmp_path, stub):
    """Agreeing candidates stop adaptive N after its first wave: the rest were never drawn, so nothing failed."""
    config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=8,
                          adaptive={"wave": 2, "rule": "overlap"})  # fmt: skip
    with fusion_server(config) as server:
        reply = _client(server).chat.completions.create(model="fusion", messages=CONVERSATION)
    fusion = reply.model_extra["fusion"]
    assert fusion["samples_drawn"] == 2 and [c["model"] for c in fusion["candidates"]] == ["stub"] * 2
    assert fusion["failures"] == [] and fusion["stragglers"] == []
    assert len(stub.requests) == 2 + 1


def _finish_reasons(server, model: str) -> list[str]:
    """The ``finish_reason`` of a reply, then those of a streamed reply (only its last chunk has one)."""
    client = _client(server)
    reply = client.chat.completions.create(model=model, messages=CONVERSATION)
    stream = client.chat.completions.create(model=model, messages=CONVERSATION, stream=True)
    return [reply.choices[0].finish_reason, *(c.choices[0].finish_reason for c in stream
                                              if c.choices and c.choices[0].finish_reason)]  # fmt: skip


@pytest.mark.parametrize(("model", "cut", "finish"), [
    ("fusion", "fusor", "length"), ("fusion", "samples", "stop"),
    ("best-of-n", "samples", "length"), ("best-of-n", "fusor", "stop"),
])  # fmt: skip
def test_finish_reason_is_length_when_the_reply_was_cut_at_max_tokens(tmp_path, model, cut, finish):
    """The reply is the fusor's (Best-of-N: the kept candidate's): "length" exactly when that one was cut, streamed
    or not; panel replies cut under a fusion that is whole leave it "stop"."""

    def finish_reason(call):
        return "length" if call.wants("comparison") == (cut == "fusor") else "stop"

    with StubOpenAIServer(chat_reply, finish_reason=finish_reason) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            assert _finish_reasons(server, model) == [finish, finish]
            fusion = _client(server).chat.completions.create(model=model, messages=CONVERSATION).model_extra["fusion"]
    assert fusion["fusor_truncated"] is (model == "fusion" and cut == "fusor")


@pytest.mark.parametrize(("cut", "finish"), [("kept", "length"), ("not kept", "stop")])
def test_best_of_n_says_length_only_when_the_candidate_it_kept_was_cut(tmp_path, cut, finish):
    odd = lambda call: call.index % 3 == 0  # noqa: E731 - one of each request's three samples says something else
    cut_call = odd if cut == "not kept" else lambda call: not odd(call)
    with StubOpenAIServer(respond=lambda call: {"response": "odd one" if odd(call) else "sample"},
                          finish_reason=lambda call: "length" if cut_call(call) else "stop") as stub:  # fmt: skip
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3)
        with fusion_server(config) as server:
            assert _finish_reasons(server, "best-of-n") == [finish, finish]
            reply = _client(server).chat.completions.create(model="best-of-n", messages=CONVERSATION)
    truncated = [candidate["truncated"] for candidate in reply.model_extra["fusion"]["candidates"]]
    assert reply.choices[0].message.content == "sample" and truncated.count(True) == (1 if cut == "not kept" else 2)

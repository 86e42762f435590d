import asyncio
from typing import Literal

import dspy
import pydantic
import pytest

import fusion_dspy as fd
from fusion_dspy.backends.memo_adapter import MemoChatAdapter, _system_message, stream_adapter
from fusion_dspy.backends.plain_adapter import PlainAdapter
from fusion_dspy.core.checked import CheckedAdapter
from fusion_dspy.serve.profiles import build_profiles
from fusion_dspy.serve.run import FusionRun
from fusion_dspy.serve.schema import ChatCompletionRequest
from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import chat_reply, write_config


class Place(pydantic.BaseModel):
    city: str
    population: int


class Trip(dspy.Signature):
    """Plan a trip."""

    origin: str = dspy.InputField(desc="where it starts")
    stops: list[str] = dspy.InputField()
    budget: int = dspy.InputField()
    destination: Place = dspy.OutputField(desc="where it ends")
    mode: Literal["rail", "road"] = dspy.OutputField()


SIGNATURES = [dspy.Signature("question -> answer"), dspy.Signature("question, context -> answer: int", "Count."),
              dspy.Signature("question, context -> answer"), dspy.Signature("question: list[str] -> answer"),
              Trip, Trip.with_instructions("Plan a short trip.")]  # fmt: skip
INPUTS = [{"question": "Hi?"}, {"question": " How many?\n", "context": '{"json": "text"}', "extra": "ignored"},
          {"question": "Which one?"}, {"question": ["first", "second"]},  # a field left out; a list of text
          {"origin": "Lyon", "stops": ["Dijon"], "budget": 300}, {"origin": "Paris", "stops": [], "budget": 9}]


@pytest.fixture
def written(monkeypatch) -> list[type[dspy.Signature]]:
    """The signatures whose system message ChatAdapter lays out, in order, from an empty memory."""
    written, original = [], dspy.ChatAdapter.format_field_structure
    monkeypatch.setattr(dspy.ChatAdapter, "format_field_structure",
                        lambda self, signature: written.append(signature) or original(self, signature))  # fmt: skip
    _system_message.cache_clear()
    return written


@pytest.mark.parametrize("signature, inputs", zip(SIGNATURES, INPUTS, strict=True))
def test_messages_are_chat_adapters_own(signature, inputs):
    answer = {name: "4" for name in signature.output_fields} if signature is not Trip else {}
    demos = [dict(inputs), {**inputs, **answer}]  # one without its outputs, one with them (if text)
    for _ in range(2):  # the second from memory
        assert MemoChatAdapter().format(signature, demos, inputs) == dspy.ChatAdapter().format(signature, demos, inputs)


def test_each_signatures_system_message_is_written_once(written):
    first, second = dspy.Signature("topic -> joke"), dspy.Signature("topic -> poem")
    for signature in (first, second, first, second, first):
        MemoChatAdapter().format_system_message(signature)
    assert written == [first, second]


def test_instructions_set_in_place_are_followed():
    signature = dspy.Signature("topic -> joke", "Be brief.")
    assert "Be brief." in MemoChatAdapter().format_system_message(signature)
    signature.instructions = "Be long-winded."
    message = MemoChatAdapter().format_system_message(signature)
    assert "Be long-winded." in message and "Be brief." not in message
    assert message == dspy.ChatAdapter().format_system_message(signature)


def test_the_stream_listener_reads_replies_as_the_adapter_writes_them():
    json_adapter = dspy.JSONAdapter()
    assert type(stream_adapter(None)) is dspy.ChatAdapter
    assert type(stream_adapter(MemoChatAdapter())) is dspy.ChatAdapter
    assert stream_adapter(json_adapter) is json_adapter
    assert stream_adapter(PlainAdapter()) is None  # plain text has no field markers to listen for
    assert stream_adapter(CheckedAdapter(dspy.ChatAdapter(), contract=None)) is None


def test_the_server_writes_each_stages_system_message_once(tmp_path, written):
    with StubOpenAIServer(chat_reply) as stub:
        profile = build_profiles(fd.load_config(write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub")))
        for k in range(3):
            request = ChatCompletionRequest(model="fusion", messages=[{"role": "user", "content": f"q-{k}?"}])
            run = FusionRun(profile["fusion"], request)
            pool = asyncio.run(run.asample())
            assert run.reply(asyncio.run(run.acombine(pool))).startswith(f"fused q-{k}")
    assert len(written) == 2  # the sample signature's and the fusor's, for all three requests

"""The real HTTP path: DSPy -> litellm -> an OpenAI-compatible server on loopback (no network)."""

import asyncio

import dspy

import fusion_dspy as fd
from fusion_dspy.testing import StubOpenAIServer


def respond(call):
    if call.wants("comparison"):
        return {"comparison": "they agree", "answer": "fused"}
    if call.wants("clear_question"):
        return {"clear_question": "clear"}
    return {"answer": "sampled"}


class Program(dspy.Module):
    def __init__(self, n: int):
        super().__init__()
        self.rewrite = dspy.Predict("question -> clear_question")
        self.answer = fd.FusionOfN("clear_question -> answer", n=n)

    def forward(self, question):
        return self.answer(clear_question=self.rewrite(question=question).clear_question)

    async def aforward(self, question):
        clear = await self.rewrite.acall(question=question)
        return await self.answer.acall(clear_question=clear.clear_question)


def _lm(server: StubOpenAIServer) -> dspy.LM:
    return dspy.LM("openai/stub-model", api_base=server.api_base, api_key="not-a-secret", engine="litellm",
                   num_retries=0)  # fmt: skip


def test_fusion_of_8_sends_all_samples_at_once_over_http():
    with StubOpenAIServer(respond=respond, delay=0.2) as server, dspy.context(lm=_lm(server), track_usage=True):
        result = Program(n=8)(question="Why is the sky blue?")
    assert result.answer == "fused" and len(result.candidates) == 8
    assert len(server.requests) == 1 + 8 + 1
    assert server.peak_in_flight == 8, "the eight samples must be in flight together, not one after another"
    assert result.stage_tokens["sample"] > 0 and result.stage_tokens["fuse"] > 0
    temperatures = {body.get("temperature") for body in server.requests[1:9]}
    assert temperatures == {0.7}


def test_async_fusion_of_8_over_http():
    with StubOpenAIServer(respond=respond, delay=0.2) as server, dspy.context(lm=_lm(server)):
        result = asyncio.run(Program(n=8).acall(question="Why is the sky blue?"))
    assert result.answer == "fused"
    assert server.peak_in_flight == 8

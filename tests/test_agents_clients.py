"""Agent fields through the litellm provider (``fusion/...``) and through ``dspy.LM("openai/fusion", api_base=...)``."""

import json

import dspy
import jsonschema
import litellm
import pytest

import fusion_dspy.litellm_provider as provider
from fusion_dspy.testing import StubOpenAIServer
from tests.agent_support import CITY, FINAL, QUESTION, SCHEMAS, TOOLS, panel_text, panel_tool_calls
from tests.serve_support import fusion_server, write_config


@pytest.fixture
def stub(tmp_path):
    with StubOpenAIServer(respond=panel_text, tool_calls=panel_tool_calls) as server:
        provider.register(config=write_config(tmp_path / "c.yaml", {"stub": server.api_base}, "stub", n=3))
        yield server
    provider.register()  # back to the default (embedded, lazy: nothing started)


def _check(call: dict) -> None:
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_provider_returns_tool_calls(stub):
    response = litellm.completion(model="fusion/fusion", messages=QUESTION, tools=TOOLS, tool_choice="auto")
    assert response.choices[0].finish_reason == "tool_calls"
    calls = [call.model_dump() for call in response.choices[0].message.tool_calls]
    assert [call["function"]["name"] for call in calls] == ["get_weather"] and calls[0]["id"]
    _check(calls[0])
    assert all(body.get("tools") == TOOLS for body in stub.requests)
    proposals = [c["proposal"] for c in response._hidden_params["fusion"]["candidates"]]
    assert len(proposals) == 3


async def test_provider_streams_tool_call_deltas(stub):
    stream = await litellm.acompletion(model="fusion/fusion", messages=QUESTION, tools=TOOLS, stream=True)
    arguments, names, finish = "", [], None
    async for chunk in stream:
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or ():
            names += [delta.function.name] if delta.function.name else []
            arguments += delta.function.arguments or ""
    assert names == ["get_weather"] and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), SCHEMAS["get_weather"])


def test_provider_tool_choice_none_and_stop(stub):
    response = litellm.completion(model="fusion/fusion", messages=QUESTION, tools=TOOLS, tool_choice="none",
                                  stop=[" and"])  # fmt: skip
    assert response.choices[0].message.content == FINAL.split(" and")[0] and not response.choices[0].message.tool_calls


def test_provider_refuses_a_bad_tool_choice_before_sampling(stub):
    choice = {"type": "function", "function": {"name": "launch"}}
    with pytest.raises(litellm.BadRequestError, match="tool_choice"):
        litellm.completion(model="fusion/fusion", messages=QUESTION, tools=TOOLS, tool_choice=choice)
    assert stub.requests == []


def test_provider_json_schema(tmp_path):
    def respond(call):
        extra = {"comparison": "ok"} if call.wants("comparison") else {}
        return {**extra, "response": {"city": "Paris", "population": 2100000}}

    with StubOpenAIServer(respond=respond) as server:
        provider.register(config=write_config(tmp_path / "c.yaml", {"stub": server.api_base}, "stub", n=2))
        try:
            response = litellm.completion(model="fusion/fusion", messages=QUESTION, response_format={
                "type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})  # fmt: skip
        finally:
            provider.register()
    jsonschema.validate(json.loads(response.choices[0].message.content), CITY)


def test_dspy_lm_passes_tools_stop_and_response_format_through(tmp_path):
    with StubOpenAIServer(respond=panel_text, tool_calls=panel_tool_calls) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            lm = dspy.LM("openai/fusion", api_base=server.base_url, api_key="unused", engine="litellm", cache=False,
                         num_retries=0)  # fmt: skip
            called = lm(messages=QUESTION, tools=TOOLS, tool_choice="required")[0]
            stopped = lm(messages=QUESTION, stop=[" and"])[0]
    assert [call["function"]["name"] for call in called["tool_calls"]] == ["get_weather"]
    _check(called["tool_calls"][0] if isinstance(called["tool_calls"][0], dict) else
           called["tool_calls"][0].model_dump())  # fmt: skip
    assert (stopped["text"] if isinstance(stopped, dict) else stopped) == FINAL.split(" and")[0]

"""Agents on a fusion model: tools, tool_choice, JSON answers and stop sequences, through the official openai client."""

import json

import httpx
import jsonschema
import openai
import pytest

from fusion_dspy.testing import StubOpenAIServer
from tests.agent_support import (
    CITY,
    FINAL,
    QUESTION,
    SCHEMAS,
    TOOLS,
    answer_tools,
    check_tool_calls,
    is_fusor,
    panel_text,
    panel_tool_calls,
)
from tests.serve_support import fusion_server, write_config


@pytest.fixture
def stub():
    with StubOpenAIServer(respond=panel_text, tool_calls=panel_tool_calls) as server:
        yield server


@pytest.fixture
def config(tmp_path, stub):
    return write_config(tmp_path / "config.yaml", {"stub": stub.api_base}, "stub", n=3, fallback="select")


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_a_three_turn_agent_loop_ends_in_a_final_answer(config, stub):
    with fusion_server(config) as server:
        client, messages, names = _client(server), list(QUESTION), []
        for _ in range(2):
            reply = client.chat.completions.create(model="fusion", messages=messages, tools=TOOLS)
            choice = reply.choices[0]
            assert choice.finish_reason == "tool_calls"
            check_tool_calls(choice.message)
            names.append(choice.message.tool_calls[0].function.name)
            proposals = [c["proposal"] for c in reply.model_extra["fusion"]["candidates"]]
            messages = answer_tools(messages, choice.message)
        final = client.chat.completions.create(model="fusion", messages=messages, tools=TOOLS)
    assert names == ["get_weather", "get_time"]
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content == FINAL
    assert not final.choices[0].message.tool_calls
    first_turn = [json.dumps(p["tool_calls"]) for p in proposals]
    assert len(proposals) == 3 and len(set(first_turn)) >= 2, "the panel proposed different tool calls"
    assert all(body.get("tools") == TOOLS for body in stub.requests), "every panel member and the fusor saw the tools"
    last_prompt = stub.requests[-1]["messages"][-1]["content"]
    assert "get_weather" in last_prompt and "18 C, sunny" in last_prompt and "14:05" in last_prompt


async def test_async_client_gets_valid_tool_calls(config):
    with fusion_server(config) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(model="fusion", messages=QUESTION, tools=TOOLS)
    assert reply.choices[0].finish_reason == "tool_calls"
    check_tool_calls(reply.choices[0].message)


def test_streamed_tool_calls_arrive_as_openai_deltas(config):
    with fusion_server(config) as server:
        stream = _client(server).chat.completions.create(model="fusion", messages=QUESTION, tools=TOOLS, stream=True)
        calls, finish = {}, None
        for chunk in stream:
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["name"] += delta.function.name or "" if delta.function else ""
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS["get_weather"])


def test_tool_choice_none_yields_no_tool_call_and_sends_no_tools(config, stub):
    with fusion_server(config) as server:
        reply = _client(server).chat.completions.create(model="fusion", messages=QUESTION, tools=TOOLS,
                                                        tool_choice="none")  # fmt: skip
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    assert reply.choices[0].message.content == FINAL
    assert not any("tools" in body for body in stub.requests)


def test_tool_choice_required_yields_a_tool_call(tmp_path):
    def calls(call):  # only the fusor calls a tool unless forced; the panel complies when forced
        forced = call.extra.get("tool_choice") == "required"
        return [{"name": "get_time", "arguments": {"timezone": "UTC"}}] if forced or is_fusor(call) else None

    with StubOpenAIServer(respond=panel_text, tool_calls=calls) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(model="fusion", messages=QUESTION, tools=TOOLS,
                                                            tool_choice="required")  # fmt: skip
    assert reply.choices[0].finish_reason == "tool_calls" and len(reply.choices[0].message.tool_calls) == 1
    check_tool_calls(reply.choices[0].message)
    assert {body["tool_choice"] for body in stub.requests} == {"required"}


def test_a_fusor_tool_call_with_invalid_arguments_falls_back_to_a_valid_candidate(tmp_path):
    def calls(call):
        if is_fusor(call):  # an argument the schema refuses, on the first try and the retry
            return [{"name": "get_weather", "arguments": {"city": 75001}}]
        return [{"name": "get_weather", "arguments": {"city": "Paris"}}]

    with StubOpenAIServer(respond=panel_text, tool_calls=calls) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2, fallback="select")
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(model="fusion", messages=QUESTION, tools=TOOLS)
    check_tool_calls(reply.choices[0].message)
    assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    fallback = reply.model_extra["fusion"]["fallback"]
    assert fallback["cause"]["kind"] == "invalid" and "city" in fallback["cause"]["message"]
    assert len(stub.requests) == 2 + 2, "two samples, the fusion and its retry"


def _json_stub(fusor_city):
    def respond(call):
        if is_fusor(call):
            return {"comparison": "both fine", "response": {"city": fusor_city, "population": 2100000}}
        return {"response": {"city": "Paris", "population": 2100000 + call.index}}

    return StubOpenAIServer(respond=respond)


JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}


def test_json_schema_answers_validate(tmp_path):
    with _json_stub("Paris, France") as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3)
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(model="fusion", messages=QUESTION,
                                                            response_format=JSON_SCHEMA)  # fmt: skip
            objects = _client(server).chat.completions.create(model="fusion", messages=QUESTION,
                                                              response_format={"type": "json_object"})  # fmt: skip
    answer = json.loads(reply.choices[0].message.content)
    jsonschema.validate(answer, CITY)
    assert answer == {"city": "Paris, France", "population": 2100000}
    assert isinstance(json.loads(objects.choices[0].message.content), dict)
    assert all(body.get("response_format") for body in stub.requests), "JSON mode asked of every call"
    structured = [body["response_format"] for body in stub.requests[:4]]  # the json_schema request's four calls
    assert all(f["type"] == "json_schema" and CITY in f["json_schema"]["schema"]["$defs"].values() for f in structured)
    assert stub.requests[-1]["response_format"] == {"type": "json_object"}


def test_an_invalid_json_fusion_falls_back_to_a_valid_candidate_or_fails(tmp_path):
    with _json_stub(None) as stub:  # the fusor's city is null: not a string
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2, fallback="select")
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(model="fusion", messages=QUESTION,
                                                            response_format=JSON_SCHEMA)  # fmt: skip
        strict = write_config(tmp_path / "s.yaml", {"stub": stub.api_base}, "stub", n=2, fallback="raise")
        with fusion_server(strict) as server, pytest.raises(openai.APIStatusError) as failed:
            _client(server).chat.completions.create(model="fusion", messages=QUESTION, response_format=JSON_SCHEMA)
    answer = json.loads(reply.choices[0].message.content)
    jsonschema.validate(answer, CITY)
    assert answer["city"] == "Paris"
    fallback = reply.model_extra["fusion"]["fallback"]
    assert fallback["cause"]["kind"] == "invalid" and fallback["selected_index"] in (0, 1)
    assert failed.value.status_code == 502, "an invalid answer is never returned as a success"


def test_stop_sequences_cut_the_candidates_and_the_answer(tmp_path):
    def respond(call):
        if is_fusor(call):
            return {"comparison": "same", "response": "Paris. END and more"}
        return {"response": f"Candidate {call.index} says Paris. END secret tail"}

    with StubOpenAIServer(respond=respond) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(model="fusion", messages=QUESTION, stop=[" END"],
                                                            extra_body={"fusion": {"return_candidates": True}})
            streamed = "".join(c.choices[0].delta.content or "" for c in _client(server).chat.completions.create(
                model="fusion", messages=QUESTION, stop=". END and", stream=True) if c.choices)  # fmt: skip
    assert reply.choices[0].message.content == "Paris." and streamed == "Paris"
    assert all(c["text"].endswith("says Paris.") for c in reply.model_extra["fusion"]["candidates"])
    assert "secret tail" not in stub.requests[2]["messages"][-1]["content"], "the fusor saw the cut candidates"


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"required": "city"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    # a reference outside the schema would make the server fetch a URL of the client's choosing
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "http://169.254.169.254/latest/meta-data"}}}}}]},
     "tools[0].function.parameters"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "file:///etc/x"}}}},
     "response_format.json_schema.schema"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])  # fmt: skip
def test_bad_agent_requests_get_400_naming_the_field(config, stub, extra, param):
    with fusion_server(config) as server:
        response = httpx.post(f"{server.base_url}/chat/completions",
                              json={"model": "fusion", "messages": QUESTION, **extra}, timeout=30)  # fmt: skip
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"]
    assert stub.requests == [], "nothing is sent upstream for a bad request"


def test_named_tool_choice_and_no_parallel_calls_hold_the_fusor_to_one_call_of_that_tool(tmp_path):
    def calls(call):  # the fusor calls both tools at once: more than parallel_tool_calls=false allows
        both = [{"name": "get_time", "arguments": {"timezone": "UTC"}}, {"name": "get_weather",
                                                                        "arguments": {"city": "Paris"}}]
        return both if is_fusor(call) else both[:1]

    with StubOpenAIServer(respond=panel_text, tool_calls=calls) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2, fallback="select")
        with fusion_server(config) as server:
            reply = _client(server).chat.completions.create(
                model="fusion", messages=QUESTION, tools=TOOLS, parallel_tool_calls=False,
                tool_choice={"type": "function", "function": {"name": "get_time"}})  # fmt: skip
    message = reply.choices[0].message
    assert [call.function.name for call in message.tool_calls] == ["get_time"]
    assert "parallel_tool_calls" in reply.model_extra["fusion"]["fallback"]["cause"]["message"]
    assert {json.dumps(body["tool_choice"]) for body in stub.requests} == {
        json.dumps({"type": "function", "function": {"name": "get_time"}})}
    assert {body["parallel_tool_calls"] for body in stub.requests} == {False}


def test_best_of_n_keeps_one_proposal_whole(config, stub):
    with fusion_server(config) as server:
        reply = _client(server).chat.completions.create(model="best-of-n", messages=QUESTION, tools=TOOLS)
    message, fusion = reply.choices[0].message, reply.model_extra["fusion"]
    kept = fusion["candidates"][fusion["selected_index"]]["proposal"]
    if kept["tool_calls"]:
        check_tool_calls(message)
        assert [c.function.name for c in message.tool_calls] == [c["name"] for c in kept["tool_calls"]]
    else:
        assert message.content == kept["content"] and reply.choices[0].finish_reason == "stop"
    assert len(stub.requests) == 3, "three proposals, no fusor (a vote)"


def test_a_streamed_json_answer_equals_the_non_streamed_one(tmp_path):
    with _json_stub("Paris") as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            kwargs = {"model": "fusion", "messages": QUESTION, "response_format": JSON_SCHEMA}
            whole = _client(server).chat.completions.create(**kwargs).choices[0].message.content
            chunks = list(_client(server).chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_tools_and_a_json_schema_together_end_in_a_valid_json_answer(tmp_path):
    def respond(call):
        extra = {"comparison": "ok"} if is_fusor(call) else {}
        return {**extra, "response": {"city": "Paris", "population": 2100000}}

    with StubOpenAIServer(respond=respond, tool_calls=panel_tool_calls) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3)
        with fusion_server(config) as server:
            messages, finishes = list(QUESTION), []
            for _ in range(3):
                reply = _client(server).chat.completions.create(model="fusion", messages=messages, tools=TOOLS,
                                                                response_format=JSON_SCHEMA)  # fmt: skip
                finishes.append(reply.choices[0].finish_reason)
                if reply.choices[0].message.tool_calls:
                    check_tool_calls(reply.choices[0].message)
                    messages = answer_tools(messages, reply.choices[0].message)
    assert finishes == ["tool_calls", "tool_calls", "stop"]
    jsonschema.validate(json.loads(reply.choices[0].message.content), CITY)


def test_an_agents_answer_cut_at_max_tokens_says_length_and_its_tool_calls_still_say_tool_calls(tmp_path):
    """A final answer whose fusor reply was cut ends with "length", streamed or not; a tool-call decision keeps
    "tool_calls" (the fusor's reply is cut in both, the panel's in neither)."""
    cut = lambda call: "length" if is_fusor(call) else "stop"  # noqa: E731
    with StubOpenAIServer(respond=panel_text, tool_calls=panel_tool_calls, finish_reason=cut) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3, fallback="select")
        with fusion_server(config) as server:
            client, answer = _client(server), {"messages": QUESTION, "tools": TOOLS, "tool_choice": "none"}
            reply = client.chat.completions.create(model="fusion", **answer)
            stream = client.chat.completions.create(model="fusion", stream=True, **answer)
            streamed = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
            decision = client.chat.completions.create(model="fusion", messages=QUESTION, tools=TOOLS)
    assert reply.choices[0].message.content == FINAL and [reply.choices[0].finish_reason, *streamed] == ["length"] * 2
    assert reply.model_extra["fusion"]["fusor_truncated"] is True
    assert decision.choices[0].finish_reason == "tool_calls" and decision.choices[0].message.tool_calls

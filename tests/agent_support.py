"""Shared by the agent tests: two tools, a scripted panel that proposes different tool calls, and a 3-turn loop."""

import json

import jsonschema

from fusion_dspy.testing import ScriptedCall

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}  # fmt: skip
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "enum": ["Europe/Paris", "UTC"]}},
                   "required": ["timezone"]}}}  # fmt: skip
TOOLS = [WEATHER, TIME]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
QUESTION = [{"role": "user", "content": "What is the weather and the time in Paris?"}]
RESULTS = {"get_weather": "18 C, sunny", "get_time": "14:05"}
FINAL = "It is 18 C and sunny in Paris, and 14:05."

CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}  # fmt: skip


def turn(call: ScriptedCall) -> int:
    """How many tool results the conversation already holds: 0, 1, 2."""
    return call.inputs.get("conversation", "").count("Tool (result of")


def is_fusor(call: ScriptedCall) -> bool:
    return call.wants("comparison")


def panel_tool_calls(call: ScriptedCall) -> list[dict] | None:
    """Turn 1: the panel proposes get_weather, get_time, or a text answer (by arrival); the fusor decides weather.
    Turn 2: the fusor calls get_time. Turn 3: text only. Nothing without tools in the request."""
    if not call.extra.get("tools"):
        return None
    weather, time = {"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time",
                                                                            "arguments": {"timezone": "Europe/Paris"}}
    step = turn(call)
    if is_fusor(call):
        return [[weather], [time], None][step]
    if step == 2:
        return None
    return [[weather], [time], None][call.index % 4]  # three proposals per turn: different ones


def panel_text(call: ScriptedCall) -> dict:
    if is_fusor(call):
        return {"comparison": "sample 1 and 2 agree", "response": FINAL}
    return {"response": "I would need to look that up."}


def check_tool_calls(message) -> None:
    """Each tool call has an id, names a tool and has arguments valid against its schema."""
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.id and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def answer_tools(messages: list, message) -> list:
    """The conversation after the client ran the tools the assistant called."""
    calls = [{"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
             for c in message.tool_calls]  # fmt: skip
    results = [{"role": "tool", "tool_call_id": c.id, "content": RESULTS[c.function.name]} for c in message.tool_calls]
    return [*messages, {"role": "assistant", "content": message.content, "tool_calls": calls}, *results]

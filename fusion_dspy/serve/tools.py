"""Tools on the wire: OpenAI's ``tools``, ``tool_choice``, ``response_format`` and tool calls, as validated data.

A request's tools are checked before anything is sent upstream (a tool without a name, a ``parameters`` object
that is no JSON Schema, a ``tool_choice`` naming an unknown function: a 400 naming the field). A client's tool
becomes a ``ClientTool``: a ``dspy.Tool`` the client runs, sent to the models exactly as the client wrote it.
"""

import json
import uuid
from typing import Any, Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fusion_dspy.core.json_output import check_schema

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def _schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None:
        check_schema(schema)
    return schema


class FunctionSpec(BaseModel):
    """A function the model may call: OpenAI's ``tools[i].function``."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="letters, digits, _ and -, at most 64")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _valid_parameters = field_validator("parameters")(lambda cls, value: _schema(value))


class ToolSpec(BaseModel):
    """One entry of ``tools``: ``{"type": "function", "function": {...}}``."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionSpec


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: call this function."""

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaSpec(BaseModel):
    """``response_format.json_schema``: a named JSON Schema the answer must fit."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = "answer"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    _valid_schema = field_validator("schema_")(lambda cls, value: _schema(value))


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` (any JSON object) or ``json_schema``."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JSONSchemaSpec | None = None


class MessageFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str = ""


class MessageToolCall(BaseModel):
    """A tool call of an earlier ``assistant`` message."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["function"] = "function"
    function: MessageFunction


class ClientTool(dspy.Tool):
    """A tool the client runs: shown to the models as the client wrote it; fusion-dspy never calls it.

    Args:
        spec: The validated ``tools`` entry.

    Example:
        >>> spec = ToolSpec(type="function", function={"name": "get_weather", "parameters": {
        ...     "type": "object", "properties": {"city": {"type": "string"}}}})
        >>> tool = ClientTool(spec)
        >>> tool.name, tool.format_as_litellm_function_call()["function"]["parameters"]["properties"]
        ('get_weather', {'city': {'type': 'string'}})
    """

    spec: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, spec: ToolSpec):
        parameters = spec.function.parameters or EMPTY_PARAMETERS
        super().__init__(_client_side, name=spec.function.name, desc=spec.function.description or "",
                         args=dict(parameters.get("properties") or {}))  # fmt: skip
        self.spec, self.parameters = spec.model_dump(exclude_none=True), parameters

    def format_as_litellm_function_call(self) -> dict[str, Any]:
        return self.spec


def _client_side(**arguments: Any) -> Any:
    raise RuntimeError("This tool runs on the client: fusion-dspy returns its calls, it never runs them.")


def wire_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """``dspy.ToolCalls`` (or ``None``) as OpenAI's ``tool_calls`` list, each with a fresh ``call_...`` id.

    Example:
        >>> calls = dspy.ToolCalls.from_dict_list([{"name": "add", "args": {"x": 1}}])
        >>> [(c["type"], c["function"]) for c in wire_tool_calls(calls)]
        [('function', {'name': 'add', 'arguments': '{"x": 1}'})]
    """
    return [{"id": call.id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.args, ensure_ascii=False)}}
            for call in listed(calls)]  # fmt: skip


def listed(calls: Any) -> list[Any]:
    """The ``ToolCall``s of a ``dspy.ToolCalls`` value, or of its dict form (none for ``None``)."""
    if isinstance(calls, dict) and calls.get("tool_calls"):
        calls = dspy.ToolCalls.model_validate(calls)
    return list(calls.tool_calls) if isinstance(calls, dspy.ToolCalls) else []

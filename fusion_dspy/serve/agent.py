"""What an agent asks of a fusion model: tools, a tool choice, a JSON answer, stop sequences; and what it gets back.

``Agent.of(request)`` reads these fields of a validated request (``None`` for plain chat). The agent's program is
the chat task with its fields typed for the request: ``tools: list[dspy.Tool]`` in and ``tool_calls:
dspy.ToolCalls`` out (DSPy's adapters send the tools through the backend's native function calling where the LM
has it, and ask for the calls as a field otherwise), a ``response`` typed by the JSON Schema (``json_type``). Each
panel member proposes an answer or tool calls; the fusor sees the proposals and writes one decision. The
``Agent`` is also the ``Contract`` every reply is held to (``CheckedAdapter``): a reply cut at the first stop
sequence; tool calls that name a given tool, with arguments valid against its ``parameters``, as many as
``parallel_tool_calls`` allows, as ``tool_choice`` demands; a JSON answer valid against the schema.
"""

import json
from dataclasses import dataclass
from typing import Any

import dspy

from fusion_dspy.backends.retries import CappedRetryLM
from fusion_dspy.core.checked import CheckedAdapter
from fusion_dspy.core.json_output import JSON_OBJECT, JSONValue, json_type, schema_problems
from fusion_dspy.serve.chat import ChatReply
from fusion_dspy.serve.tools import ClientTool, ToolSpec, listed, wire_tool_calls

OPENAI_COMPATIBLE = ("openai", "hosted_vllm")  # model prefixes whose servers speak OpenAI's tools API
TOOL_INSTRUCTIONS = ("Write the assistant's next reply in this conversation, or call one or more of the tools "
                     "when the reply needs what they give: leave the response empty when you call tools.")  # fmt: skip


@dataclass(frozen=True)
class Agent:
    """The agent fields of one request (see the module doc).

    Args:
        tools: The request's tools (none when ``tool_choice`` is ``"none"``: the answer is then text).
        tool_choice: ``"auto"``, ``"required"`` or the name of the one function to call.
        parallel_tool_calls: ``False``: at most one tool call per decision.
        schema: The JSON Schema of the answer (``{"type": "object"}`` for ``json_object``); ``None``: text.
        stop: Stop sequences: each reply is cut before the first one.

    Example:
        >>> agent = Agent(stop=("\\n\\n",))
        >>> output = {"response": "Paris.\\n\\nMore text"}
        >>> agent.review(output), output["response"]
        ([], 'Paris.')
    """

    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    schema: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def of(cls, request: Any) -> "Agent | None":
        """The agent fields of a ``ChatCompletionRequest``; ``None`` when it has none (plain chat)."""
        choice = request.tool_choice or "auto"
        choice = choice if isinstance(choice, str) else choice.function.name
        tools = tuple(request.tools or ()) if choice != "none" else ()
        fmt = request.response_format
        schema = None
        if fmt is not None and fmt.type == "json_object":
            schema = JSON_OBJECT
        elif fmt is not None and fmt.type == "json_schema":
            schema = (fmt.json_schema.schema_ if fmt.json_schema else None) or {"type": "object"}
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        agent = cls(tools, choice, request.parallel_tool_calls is not False, schema, tuple(s for s in stop if s))
        return agent if (agent.tools or agent.schema is not None or agent.stop) else None

    @property
    def key(self) -> str:
        """One string per distinct agent (a profile keeps a program per key)."""
        return json.dumps([[t.model_dump(exclude_none=True) for t in self.tools], self.tool_choice,
                           self.parallel_tool_calls, self.schema, self.stop], sort_keys=True)  # fmt: skip

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return {tool.function.name: ClientTool(tool).parameters for tool in self.tools}

    def signature(self) -> type[dspy.Signature]:
        """The chat task typed for this request: tools in and tool calls out; the response typed by the schema."""
        task = ChatReply
        if self.schema is not None:
            task = task.with_updated_fields("response", type_=json_type(self.schema, "JSONAnswer", checked=False),
                                            desc="the assistant's next message, as JSON")  # fmt: skip
        if self.tools:
            task = task.append("tools", dspy.InputField(desc="the tools you may call"), type_=list[dspy.Tool])
            task = task.append("tool_calls", dspy.OutputField(desc="the tool calls to make, if any"),
                               type_=dspy.ToolCalls).with_instructions(TOOL_INSTRUCTIONS)  # fmt: skip
        return task

    def inputs(self, conversation: str) -> dict[str, Any]:
        return {"conversation": conversation, **({"tools": [ClientTool(t) for t in self.tools]} if self.tools else {})}

    def adapter(self, configured: dspy.Adapter | None) -> CheckedAdapter:
        """The configured adapter held to this contract; for tools or JSON, DSPy's Chat or JSON adapter with native
        function calling (the JSON adapter when the answer is JSON or the model's adapter is the JSON one)."""
        inner = configured or dspy.ChatAdapter()
        if self.tools or self.schema is not None:
            json_mode = self.schema is not None or isinstance(configured, dspy.JSONAdapter)
            inner = (dspy.JSONAdapter if json_mode else dspy.ChatAdapter)(use_native_function_calling=True)
        return CheckedAdapter(inner, self)

    def arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A program's constructor arguments for this agent: LMs that send tools natively (``lm``), every call held
        to the contract, and one request per sample (each sample is checked on its own)."""
        changed = {**arguments, "lm": self.lm(arguments.get("lm")), "lms": [self.lm(x) for x in arguments.get("lms")
                                                                               or ()] or None}  # fmt: skip
        changed["sampling"] = arguments["sampling"].replace(adapter=self.adapter(arguments["sampling"].adapter),
                                                            batch_samples=False)  # fmt: skip
        if "fusing" in arguments:
            changed["fusing"] = arguments["fusing"].replace(adapter=self.adapter(arguments["fusing"].adapter))
            changed["fusor_lm"] = self.lm(arguments.get("fusor_lm"))
        return changed

    def lm(self, lm: Any) -> Any:
        """A copy of ``lm`` that sends tools natively, and a JSON Schema as structured output (DSPy's JSON adapter
        puts the schema in its own, as the ``response`` field's), when it reaches an OpenAI-compatible server."""
        structured = self.schema is not None and self.schema != JSON_OBJECT
        if lm is None or not (self.tools or structured):
            return lm
        copy = lm.copy()
        if isinstance(copy, CappedRetryLM) and copy.model.split("/")[0] in OPENAI_COMPATIBLE:
            copy.function_calling = copy.function_calling or bool(self.tools) or None
            copy.response_schema = copy.response_schema or structured or None
        return copy

    def lm_kwargs(self) -> dict[str, Any]:
        if not self.tools:
            return {}
        choice = self.tool_choice
        wire = choice if choice in ("auto", "required") else {"type": "function", "function": {"name": choice}}
        return {"tool_choice": wire, **({} if self.parallel_tool_calls else {"parallel_tool_calls": False})}

    def review(self, output: dict[str, Any], signature: Any = None) -> list[str]:
        """Cut the response at the first stop sequence; list what breaks the contract (``[]``: nothing)."""
        response = output.get("response")
        if isinstance(response, str) and self.stop:
            cut = min((response.find(s) for s in self.stop if s in response), default=-1)
            output["response"] = response = response[:cut] if cut >= 0 else response
        calls = listed(output.get("tool_calls"))
        if calls:
            return self._call_problems(calls)
        problems = []
        if (self.tool_choice == "required" and self.tools) or self.tool_choice not in ("auto", "required", "none"):
            problems.append(f"tool_choice {self.tool_choice!r} asks for a tool call, and the reply has none")
        if self.schema is not None:
            value = response.root if isinstance(response, JSONValue) else response
            problems += ([f"response: {problem}" for problem in schema_problems(value, self.schema)]
                         if value is not None else ["no JSON answer and no tool call"])  # fmt: skip
        elif response is None or not str(response).strip():
            problems.append("no reply and no tool call")
        return problems

    def _call_problems(self, calls: list[Any]) -> list[str]:
        parameters, problems = self.parameters, []
        if not self.tools:
            problems.append("a tool call, but no tools may be called (tool_choice 'none' or no tools)")
        if not self.parallel_tool_calls and len(calls) > 1:
            problems.append(f"{len(calls)} tool calls, and parallel_tool_calls is false (at most one)")
        for i, call in enumerate(calls):
            if call.name not in parameters:
                problems.append(f"tool call {i}: {call.name!r} is not one of the tools {sorted(parameters)}")
            elif self.tool_choice not in ("auto", "required") and call.name != self.tool_choice:
                problems.append(f"tool call {i}: {call.name!r}, and tool_choice names {self.tool_choice!r}")
            else:
                problems += [f"tool call {i} ({call.name}) arguments: {problem}"
                             for problem in schema_problems(call.args, parameters[call.name])]  # fmt: skip
        return problems

    def message(self, prediction: Any, finish_reason: str = "stop") -> tuple[dict[str, Any], str]:
        """The assistant message and ``finish_reason`` of a decision: tool calls (``"tool_calls"``), or the (JSON)
        answer with ``finish_reason``, the report's (``"length"`` when the answer was cut at max_tokens)."""
        calls = wire_tool_calls(prediction.get("tool_calls"))
        text = self.text(prediction.get("response"))
        if calls:
            return {"role": "assistant", "content": text or None, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, finish_reason

    def proposal(self, prediction: Any) -> dict[str, Any]:
        """One panel member's proposal, for the report: its answer and its tool calls (name and arguments)."""
        calls = [{"name": call.name, "arguments": call.args} for call in listed(prediction.get("tool_calls"))]
        return {"content": self.text(prediction.get("response")) or None, "tool_calls": calls}

    @staticmethod
    def text(response: Any) -> str:
        if isinstance(response, JSONValue):
            response = response.root
        if isinstance(response, (dict, list)):
            return json.dumps(response, ensure_ascii=False)
        return "" if response is None else str(response).strip()


def agent_deltas(message: dict[str, Any], piece: int = 32) -> list[dict[str, Any]]:
    """A decision as OpenAI streams it: the text, or per tool call its id and name, then its arguments in pieces.

    Example:
        >>> call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"x": 1}'}}
        >>> for delta in agent_deltas({"role": "assistant", "content": None, "tool_calls": [call]}, piece=4):
        ...     print(delta["tool_calls"][0])
        {'index': 0, 'id': 'call_1', 'type': 'function', 'function': {'name': 'add', 'arguments': ''}}
        {'index': 0, 'function': {'arguments': '{"x"'}}
        {'index': 0, 'function': {'arguments': ': 1}'}}
    """
    deltas = [{"content": message["content"]}] if message.get("content") else []
    for index, call in enumerate(message.get("tool_calls") or ()):
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
        arguments = call["function"]["arguments"]
        deltas.append({"tool_calls": [head]})
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": arguments[i:i + piece]}}]}
                   for i in range(0, len(arguments), piece)]  # fmt: skip
    return deltas

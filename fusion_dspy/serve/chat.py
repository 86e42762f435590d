"""Chat in, chat out: an OpenAI ``messages`` list as a task's input, and a prediction as one assistant reply.

The whole conversation (system prompt and every earlier turn) is the input, rendered as one transcript, so a
served program sees what the caller said before and not only the last line. A single user message is passed as
its own text, unchanged, so a program tuned on single questions gets exactly the input it was tuned on.
"""

from collections.abc import Sequence
from typing import Any

import dspy
from dspy.signatures.signature import Signature

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class ChatReply(dspy.Signature):
    """Write the assistant's next reply in this conversation."""

    conversation: str = dspy.InputField(desc="the conversation so far, oldest message first")
    response: str = dspy.OutputField(desc="the assistant's next message")


def message_text(content: str | Sequence[dict[str, Any]] | None) -> str:
    """The text of one message's ``content``: a string, or the joined ``text`` parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def render_conversation(messages: Sequence[dict[str, Any]]) -> str:
    """One transcript of the messages; a lone user message is its own text.

    Example:
        >>> render_conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        'System: Be brief.\\n\\nUser: Hi'
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return message_text(messages[0].get("content"))
    return "\n\n".join(_turn(m) for m in messages)


def _turn(message: dict[str, Any]) -> str:
    """One message of the transcript: its text, the tool calls an assistant made, the call a tool result answers.

    Example:
        >>> _turn({"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
        ...        "function": {"name": "add", "arguments": '{"x": 1}'}}]})
        'Assistant: [tool call call_1: add({"x": 1})]'
        >>> _turn({"role": "tool", "tool_call_id": "call_1", "content": "2"})
        'Tool (result of call_1): 2'
    """
    role = ROLE_NAMES[message["role"]]
    if message.get("tool_call_id"):
        role += f" (result of {message['tool_call_id']})"
    parts = [message_text(message.get("content"))]
    for call in message.get("tool_calls") or ():
        function, label = call.get("function", {}), f"tool call {call['id']}" if call.get("id") else "tool call"
        parts.append(f"[{label}: {function.get('name')}({function.get('arguments', '')})]")
    return f"{role}: " + " ".join(part for part in parts if part)


def reply_fields(task: type[Signature]) -> list[str]:
    """The output fields that make up the reply: all of the task's outputs except a ``reasoning`` field."""
    outputs = list(task.output_fields)
    return [name for name in outputs if name != "reasoning"] or outputs


def reply_text(prediction: Any, fields: Sequence[str]) -> str:
    """The assistant's reply: the one reply field's value, or ``field: value`` lines when there are several."""
    if len(fields) == 1:
        return str(prediction[fields[0]]).strip()
    return "\n".join(f"{name}: {str(prediction[name]).strip()}" for name in fields)

"""What a test double was asked, read the same way off a DSPy request and off an OpenAI HTTP body.

Both doubles (``scripted_lm``'s engine and ``StubOpenAIServer``) hand a ``ScriptedCall`` to the test's
``respond(call)``, which answers with a dict of output fields (formatted for the request's adapter by
``format_reply``) or a raw string.
"""

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_OUTPUT_FIELDS = re.compile(r"^\d+\. `(\w+)`", re.MULTILINE)
_SECTION = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n*\Z|\n\nRespond with)", re.DOTALL)


@dataclass
class ScriptedCall:
    """What a test double was asked: the parsed prompt of one request."""

    system: str
    user: str
    inputs: dict[str, str]
    output_fields: list[str]
    temperature: float | None
    json_mode: bool
    index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def wants(self, *names: str) -> bool:
        """True when the request asks for all these output fields (tells a fusor call from a generator call)."""
        return all(name in self.output_fields for name in names)


Responder = Callable[[ScriptedCall], "dict[str, Any] | str"]


def parse_prompt(system: str, user: str, temperature: float | None, json_mode: bool, index: int) -> ScriptedCall:
    r"""The call a DSPy adapter's system and last user message describe.

    Example:
        >>> call = parse_prompt("Your output fields are:\n1. `answer` (str)", "[[ ## question ## ]]\n2+2?", 0.7,
        ...                     False, 0)
        >>> call.inputs, call.output_fields, call.wants("answer")
        ({'question': '2+2?'}, ['answer'], True)
    """
    outputs_block = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
    return ScriptedCall(
        system=system,
        user=user,
        inputs={name: value.strip() for name, value in _SECTION.findall(user)},
        output_fields=_OUTPUT_FIELDS.findall(outputs_block),
        temperature=temperature,
        json_mode=json_mode or "Respond with a JSON object" in user,
        index=index,
    )


def parse_body(body: dict[str, Any], index: int) -> ScriptedCall:
    """The call an OpenAI chat-completions body describes (system message first, the last message the user's)."""
    messages = body.get("messages") or [{}]
    system = str(messages[0].get("content", "")) if messages[0].get("role") == "system" else ""
    return parse_prompt(system, str(messages[-1].get("content", "")), body.get("temperature"),
                        body.get("response_format") is not None, index)  # fmt: skip


def format_reply(call: ScriptedCall, reply: "dict[str, Any] | str") -> str:
    """A dict of field values in the format the request's adapter parses; a string is sent as it is."""
    if isinstance(reply, str):
        return reply
    if call.json_mode:
        return json.dumps(reply)
    sections = [f"[[ ## {name} ## ]]\n{value}" for name, value in reply.items()]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


class InFlight:
    """Counts the requests a test double is answering at once: proof of concurrency without timing anything.

    With ``rendezvous=k`` every request waits until ``k`` requests have been in flight together, so a test of
    concurrency passes whatever the machine's load, and fails with a clear error (after ``timeout`` seconds)
    when the caller sends them one after another.

    Example:
        >>> gate = InFlight(rendezvous=1)
        >>> gate.enter(); gate.wait(); gate.exit()
        >>> gate.peak, gate.now
        (1, 0)
    """

    def __init__(self, rendezvous: int | None = None, timeout: float = 20.0):
        self.rendezvous, self.timeout = rendezvous, timeout
        self.now = 0
        self.peak = 0
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self._changed.notify_all()

    def exit(self) -> None:
        with self._changed:
            self.now -= 1

    def _met(self) -> bool:
        return self.rendezvous is None or self.peak >= self.rendezvous

    def _missed(self) -> RuntimeError:
        return RuntimeError(f"only {self.peak} of the {self.rendezvous} requests awaited were ever in flight together "
                            f"(waited {self.timeout:.0f} s): the caller does not send them concurrently")

    def wait(self) -> None:
        """Block until the rendezvous is met (at once without one)."""
        with self._changed:
            if not self._changed.wait_for(self._met, timeout=self.timeout):
                raise self._missed()

    async def await_met(self) -> None:
        """The async twin of ``wait``: the event loop keeps running the other requests meanwhile."""
        deadline = time.monotonic() + self.timeout
        while not self._met():
            if time.monotonic() > deadline:
                raise self._missed()
            await asyncio.sleep(0.002)

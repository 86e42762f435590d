"""One ``dspy.LM`` call for ``n`` completions on the native engine: one request with the OpenAI ``n`` parameter.

DSPy's engine contract is one request, one ``Response`` (one message): ``dspy.LM`` asks a custom engine ``n``
times for ``n`` completions, the same request each time. The engine pair of such a call
(``NativeEngine.for_n(n)``, which ``fusion_dspy.core.batching`` puts on the batched call's LM copy) sends the first
with ``n`` and answers the next ``n - 1`` with the reply's other choices, so DSPy builds its ``n`` completions,
usage, history and cache entry as for any engine. The request's usage goes with the first choice: the prompt was
sent and billed once.
"""

import contextlib
import json
from dataclasses import replace
from typing import Any

from dspy import lm15

from fusion_dspy.core.batching import IgnoredN

NO_USAGE = lm15.Usage(input_tokens=0, output_tokens=0, total_tokens=0)  # a batch's later choices: billed with the first


@contextlib.contextmanager
def transport_errors():
    """A failure of the provider client's transport (connecting, sending, reading) as lm15's ``TransportError``, as
    the client's own requests report it."""
    try:
        yield
    except lm15.LM15Error:
        raise
    except Exception as error:  # the transport's own error types are not public names of DSPy
        raise lm15.TransportError(str(error)) from error


def read_choices(dialect: Any, status: int, body: bytes, n: int, model: str) -> list[lm15.Response]:
    """Each choice of a Chat Completions reply as a ``Response``, the request's usage with the first.

    Args:
        dialect: The route's lm15 provider client: it turns an HTTP error into lm15's typed error.
        status: The reply's HTTP status.
        body: The reply's body.
        n: The number of choices asked for; another number raises ``IgnoredN`` (a server that ignores ``n``).
        model: The model the server was asked for.

    Example:
        >>> reply = {"choices": [{"index": i, "message": {"role": "assistant", "content": f"answer {i}"},
        ...                       "finish_reason": "stop"} for i in range(2)],
        ...          "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}
        >>> first, second = read_choices(None, 200, json.dumps(reply).encode(), 2, "m")
        >>> [(r.message.parts[0].text, r.usage.input_tokens) for r in (first, second)]
        [('answer 0', 9), ('answer 1', 0)]
    """
    if status >= 400:
        raise dialect.normalize_error(status, body.decode("utf-8", errors="replace"))
    reply = json.loads(body)
    found = len(reply.get("choices") or [])
    if found != n:
        raise IgnoredN(f"asked {model} for n={n} choices in one request, got {found}: the server ignores `n`")
    # Each Response keeps its body as ``provider_data`` and checks all of it: given the whole reply, N choices
    # would cost N x N (at n=64, 30 ms of CPU a call); each gets the reply with its own choice alone.
    responses = [lm15.response_from_openai_chat({**reply, "choices": [choice]}, model=model)
                 for choice in reply["choices"]]  # fmt: skip
    return responses[:1] + [replace(response, usage=NO_USAGE) for response in responses[1:]]


class NChoices:
    """The engine of one ``dspy.LM`` call for ``n`` completions, which DSPy asks ``n`` times: the first request goes
    out once with ``n``, the next ``n - 1`` identical requests are answered with the reply's other choices.

    Args:
        engine: The native engine of the LM.
        n: The number of completions of the call.

    Example:
        >>> from fusion_dspy.backends.native import NativeEngine
        >>> with StubOpenAIServer(respond=lambda call: {"answer": f"answer {call.index}"}) as server:
        ...     lm = dspy.LM("openai/stub", engine=NativeEngine("openai/stub", server.api_base), cache=False)
        ...     engine, async_engine = lm.engine.for_n(3)
        ...     lm = lm.copy(engine=engine, async_engine=async_engine, n=3)
        ...     prediction = dspy.Predict("question -> answer")(question="2 + 2?", lm=lm)
        ...     [c.answer for c in prediction.completions], [body["n"] for body in server.requests]
        (['answer 0', 'answer 1', 'answer 2'], [3])
    """

    def __init__(self, engine: Any, n: int):
        self.engine, self.n = engine, n
        self._request: lm15.Request | None = None
        self._left: list[lm15.Response] = []

    def _take(self, request: lm15.Request) -> lm15.Response | None:
        return self._left.pop(0) if self._left and request == self._request else None

    def _keep(self, request: lm15.Request, responses: list[lm15.Response]) -> lm15.Response:
        self._request, self._left = request, responses[1:]
        return responses[0]

    def complete(self, request: lm15.Request) -> lm15.Response:
        if (kept := self._take(request)) is not None:
            return kept
        return self._keep(request, self.engine.choices(request, self.n))

    def stream(self, request: lm15.Request):
        """A stream is one choice: it is the LM's own request (``dspy.streamify`` sends no ``n``)."""
        return self.engine.stream(request)

    def close(self) -> None:
        """The LM's engine stays open: it serves the LM's other calls."""


class AsyncNChoices(NChoices):
    """The async twin of ``NChoices``."""

    async def complete(self, request: lm15.Request) -> lm15.Response:  # type: ignore[override]
        if (kept := self._take(request)) is not None:
            return kept
        return self._keep(request, await self.engine.choices(request, self.n))

    async def aclose(self) -> None:
        """The LM's engine stays open: it serves the LM's other calls."""

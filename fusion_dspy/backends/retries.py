"""Retries that honour a server's ``Retry-After`` up to a cap: the ``dspy.LM`` a config builds for each model.

DSPy 3.4 retries a failed request itself (``num_retries``) and, before each retry, sleeps whatever finite
``Retry-After`` the server sent: no upper bound, and no DSPy or litellm setting gives one (DSPy owns the loop,
in ``dspy/clients/execution.py``; its engines, litellm included, send one attempt each). The per-request
``timeout`` does not bound it either, since the wait is between requests: a 429 with ``Retry-After: 3600``
held a sample for an hour per retry. (litellm and the OpenAI SDK honour a ``Retry-After`` of at most 60 s, but
DSPy does not let them retry.)

So ``CappedRetryLM`` turns DSPy's loop off (``num_retries=0``) and retries the way DSPy documents for callers:
``dspy.is_retryable_lm_error`` says which errors (rate limits, timeouts, server and transport errors), the
error's ``retry_after`` says how long. The same errors are retried as often as DSPy would, with DSPy's backoff
(1, 2, 4 ... s) when the server gives no hint; a hint up to ``max_retry_wait_s`` is waited for; a longer one
ends the request at once with the same error type, saying so (a retry sent sooner would be refused again).
Streamed replies (``dspy.streamify``) are retried only on errors that carry an HTTP status, which arrive
before any output: DSPy never replays a stream that already showed words, and neither does this.
"""

import asyncio
import itertools
import time
from typing import Any

import dspy

from fusion_dspy.backends.prices import PricedLM

# The longest Retry-After honoured by default: the OpenAI SDK's and litellm's own limit for a "reasonable" wait.
MAX_RETRY_WAIT_S = 60.0


class CappedRetryLM(PricedLM):
    """A ``dspy.LM`` whose retries wait at most ``max_retry_wait_s`` for a server's ``Retry-After`` (and whose
    calls' costs are recorded: ``fusion_dspy.backends.prices.PricedLM``).

    Args:
        model: The litellm model string, as for ``dspy.LM``.
        num_retries: Retries after the first request (DSPy's meaning); kept as ``retries``, while DSPy's own
            ``num_retries`` is 0.
        max_retry_wait_s: The longest wait before a retry (default 60). A server asking for longer ends the
            request at once; DSPy's own backoff is cut to it too.
        function_calling: Whether the model takes OpenAI ``tools`` (DSPy's adapters then send a ``dspy.Tool``
            input natively); ``None``: as litellm knows the model (a self-hosted model it does not know: no). The
            server sets it on its copies for an agent's request to an OpenAI-compatible endpoint.
        response_schema: Whether the model takes a JSON Schema as ``response_format`` (structured output: DSPy's
            JSON adapter then sends the output fields' schema); ``None``: as litellm knows the model. The server sets
            it on its copies for a ``json_schema`` request to an OpenAI-compatible endpoint (vLLM, OpenAI).
        **kwargs: Everything else ``dspy.LM`` takes (``engine``, ``api_base``, ``timeout``, ``cache`` ...).

    Example:
        >>> with StubOpenAIServer(respond=lambda call: {"answer": "4"}, status=429, retry_after=3600) as server:
        ...     lm = CappedRetryLM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm",
        ...                        cache=False, num_retries=2)
        ...     try:
        ...         dspy.Predict("question -> answer")(question="2 + 2?", lm=lm)
        ...     except dspy.LMRateLimitError as error:
        ...         print(len(server.requests), "longer than max_retry_wait_s=60" in str(error))
        1 True
    """

    def __init__(self, model: str, num_retries: int = 2, max_retry_wait_s: float = MAX_RETRY_WAIT_S,
                 function_calling: bool | None = None, response_schema: bool | None = None,
                 **kwargs: Any):  # fmt: skip
        if num_retries < 0 or max_retry_wait_s < 0:
            raise ValueError(f"num_retries and max_retry_wait_s must be 0 or more, got {num_retries} and "
                             f"{max_retry_wait_s}.")  # fmt: skip
        super().__init__(model, num_retries=0, **kwargs)
        self.retries, self.max_retry_wait_s = num_retries, max_retry_wait_s
        self.function_calling, self.response_schema = function_calling, response_schema

    @property
    def supports_function_calling(self) -> bool:
        known = getattr(self, "function_calling", None)  # None: also in states saved before this attribute
        return super().supports_function_calling if known is None else known

    @property
    def supports_response_schema(self) -> bool:
        known = getattr(self, "response_schema", None)
        return super().supports_response_schema if known is None else known

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        for attempt in itertools.count():  # ends: the last allowed attempt returns or raises
            try:
                return super().__call__(prompt, messages=messages, **kwargs)
            except dspy.LMError as error:
                wait = self._wait(error, attempt)
            time.sleep(wait)

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        for attempt in itertools.count():
            try:
                return await super().acall(prompt, messages=messages, **kwargs)
            except dspy.LMError as error:
                wait = self._wait(error, attempt)
            await asyncio.sleep(wait)

    def _wait(self, error: dspy.LMError, attempt: int) -> float:
        """Seconds to wait before retrying after ``error``; raises it (or why not) when there is no retry."""
        replayable = dspy.settings.send_stream is None or error.status is not None
        if attempt >= self.retries or not dspy.is_retryable_lm_error(error) or not replayable:
            raise error
        hint = error.retry_after
        if hint is None:
            return min(2.0 ** min(attempt, 6), 60.0, self.max_retry_wait_s)  # DSPy's backoff, capped
        if hint > self.max_retry_wait_s:
            raise too_long(error, hint, self.max_retry_wait_s) from error
        return hint


def too_long(error: dspy.LMError, wait: float, cap: float) -> dspy.LMError:
    """``error`` again (same type and metadata), saying the server's wait was over the cap and what to do."""
    message = (f"{error.message} The server asked to wait {wait:g} s before a retry, longer than "
               f"max_retry_wait_s={cap:g}: not retried. Raise the model's max_retry_wait_s to wait that long, or "
               "send fewer requests (lower n or fusion.max_concurrency).")  # fmt: skip
    return type(error)(message, code=error.code, model=error.model, provider=error.provider,
                       provider_code=error.provider_code, status=error.status, request_id=error.request_id,
                       retry_after=error.retry_after)  # fmt: skip

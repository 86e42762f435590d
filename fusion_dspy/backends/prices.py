"""What a model call cost in USD, from a maintained price table, or ``None`` when its price is not known.

The table is pydantic's ``genai-prices`` (its bundled snapshot: no network). litellm's own table is not used
here, so a model on the native engine never imports litellm; a model on the litellm engine keeps the cost litellm
computed for its reply (DSPy's ``cost`` in the LM's history), and this table prices the native engine's calls,
for which DSPy has no price (its custom-engine path reports none).

A model string names its price: ``"openai/gpt-4o-mini"`` is OpenAI's gpt-4o-mini (at any ``api_base``), priced by
the provider its prefix names (litellm's prefixes: ``openai``, ``anthropic``, ``gemini``, ``bedrock`` ...). A
string without a known provider prefix (``hosted_vllm/...``, ``openai/<an alias>``, ``embedded``) has no price:
its cost is ``None``, never 0 and never another provider's price for a similar name.

``PricedLM`` is the ``dspy.LM`` that records each billed call's cost where DSPy tracks usage
(``dspy.track_usage``, so the fusion report's stages): ``{model: {"prompt_tokens": ..., "cost": 0.00012}}``, the
shape gateways (OpenRouter) give ``usage``. DSPy hands a call's cost to ``update_history``; where no history is kept
(``dspy.configure(disable_history=True)``, as batch commands and the server run), or for a call that failed after
it was billed, the litellm engine's calls are priced by litellm's own ``cost_per_token`` from their usage. A billed
call whose cost stays unknown adds ``{"unpriced_calls": 1}`` instead (``fusion_dspy.core.meter.UNPRICED``), so a
model's summed ``cost`` is known to be partial and its stage's cost is unknown, not understated.
"""

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import dspy

from fusion_dspy.backends.in_place import bookkeeping_in_place
from fusion_dspy.backends.native import light_bookkeeping
from fusion_dspy.core.meter import UNPRICED

TABLE = "genai-prices"
# The costs DSPy handed the history during one PricedLM call, by the index of their usage entry in its tracker.
_GIVEN: ContextVar[dict[int, float] | None] = ContextVar("fusion_dspy_given_costs", default=None)


@functools.cache
def table_version() -> str:
    """The price table's name and version, e.g. ``"genai-prices 0.2.5"`` (what every estimate names)."""
    from importlib.metadata import version

    return f"{TABLE} {version(TABLE)}"


@functools.lru_cache(maxsize=4096)
def _priced(model: str) -> tuple[str, str] | None:
    """``(provider prefix, model)`` when the table has a token price for ``model``, else ``None``."""
    import genai_prices  # ~0.4 s to import: only once a model is looked up

    provider, _, name = model.partition("/")
    if not name:
        return None
    try:  # the provider the prefix names, exactly: an unknown prefix is not matched to another provider by name
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1, output_tokens=1), name, provider_id=provider)
    except (LookupError, ValueError):
        return None
    return provider, name


def _tokens(usage: dict[str, Any] | None) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of a usage, or ``None`` when it does not say both (a server that
    reports ``total_tokens`` alone; litellm reads that as 0 + 0 of a non-zero total): its price is then unknown,
    not that of 0 tokens."""
    usage = usage or {}
    prompt, completion, total = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    if prompt is None or completion is None or (not prompt and not completion and total):
        return None
    return int(prompt), int(completion)


def call_cost(model: str, usage: dict[str, Any] | None) -> float | None:
    """The USD cost of one call's OpenAI-style ``usage`` on ``model``, or ``None`` when its price is not known.

    Args:
        model: The LM's model string, litellm's spelling (``"openai/gpt-4o-mini"``).
        usage: ``prompt_tokens`` (cached ones included), ``completion_tokens`` and, when reported,
            ``prompt_tokens_details.cached_tokens`` (billed at the cache-read price).

    Example:
        >>> call_cost("openai/gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 500})  # $0.15 + $0.60/M
        0.00045
        >>> call_cost("hosted_vllm/my-llama", {"prompt_tokens": 1000, "completion_tokens": 500}) is None
        True
        >>> call_cost("openai/gpt-4o-mini", {"total_tokens": 1500}) is None  # which tokens were read, which written?
        True
    """
    priced, tokens = _priced(model), _tokens(usage)
    if priced is None or tokens is None:
        return None
    import genai_prices

    details = (usage or {}).get("prompt_tokens_details") or {}
    counts = {"input_tokens": tokens[0], "output_tokens": tokens[1],
              "cache_read_tokens": int(details.get("cached_tokens") or 0)}  # fmt: skip
    try:
        price = genai_prices.calc_price(genai_prices.Usage(**counts), priced[1], provider_id=priced[0])
    except (LookupError, ValueError):  # e.g. a usage dimension this model has no price for
        return None
    return float(price.total_price)


class PricedLM(dspy.LM):
    """A ``dspy.LM`` whose billed calls add their USD cost to the caller's usage tracker, as ``usage["cost"]``.

    The cost is the one DSPy got with the reply (litellm's, on the litellm engine), else ``call_cost`` from the
    price table (the native engine); the history entry gets it too. A cache hit bills nothing and adds nothing; a
    billed call whose price is unknown adds ``unpriced_calls: 1`` and no ``cost``, so its stage's cost is unknown
    (``None``), neither 0 nor the sum of the other calls. A provider that reports the cost in ``usage`` itself
    (OpenRouter) is already counted there.

    Its async calls on the native engine keep DSPy's bookkeeping on the event loop where the loop allows it
    (``fusion_dspy.backends.in_place``).

    Example:
        >>> from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine
        >>> with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        ...     route = ("openai/gpt-4o-mini", server.api_base)
        ...     engines = {"engine": NativeEngine(*route), "async_engine": AsyncNativeEngine(*route)}
        ...     lm = PricedLM(route[0], **engines, cache=False)
        ...     with dspy.track_usage() as tracker:
        ...         _ = dspy.Predict("question -> answer")(question="2 + 2?", lm=lm)
        >>> usage = tracker.get_total_tokens()["openai/gpt-4o-mini"]
        >>> usage["cost"] == call_cost("openai/gpt-4o-mini", usage) > 0, "unpriced_calls" in usage
        (True, False)
    """

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        with self._billed():
            return super().__call__(prompt, messages=messages, **kwargs)

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        with self._billed(), bookkeeping_in_place(light_bookkeeping(self, kwargs)):
            return await super().acall(prompt, messages=messages, **kwargs)

    @contextlib.contextmanager
    def _billed(self) -> Iterator[None]:
        """Each usage entry DSPy tracks for this call (one per billed reply, a failed call's included) gets its cost
        or, when none is known, ``unpriced_calls: 1``, as the call's usage reaches the caller's tracker."""
        if dspy.settings.usage_tracker is None:
            yield
            return
        given: dict[int, float] = {}
        token = _GIVEN.set(given)
        with dspy.track_usage() as tracker:  # this call's usage only; it rolls up into the caller's on exit
            try:
                yield
            finally:
                _GIVEN.reset(token)
                for index, usage in enumerate(list(tracker.usage_data.get(self.model, ()))):
                    if isinstance(usage.get("cost"), (int, float)):  # the provider billed it in usage (OpenRouter)
                        continue
                    cost = given[index] if index in given else self._cost(usage)
                    tracker.add_usage(self.model, {"cost": cost} if cost is not None else {UNPRICED: 1})

    def _cost(self, usage: dict[str, Any]) -> float | None:
        if self.engine != "litellm":
            return call_cost(self.model, usage)
        if (tokens := _tokens(usage)) is None:
            return None
        import litellm  # the litellm engine's own price (what its response_cost is made of)

        try:
            prompt, completion = litellm.cost_per_token(model=self.model, prompt_tokens=tokens[0],
                                                        completion_tokens=tokens[1])  # fmt: skip
        except Exception:  # noqa: BLE001 - litellm raises plain exceptions for a model it has no price for
            return None
        return float(prompt + completion)

    def update_history(self, entry: dict[str, Any]) -> None:
        usage = entry.get("usage") or {}
        if usage:  # a cache hit's usage is empty: it keeps its old cost, and bills nothing
            if entry.get("cost") is None and (cost := call_cost(self.model, usage)) is not None:
                entry["cost"], entry["cost_details"] = cost, {"kind": "estimate", "currency": "USD",
                                                              "source": table_version()}  # fmt: skip
            given, tracker = _GIVEN.get(), dspy.settings.usage_tracker
            # a cost of tokens the usage does not break down (litellm's of 0 + 0) is no price: not handed over
            if given is not None and tracker is not None and entry.get("cost") is not None and _tokens(usage):
                given[len(tracker.usage_data.get(self.model, ())) - 1] = float(entry["cost"])  # its entry: the last
        super().update_history(entry)

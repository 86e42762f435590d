"""Batched sampling: N candidates from one request with the OpenAI ``n`` parameter, where the backend allows it.

One request for N choices sends, prefills and bills the prompt once and costs the client one request's CPU.
DSPy 3.4 passes ``n`` to the provider natively only on its litellm engine (``dspy.LM(..., engine="litellm")``);
its engine contract is one request, one response, so a custom engine is asked N times. fusion-dspy's native
engine (``engine: native``) sends ``n`` itself: a batched call gets an engine of its own (``lm.engine.for_n(k)``)
whose first request carries ``n`` and whose other ``k - 1`` are answered with the reply's other choices. Any other
engine answers ``n`` with N requests one after another, so batching is used only on those two. A module is
batched when it is a ``dspy.Predict`` or a ``dspy.ChainOfThought`` (one predictor whose prediction the module
returns as is, with its ``completions``); any other module draws N requests, as before.

``batch_samples`` is ``True``, ``False`` or ``"auto"`` (on for ``openai/`` and ``hosted_vllm/`` models on the
litellm or the native engine: OpenAI and vLLM accept ``n``), or a mapping of model string to one of those.
A backend that rejects ``n`` (HTTP 400/422) or ignores it (fewer choices) is asked again with N
requests; when those succeed it is marked as not batching for the rest of the process, with one log line.
"""

import logging
import threading
from collections.abc import Mapping
from typing import Any, Literal

import dspy
from dspy.clients.base_lm import BaseLM
from dspy.utils.exceptions import LMInvalidRequestError

from fusion_dspy.core.meter import Usage

logger = logging.getLogger(__name__)

BatchSetting = bool | Literal["auto"]
BatchSamples = BatchSetting | Mapping[str, BatchSetting]

# Providers whose servers take `n` (OpenAI's API, vLLM's OpenAI-compatible server): what "auto" turns on.
N_PROVIDERS = ("openai/", "hosted_vllm/")

_rejected: set[tuple[str, str | None]] = set()
_lock = threading.Lock()


def _identity(lm: BaseLM) -> tuple[str, str | None]:
    api_base = (getattr(lm, "kwargs", {}) or {}).get("api_base") or getattr(_engine(lm), "api_base", None)
    return lm.model, api_base


def _engine(lm: BaseLM) -> Any:
    return lm.engine if isinstance(lm, dspy.LM) else None


def sends_n_natively(lm: BaseLM) -> bool:
    """The LM passes ``n`` to its provider in one request: DSPy's litellm engine, or fusion-dspy's native engine on
    a route whose wire has ``n`` (its ``sends_n``)."""
    return _engine(lm) == "litellm" or getattr(_engine(lm), "sends_n", False) is True


def batchable_module(module: dspy.Module) -> bool:
    """The module returns its one predictor's prediction with all ``n`` completions."""
    return isinstance(module, dspy.Predict) or type(module) is dspy.ChainOfThought


def batches(setting: BatchSamples, lm: BaseLM, module: dspy.Module) -> bool:
    """Whether one request draws all of this LM's samples of a wave.

    Example:
        >>> lm = dspy.LM("openai/gpt-4o-mini", engine="litellm")
        >>> batches("auto", lm, dspy.Predict("q -> a")), batches(False, lm, dspy.Predict("q -> a"))
        (True, False)
    """
    if isinstance(setting, Mapping):
        setting = setting.get(lm.model, "auto")
    if setting is False or not batchable_module(module) or _identity(lm) in _rejected:
        return False
    if not sends_n_natively(lm):
        if setting is True:
            raise ValueError(f"batch_samples=True, but the LM {lm.model!r} does not send `n` in one request: DSPy "
                             "3.4 does that only on its litellm engine (dspy.LM(..., engine='litellm')), fusion-dspy "
                             "on its native engine (engine: native) for OpenAI-compatible models; other engines "
                             "would send the N requests one after another. Use batch_samples='auto' or False for "
                             "this LM.")  # fmt: skip
        return False
    return setting is True or lm.model.startswith(N_PROVIDERS)


class IgnoredN(RuntimeError):  # noqa: N818 - what the backend did
    """The backend answered a request for ``n`` choices with another number of them."""


def rejects_n(error: BaseException) -> bool:
    """The backend refused the request as invalid (how servers without ``n`` answer a request that uses it), or
    ignored ``n`` (found by the native engine, under the error DSPy raises for it: its cause)."""
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    ignored = isinstance(error, IgnoredN) or isinstance(error.__cause__, IgnoredN)
    return ignored or isinstance(error, LMInvalidRequestError) or status in (400, 422)


def mark_rejected(lm: BaseLM, error: BaseException) -> None:
    """Send this LM's later samples as separate requests; say so once."""
    with _lock:
        first = _identity(lm) not in _rejected
        _rejected.add(_identity(lm))
    if first:
        shown = error.__cause__ if isinstance(error.__cause__, IgnoredN) else error  # the native engine's finding
        logger.warning("%s rejected a request for n choices (%s: %s); its samples are sent as separate requests "
                       "from now on. Set batch_samples: false for this model to skip the attempt.", lm.model,
                       type(shown).__name__, str(shown)[:200])  # fmt: skip


def split_usage(usage: Usage, k: int) -> list[Usage]:
    """One batched request's usage as ``k`` samples' shares, adding up to what was billed.

    The prompt was sent once: its tokens go to the batch's first sample. Completion tokens (one total for all
    choices) are shared evenly, the remainder to the first. So ``pool[:m]`` of a batch costs about what a
    request for ``m`` choices would.

    Example:
        >>> split_usage({"m": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}}, 2)
        [{'m': {'prompt_tokens': 10, 'completion_tokens': 4, 'total_tokens': 14}}, {'m': {'prompt_tokens': 0, \
'completion_tokens': 3, 'total_tokens': 3}}]
    """
    shares: list[Usage] = [{} for _ in range(k)]
    for model, counters in (usage or {}).items():
        prompt = int(counters.get("prompt_tokens") or 0)
        completion = int(counters.get("completion_tokens") or 0)
        for i in range(k):
            part = completion // k + (completion % k if i == 0 else 0)
            first_prompt = prompt if i == 0 else 0
            shares[i][model] = {"prompt_tokens": first_prompt, "completion_tokens": part,
                                "total_tokens": first_prompt + part}  # fmt: skip
    return shares


def completions(prediction: dspy.Prediction, k: int) -> list[dspy.Prediction]:
    """The ``k`` predictions of a batched call, or an error when the backend returned another number."""
    found = prediction.completions
    count = len(found) if found is not None else 0
    if count != k:
        raise IgnoredN(f"asked for n={k} choices in one request, got {count}: the backend ignores `n`")
    return [dspy.Prediction(**found[i].toDict()) for i in range(k)]


def batch_lm(lm: BaseLM, rollout_id: int, temperature: float | None, k: int) -> Any:
    """The LM copy of one batched request: ``n=k`` choices, under the first sample's rollout id (on the native
    engine, with the engines of one request for ``k`` choices)."""
    overrides: dict[str, Any] = {"rollout_id": rollout_id, "n": k}
    if temperature is not None:
        overrides["temperature"] = temperature
    if callable(for_n := getattr(_engine(lm), "for_n", None)):
        overrides["engine"], overrides["async_engine"] = for_n(k)
    return lm.copy(**overrides)

"""Per-stage token usage and wall time of one Fusion-of-N / Best-of-N call.

A model's usage counters are DSPy's (``dspy.track_usage``, summed over its calls) plus, where
``fusion_dspy.backends.prices.PricedLM`` records them, ``cost`` (USD of the priced calls) and ``unpriced_calls``
(how many billed calls had no known price): with any unpriced call, ``cost`` is only a lower bound.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dspy

Usage = dict[str, dict[str, Any]]  # {model: {"prompt_tokens": ..., "completion_tokens": ..., ...}}
UNPRICED = "unpriced_calls"  # a model's counter of billed calls whose cost is unknown (it sums like a token count)


def merge_usage(*usages: Usage | None) -> Usage:
    """Sum several ``{model: {counter: value}}`` usage dicts (numeric counters add up, others are kept)."""
    merged: Usage = {}
    for usage in usages:
        for model, counters in (usage or {}).items():
            into = merged.setdefault(model, {})
            for key, value in (counters or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
                elif key not in into and value is not None:
                    into[key] = value
    return merged


def total_tokens(usage: Usage | None) -> int:
    """All tokens of a usage dict, across models (prompt + completion when a provider omits the total)."""
    total = 0
    for counters in (usage or {}).values():
        reported = counters.get("total_tokens")
        if reported is None:
            reported = (counters.get("prompt_tokens") or 0) + (counters.get("completion_tokens") or 0)
        total += reported
    return int(total)


class StageMeter:
    """Collects token usage and wall time for the named stages of one call.

    Usage is tracked with ``dspy.track_usage``, which also rolls it up into any tracker the caller has
    open, so ``dspy.configure(track_usage=True)`` keeps reporting the program's total as usual. Cache hits
    cost no tokens and are counted as zero, as DSPy does.

    Example:
        >>> sample = fd.Sample("question -> answer", n=2, lm=lm)
        >>> meter = StageMeter()
        >>> with meter.stage("sample"):
        ...     pool = sample(question="2 + 2?")
        >>> list(meter.usage["sample"]), meter.tokens()["sample"] > 0
        (['scripted/lm'], True)
    """

    def __init__(self):
        self.usage: dict[str, Usage] = {}
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        with dspy.track_usage() as tracker:
            try:
                yield
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                self.usage[name] = merge_usage(self.usage.get(name), tracker.get_total_tokens())

    def tokens(self) -> dict[str, int]:
        """Total tokens per stage, e.g. ``{"sample": 812, "fuse": 430}``."""
        return {name: total_tokens(usage) for name, usage in self.usage.items()}

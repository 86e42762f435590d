"""Adaptive N: draw candidates in waves and stop as soon as they agree, or when a token budget is spent.

Short answers use the Adaptive-Consistency rule (Aggarwal et al., arXiv 2305.11860, its Beta criterion): with
``a`` votes for the leading answer and ``b`` for the runner-up, stop when ``P(p_lead > p_second) >= threshold``
under the posterior ``Beta(a + 1, b + 1)``, i.e. when the majority is unlikely to change with more samples. Free
text cannot be voted on: there the mean pairwise word-overlap F1 of the candidates (``votes.token_f1``) must
reach ``overlap_threshold``. ``rule="auto"`` votes when every answer is short, and measures overlap otherwise.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Literal

import dspy

from fusion_dspy.core.votes import normalized, token_f1


def majority_stays(votes: Sequence[str]) -> float:
    """The posterior probability that the current leader is the true majority: ``P(X > 1/2)``,
    ``X ~ Beta(a + 1, b + 1)``, ``a``/``b`` the counts of the two most frequent answers.

    Example:
        >>> round(majority_stays(["4", "4", "4", "4"]), 3), round(majority_stays(["4", "5", "4", "5"]), 3)
        (0.969, 0.5)
    """
    counts = [count for _, count in Counter(votes).most_common(2)] + [0, 0]
    a, b = counts[0] + 1, counts[1] + 1
    total = a + b - 1  # Beta's CDF at 1/2 with integer parameters is a binomial tail
    return sum(comb(total, j) for j in range(a)) / 2**total


def mean_overlap(texts: Sequence[str]) -> float:
    """Mean word-overlap F1 over all pairs of texts (1.0 for one text)."""
    pairs = list(combinations(texts, 2))
    return sum(token_f1(a, b) for a, b in pairs) / len(pairs) if pairs else 1.0


@dataclass(frozen=True)
class Adaptive:
    """When to stop drawing candidates early.

    Args:
        wave: Samples per wave (the first wave included); agreement is checked after each wave.
        rule: ``"majority"`` (short, exact answers), ``"overlap"`` (free text) or ``"auto"`` (majority when
            every answer has at most ``short_words`` words).
        threshold: For ``majority``: the posterior probability the majority must reach (the paper's 0.95).
        overlap_threshold: For ``overlap``: the mean pairwise word-overlap F1 to reach.
        max_tokens: Stop once the candidates drawn have cost this many tokens (stored ones at their cost).
        field: The output field compared (default: the signature's last output field).
        short_words: Longest answer, in words, that ``rule="auto"`` votes on.

    Example:
        >>> rule = Adaptive(wave=4)
        >>> rule.stop_reason(["4", "4", "4.", " 4"], tokens=0), rule.stop_reason(["4", "5", "6", "7"], tokens=0)
        ('agreement', None)
    """

    wave: int = 4
    rule: Literal["auto", "majority", "overlap"] = "auto"
    threshold: float = 0.95
    overlap_threshold: float = 0.6
    max_tokens: int | None = None
    field: str | None = None
    short_words: int = 5

    def __post_init__(self):
        if self.wave < 1:
            raise ValueError(f"Adaptive(wave=...) must be at least 1, got {self.wave}.")
        if self.rule not in ("auto", "majority", "overlap"):
            raise ValueError(f"Adaptive(rule=...) must be 'auto', 'majority' or 'overlap', got {self.rule!r}.")

    def answers(self, predictions: Sequence[dspy.Prediction], signature: type[dspy.Signature]) -> list[str]:
        """The compared field of each prediction, as text."""
        name = self.field or list(signature.output_fields)[-1]
        return [str(prediction.get(name, "")) for prediction in predictions]

    def agree(self, answers: Sequence[str]) -> bool:
        """The answers agree enough that more samples would not change the outcome."""
        if len(answers) < 2:
            return False
        rule = self.rule
        if rule == "auto":
            rule = "majority" if all(len(a.split()) <= self.short_words for a in answers) else "overlap"
        if rule == "majority":
            return majority_stays([normalized(a) for a in answers]) >= self.threshold
        return mean_overlap(answers) >= self.overlap_threshold

    def stop_reason(self, answers: Sequence[str], tokens: int) -> str | None:
        """``"agreement"``, ``"budget"``, or ``None`` to draw another wave."""
        if self.agree(answers):
            return "agreement"
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return "budget"
        return None


def as_adaptive(value: "Adaptive | bool | None") -> Adaptive | None:
    """``Sample(adaptive=...)``: an ``Adaptive``, ``True`` for the defaults, or ``None``/``False`` for fixed N."""
    if value is None or value is False:
        return None
    if value is True:
        return Adaptive()
    if isinstance(value, Adaptive):
        return value
    raise TypeError(f"adaptive must be an Adaptive(...), True or None, got {type(value).__name__}.")

"""Agreement between answers: normalized exact match and token-overlap F1, for votes and metrics alike."""

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any


def normalized(value: Any) -> str:
    """Case, spacing and a trailing full stop do not make two answers differ."""
    return re.sub(r"\s+", " ", str(value)).strip().strip(".").lower()


def overlap_f1(predicted: Sequence[str], expected: Sequence[str]) -> float:
    """F1 of two bags of tokens: 1.0 for the same tokens, 0.0 for none in common (SQuAD's token F1).

    Example:
        >>> overlap_f1(["the", "red", "car"], ["a", "red", "car"])
        0.6666666666666666
    """
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_f1(a: str, b: str) -> float:
    """Word-overlap F1 of two texts."""
    return overlap_f1(re.findall(r"\w+", a), re.findall(r"\w+", b))


def majority_counts(texts: Sequence[str]) -> list[float]:
    """For each text, how many texts equal it (itself included)."""
    counts = Counter(texts)
    return [float(counts[text]) for text in texts]


def consensus_scores(texts: Sequence[str]) -> list[float]:
    """For each text, its mean token F1 against all the others: a minimum-Bayes-risk score for free text."""
    if len(texts) == 1:
        return [1.0]
    return [sum(token_f1(t, other) for j, other in enumerate(texts) if j != i) / (len(texts) - 1)
            for i, t in enumerate(texts)]  # fmt: skip

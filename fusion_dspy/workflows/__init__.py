"""Workflows over many inputs: tasks and their metrics, resumable batch runs, paired evaluation, synthetic data.

Example:
    >>> from fusion_dspy.workflows import Task, resolve_task
    >>> resolve_task("math").input_fields
    ['question']
"""

import importlib

# Each name's module, imported on first use: evaluation's numpy and synth's dependencies stay out of a batch run.
_WHERE = {"run_batch": "batch", "PairedEvaluation": "evaluation", "ResultsLog": "jsonl", "read_jsonl": "jsonl",
          "synthesize": "synth", "MetricError": "task", "Task": "task", "resolve_task": "task"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fusion_dspy.workflows.{_WHERE[name]}"), name)
    try:
        return importlib.import_module(f"fusion_dspy.workflows.{name}")  # a submodule, as an attribute
    except ModuleNotFoundError as error:
        if error.name != f"fusion_dspy.workflows.{name}":
            raise
        raise AttributeError(f"module 'fusion_dspy.workflows' has no attribute {name!r}") from None

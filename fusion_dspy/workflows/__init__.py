"""Workflows over many inputs: tasks and their metrics, resumable batch runs, paired evaluation, synthetic data.

Example:
    >>> from fusion_dspy.workflows import Task, resolve_task
    >>> resolve_task("math").input_fields
    ['question']
"""

from fusion_dspy.workflows.batch import run_batch
from fusion_dspy.workflows.evaluation import PairedEvaluation
from fusion_dspy.workflows.jsonl import ResultsLog, read_jsonl
from fusion_dspy.workflows.synth import synthesize
from fusion_dspy.workflows.task import MetricError, Task, resolve_task

__all__ = ["MetricError", "PairedEvaluation", "ResultsLog", "Task", "read_jsonl", "resolve_task", "run_batch",
           "synthesize"]

"""Synthetic data: prompts -> a pool of teacher models -> one fused answer each -> a chat fine-tuning set (JSONL).

Each finished prompt is one line ``{"id", "messages": [user, assistant], "provenance": {...}}``, flushed and
fsynced at once: killed (even with SIGKILL) and restarted, the run writes every prompt exactly once and never
leaves a broken line. A prompt that fails (every teacher down, fusor unusable) goes to ``<output>.errors.jsonl``
instead, and is tried again by the next run. A failing teacher only shrinks the pool: its samples are dropped.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy

from fusion_dspy.backends.plain_adapter import render_inputs
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.workflows.batch import item_failed
from fusion_dspy.workflows.engine import Built, Outcome, RowSteps
from fusion_dspy.workflows.local_engine import LocalEngine
from fusion_dspy.workflows.runner import run_items


def training_record(item_id: str, inputs: dict[str, Any], fused: dspy.Prediction, program: FusionOfN) -> dict:
    """One chat-format training example with where it came from: the teachers whose candidates it drew on, the
    fusor, and the call's report (failures, truncated candidates, tokens per stage, a fallback:
    ``FusionReport.to_dict()``)."""
    output_field = next(name for name in program.task_signature.output_fields if name != "reasoning")
    fusor = program.fuse.fusor_lm or program.fuse.predict.lm or dspy.settings.lm
    return {
        "id": item_id,
        "messages": [
            {"role": "user", "content": render_inputs(inputs)},
            {"role": "assistant", "content": str(fused[output_field])},
        ],
        "provenance": {"teachers": sorted({c.model for c in fused.report.candidates if c.model}),
                       "fusor": getattr(fusor, "model", None), "report": fused.report.to_dict()},
    }


def synthesize(
    program: FusionOfN,
    prompts: Iterable[dict[str, Any]],
    output: str | Path,
    concurrency: int = 4,
    show_progress: bool = True,
) -> dict[str, int]:
    """Fuse one training answer per prompt into ``output``; returns counts of ``done``, ``failed``, ``skipped``.

    Args:
        program: A ``FusionOfN`` whose sample draws from the teacher pool (``lms=[...]``).
        prompts: Dicts of the task's input fields, each with an optional ``id`` (default: its position).
        output: The JSONL training set; written to incrementally and resumed by ``id``.
        concurrency: Prompts in flight at once (each also samples its teachers concurrently).
        show_progress: Show a progress bar with rate and ETA.

    Example:
        >>> program = backends.program(dspy.Predict("prompt -> response"), n=2)  # e.g. configs/teacher_pool.yaml
        >>> synthesize(program, [{"id": "p1", "prompt": "Say hi."}], tmp_path / "train.jsonl", show_progress=False)
        {'done': 1, 'failed': 0, 'skipped': 0}
    """
    job = Built(synth_steps(program), item_failed, label="synthesizing")
    return run_items(job, prompts, list(program.task_signature.input_fields), output, LocalEngine(concurrency),
                     show_progress=show_progress)  # fmt: skip


def synth_steps(program: FusionOfN) -> RowSteps:
    """One prompt of ``synth``: ``program`` on it, into its ``training_record`` (or its ``error_record``)."""

    def row(item_id: str, inputs: dict[str, Any]) -> Steps[Outcome]:
        try:
            fused = yield Call(program, inputs)
            return Outcome(results=[training_record(item_id, inputs, fused, program)])
        except Exception as error:  # noqa: BLE001 - recorded; the next run tries this prompt again
            return item_failed(item_id, inputs, error)

    return row

"""Run a FusionOfN/BestOfN program over many inputs into a JSONL file: resumable, one error per item, never the batch.

Results go to a ``ResultsLog`` (``fusion_dspy.workflows.jsonl``): a crash or a kill loses at most the item in
flight, and rerunning the same command skips the items already written (by ``id``). Failed items go to
``<output>.errors.jsonl`` and are tried again by the next run (``fusion_dspy.workflows.runner``).
"""

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy

from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.workflows.engine import Built, Outcome, RowSteps
from fusion_dspy.workflows.local_engine import LocalEngine
from fusion_dspy.workflows.runner import run_items


def freeze_imports() -> None:
    """Deprecated: ``fusion_dspy.process.CommandProcess`` freezes a command's imports on entering and unfreezes
    them when left; this froze them for good."""
    from fusion_dspy.process import _freeze_imports

    _deprecated("freeze_imports", "a CommandProcess freezes the imports on entering")
    _freeze_imports()


def quiet_dspy_logs() -> None:
    """Deprecated: ``fusion_dspy.process.CommandProcess(verbose=False)`` quiets DSPy's log handlers on entering
    and puts their levels back when left; this quieted them for good."""
    from fusion_dspy.process import _quiet_dspy_logs

    _deprecated("quiet_dspy_logs", "a CommandProcess(verbose=False) quiets DSPy's log handlers on entering")
    _quiet_dspy_logs()


def keep_no_history() -> None:
    """Deprecated: ``fusion_dspy.process.CommandProcess.keep_no_history`` keeps no DSPy history or trace until the
    command's process is left; this switched them off for good."""
    _deprecated("keep_no_history", "CommandProcess.keep_no_history() switches DSPy's history and trace off")
    dspy.configure(disable_history=True, trace=None)


def _deprecated(name: str, instead: str) -> None:
    warnings.warn(f"fusion_dspy.workflows.batch.{name} is deprecated: {instead} (fusion_dspy.process) and puts it "
                  "back when left; the old name goes away in 0.4.", DeprecationWarning, stacklevel=3)  # fmt: skip


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict") and not isinstance(value, type):  # a FusionReport: its one serialized form
        return value.to_dict()
    if isinstance(value, dspy.Prediction):
        return {key: _jsonable(item) for key, item in value.items()}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def result_record(item_id: str, inputs: dict[str, Any], prediction: dspy.Prediction) -> dict[str, Any]:
    """One JSONL line: the id, the inputs, every field of the prediction: the task's, ``candidates`` and the
    ``report`` (``FusionReport.to_dict()``, the schema serve's ``fusion`` object has too)."""
    return {"id": item_id, "inputs": inputs, **_jsonable(prediction), "error": None}


def error_record(item_id: str, inputs: dict[str, Any], error: Exception) -> dict[str, Any]:
    """The JSONL line of an item that failed: its id, its inputs and the error (type and message)."""
    return {"id": item_id, "inputs": inputs, "error": f"{type(error).__name__}: {error}"}


def run_batch(
    program: dspy.Module,
    items: Iterable[dict[str, Any]],
    output: str | Path,
    input_fields: list[str],
    show_progress: bool = True,
    concurrency: int = 1,
) -> dict[str, int]:
    """Run ``program`` on each item not yet in ``output``; returns counts of ``done``, ``failed`` and ``skipped``.

    Items are dicts of input fields, with an optional ``id`` (default: the item's position). A failing item goes
    to ``<output>.errors.jsonl`` with its ``error`` and the batch goes on; the next run tries it again.
    ``concurrency`` items are in flight at once (each also samples concurrently); lines are written as items
    finish, so their order may differ from the input's. ``fusion-dspy run`` does the same on any engine
    (``runner.run_items`` with a ``jobs.RunJob``).
    """
    job = Built(run_steps(program), item_failed, label=type(program).__name__)
    return run_items(job, items, input_fields, output, LocalEngine(concurrency), show_progress=show_progress)


def run_steps(program: dspy.Module) -> RowSteps:
    """One item of ``run``: ``program`` on its inputs, into its ``result_record`` (or its ``error_record``)."""

    def row(item_id: str, inputs: dict[str, Any]) -> Steps[Outcome]:
        try:
            prediction = yield Call(program, inputs)
            return Outcome(results=[result_record(item_id, inputs, prediction)])
        except Exception as error:  # noqa: BLE001 - one bad item must not end the batch; a rerun retries it
            return item_failed(item_id, inputs, error)

    return row


def item_failed(item_id: str, inputs: dict[str, Any], error: Exception) -> Outcome:
    """The outcome of an item of ``run`` or ``synth`` that failed: its ``error_record``, and a warning."""
    return Outcome(errors=[error_record(item_id, inputs, error)],
                   warning=f"Item {item_id} failed: {type(error).__name__}: {error}")  # fmt: skip

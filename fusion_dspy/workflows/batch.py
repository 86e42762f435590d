"""Run a FusionOfN/BestOfN program over many inputs into a JSONL file: resumable, one error per item, never the batch.

Results go to a ``ResultsLog`` (``fusion_dspy.workflows.jsonl``): a crash or a kill loses at most the item in
flight, and rerunning the same command skips the items already written (by ``id``). Failed items go to
``<output>.errors.jsonl`` and are tried again by the next run (``fusion_dspy.workflows.runner``).
"""

import gc
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy

from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.workflows.engine import Built, Outcome, RowSteps
from fusion_dspy.workflows.local_engine import LocalEngine
from fusion_dspy.workflows.runner import run_items


def freeze_imports() -> None:
    """For a process that runs one job (a command, a worker, a server): import litellm with the garbage collector
    off, then freeze every object alive (``gc.freeze``) so that no later collection walks them again.

    litellm's import builds some 400,000 objects. Measured on 2 cores, the collections during that import took
    ~0.9 s of a command's start, and the full collection at the interpreter's exit ~1.2 s more
    (``benchmarks/workers.py``). Objects made afterwards are collected as usual; the frozen ones are modules,
    classes and tables that live as long as the process anyway. Not for a library call: it changes the process.

    Example:
        >>> freeze_imports()
        >>> gc.isenabled(), gc.get_freeze_count() > 0
        (True, True)
    """
    if gc.get_freeze_count() and "litellm" in sys.modules:
        return  # done already in this process (``serve`` calls it from the command and from the app)
    enabled = gc.isenabled()
    gc.disable()
    try:
        import litellm  # noqa: F401 - imported now, under gc.disable, rather than on the first request
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def quiet_dspy_logs() -> None:
    """DSPy's warnings (e.g. one per reply cut short, many with a small model) off the console: the results say
    enough. Its handlers are quieted, not its logger, so the records are still made and
    ``fusion_dspy.core.truncation`` still marks the cut replies."""
    for handler in logging.getLogger("dspy").handlers:
        handler.setLevel(logging.ERROR)


def keep_no_history() -> None:
    """Keep no LM call history and no trace in this process, for a batch: by default DSPy keeps every request and
    response (up to 10,000 per LM and module) and every prediction with its inputs (``settings.trace``, up to
    10,000), which grew the memory of a long batch by ~7 MB per 1,000 prompts (benchmarks/soak.py). Nothing in a
    batch reads them; DSPy's optimizers open their own ``dspy.context(trace=[])`` where they record one.

    Example:
        >>> keep_no_history()
        >>> dspy.settings.disable_history, dspy.settings.trace
        (True, None)
    """
    dspy.configure(disable_history=True, trace=None)


def _jsonable(value: Any) -> Any:
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
    """One JSONL line: the id, the inputs, every field of the prediction (candidates and stage stats included)."""
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

"""Run a FusionOfN/BestOfN program over many inputs into a JSONL file: resumable, one error per item, never the batch.

Results go to a ``ResultsLog`` (``fusion_dspy.workflows.jsonl``): a crash or a kill loses at most the item in
flight, and rerunning the same command skips the items already written (by ``id``).
"""

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy

from fusion_dspy.core.concurrency import run_concurrently
from fusion_dspy.workflows.jsonl import ResultsLog
from fusion_dspy.workflows.progress import progress_bar

logger = logging.getLogger(__name__)


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

    Items are dicts of input fields, with an optional ``id`` (default: the item's position). A failing item is
    written with its ``error`` and the batch goes on. ``concurrency`` items are in flight at once (each also
    samples concurrently); lines are written as items finish, so their order may differ from the input's.
    """
    log = ResultsLog(output)
    todo = log.pending(items, input_fields)
    counts = {"done": 0, "failed": 0, "skipped": len(log.done)}
    with log, progress_bar(disable=not show_progress) as progress:
        task = progress.add_task(f"{type(program).__name__} -> {log.path.name}", total=len(todo))

        def run_one(job: tuple[str, dict[str, Any]]) -> bool:
            item_id, inputs = job
            try:
                record, ok = result_record(item_id, inputs, program(**inputs)), True
            except Exception as error:  # noqa: BLE001 - one bad item must not end the batch
                logger.warning("Item %s failed: %s: %s", item_id, type(error).__name__, error)
                record, ok = error_record(item_id, inputs, error), False
            log.write(record)
            progress.advance(task)
            return ok

        for ok in run_concurrently(run_one, todo, max_workers=concurrency):
            counts["done" if ok is True else "failed"] += 1
    return counts

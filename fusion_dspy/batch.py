"""Run a FusionOfN/BestOfN program over many inputs into a JSONL file: resumable, one error per item, never the batch.

Each finished item is appended as one JSON line and flushed to disk at once, so a crash or a kill loses at most
the item in flight; rerunning the same command skips the items already written (by ``id``) and repairs a last
line cut off mid-write.
"""

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dspy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

logger = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; a malformed line is an error naming the file and line."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}); fix or remove the line.") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object of input fields, got {type(item).__name__}")
            yield item


def done_ids(path: Path) -> set[str]:
    """Ids already written to a results file, after cutting off a last line a crash left unfinished."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        logger.warning("%s: dropping an unfinished last line left by an interrupted run.", path)
        with open(path, "r+b") as file:
            file.truncate(len(complete))
    return {str(json.loads(line)["id"]) for line in complete.decode("utf-8").splitlines() if line.strip()}


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


def run_batch(
    program: dspy.Module,
    items: Iterable[dict[str, Any]],
    output: str | Path,
    input_fields: list[str],
    show_progress: bool = True,
) -> dict[str, int]:
    """Run ``program`` on each item not yet in ``output``; returns counts of ``done``, ``failed`` and ``skipped``.

    Items are dicts of input fields, with an optional ``id`` (default: the item's position). A failing item is
    written with its ``error`` and the batch goes on.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    already = done_ids(output)
    todo = []
    for position, item in enumerate(items):
        item_id = str(item.get("id", position))
        if item_id not in already:
            todo.append((item_id, {name: item[name] for name in input_fields if name in item}))
    counts = {"done": 0, "failed": 0, "skipped": len(already)}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]  # fmt: skip
    with open(output, "a", encoding="utf-8") as sink, Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task(f"{type(program).__name__} -> {output.name}", total=len(todo))
        for item_id, inputs in todo:
            try:
                record = result_record(item_id, inputs, program(**inputs))
                counts["done"] += 1
            except Exception as error:  # noqa: BLE001 - one bad item must not end the batch
                logger.warning("Item %s failed: %s: %s", item_id, type(error).__name__, error)
                record = {"id": item_id, "inputs": inputs, "error": f"{type(error).__name__}: {error}"}
                counts["failed"] += 1
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            progress.advance(task)
    return counts

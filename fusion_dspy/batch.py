"""Run a FusionOfN/BestOfN program over many inputs into a JSONL file: resumable, one error per item, never the batch.

Each finished item is appended as one JSON line and flushed to disk at once, so a crash or a kill loses at most
the item in flight; rerunning the same command skips the items already written (by ``id``) and repairs a last
line cut off mid-write.
"""

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dspy
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

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


class ResultsLog:
    """An append-only JSONL file of finished items: one flushed, fsynced line each, resumable by ``id``.

    Opening it cuts off a last line a crash left unfinished, and ``done`` holds the ids already written, so a
    rerun skips them. ``write`` is thread-safe.

    Args:
        path: The JSONL file (created with its folder if missing).

    Example:
        >>> with ResultsLog("out.jsonl") as log:
        ...     for item in items:
        ...         if item["id"] not in log.done:
        ...             log.write({"id": item["id"], **work(item)})
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = done_ids(self.path)
        self._lock = threading.Lock()
        self._sink = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close() / __exit__

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._sink.write(line)
            self._sink.flush()
            os.fsync(self._sink.fileno())
            self.done.add(str(record["id"]))

    def pending(self, items: Iterable[dict[str, Any]], fields: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(id, inputs)`` of the items not written yet; an item's id is its ``id`` or its position."""
        todo = []
        for position, item in enumerate(items):
            item_id = str(item.get("id", position))
            if item_id not in self.done:
                todo.append((item_id, {name: item[name] for name in fields if name in item}))
        return todo

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, this run's and earlier runs'."""
        with self._lock:
            self._sink.flush()
        return list(read_jsonl(self.path))

    def close(self) -> None:
        self._sink.close()

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


class RateColumn(ProgressColumn):
    """Items per second (rich's own speed column counts bytes)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f}/s" if task.speed else "-/s")


def progress_bar(disable: bool = False) -> Progress:
    """A rich progress bar with count, rate, elapsed time and ETA."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]  # fmt: skip
    return Progress(*columns, disable=disable)


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
) -> dict[str, int]:
    """Run ``program`` on each item not yet in ``output``; returns counts of ``done``, ``failed`` and ``skipped``.

    Items are dicts of input fields, with an optional ``id`` (default: the item's position). A failing item is
    written with its ``error`` and the batch goes on.
    """
    log = ResultsLog(output)
    todo = log.pending(items, input_fields)
    counts = {"done": 0, "failed": 0, "skipped": len(log.done)}
    with log, progress_bar(disable=not show_progress) as progress:
        task = progress.add_task(f"{type(program).__name__} -> {log.path.name}", total=len(todo))
        for item_id, inputs in todo:
            try:
                record = result_record(item_id, inputs, program(**inputs))
                counts["done"] += 1
            except Exception as error:  # noqa: BLE001 - one bad item must not end the batch
                logger.warning("Item %s failed: %s: %s", item_id, type(error).__name__, error)
                record = error_record(item_id, inputs, error)
                counts["failed"] += 1
            log.write(record)
            progress.advance(task)
    return counts

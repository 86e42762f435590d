"""JSONL in and out: input files read with errors that name the line, and ``ResultsLog``, the resumable output.

Each finished item is appended as one JSON line and flushed and fsynced at once, so a crash or a kill loses at
most the items in flight; a rerun skips the ids already written and cuts off a last line a crash left unfinished.
"""

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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
        >>> items = [{"id": "a", "x": 1}, {"id": "b", "x": 2}]
        >>> with ResultsLog(tmp_path / "out.jsonl") as log:
        ...     for item in items:
        ...         if item["id"] not in log.done:
        ...             log.write({"id": item["id"], "double": 2 * item["x"]})
        >>> sorted(ResultsLog(tmp_path / "out.jsonl").done)     # a rerun would skip both
        ['a', 'b']
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

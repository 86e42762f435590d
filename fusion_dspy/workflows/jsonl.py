"""JSONL in and out: input files read with errors that name the line, and ``ResultsLog``, the resumable output.

Each finished item is appended as one JSON line and flushed and fsynced at once, so a crash or a kill loses at
most the items in flight; a rerun skips the ids already written and cuts off a last line a crash left unfinished.
Failed items go to ``<output>.errors.jsonl`` (``errors_path``) and are tried again by the next run; at the end of
a run that file is rewritten to hold only the items still failing (``prune_errors``). One process at a time
writes an output: a second one is refused (an OS file lock, released when the holder exits or is killed).
"""

import contextlib
import json
import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from fusion_dspy.backends.secrets import HELD
from fusion_dspy.errors import FusionDSPyError

logger = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; a malformed line is an error naming the file and line."""
    for _, item in read_numbered_jsonl(path):
        yield item


def read_numbered_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file, as ``read_jsonl`` reads them."""
    with open(path, encoding="utf-8") as lines:
        yield from _numbered(lines, path)


def _numbered(lines: Iterable[str], path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}); fix or remove the line.") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object of input fields, got {type(item).__name__}")
        yield number, item


def errors_path(output: str | Path) -> Path:
    """Where the failures of a batch writing ``output`` go: ``out.jsonl`` -> ``out.errors.jsonl``."""
    return Path(output).with_suffix(".errors.jsonl")


class OutputInUse(FusionDSPyError):
    """Another process is writing the same output file."""


class ResultsLog:
    """An append-only JSONL file of finished items: one flushed, fsynced line each, resumable by ``id``.

    Opening it takes an exclusive lock (``<path>.lock``; a second process writing the same file would do every
    item again), cuts off a last line a crash left unfinished, and ``done`` holds the ids already written, so
    a rerun skips them; a record with a non-empty ``error`` (earlier versions wrote failures there) is not done.
    ``write`` is thread-safe, writes text that is not valid Unicode (a lone surrogate) as a JSON escape, and
    masks every key this process holds for a model (``fusion_dspy.backends.secrets.HELD``).

    Closing the log of an output (``exclusive=True``) prunes its errors file (``errors_path``) to the items
    still failing: at the END of a run, not at its start, so a crash or a kill mid-run leaves every earlier
    error line in place (the file only grew meanwhile) and the next run's end prunes it. Open the errors file's
    own log after this one, so that it is closed first, as ``with ResultsLog(out) as log,
    ResultsLog(errors_path(out), exclusive=False) as errors:`` does.

    Args:
        path: The JSONL file (created with its folder if missing).
        exclusive: Lock the file against other processes (``OutputInUse`` if one holds it already).

    Example:
        >>> items = [{"id": "a", "x": 1}, {"id": "b", "x": 2}]
        >>> with ResultsLog(tmp_path / "out.jsonl") as log:
        ...     for item in items:
        ...         if item["id"] not in log.done:
        ...             log.write({"id": item["id"], "double": 2 * item["x"]})
        >>> sorted(ResultsLog(tmp_path / "out.jsonl").done)     # a rerun would skip both
        ['a', 'b']
    """

    def __init__(self, path: str | Path, exclusive: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock = FileLock(f"{self.path}.lock", timeout=0) if exclusive else None
        if self._file_lock is not None:
            try:
                self._file_lock.acquire()
            except Timeout:
                raise OutputInUse(f"{self.path} is being written by another process (it holds {self.path}.lock). "
                                  "Two processes on one output would both do every item: wait for the other to "
                                  "finish, or give this one another output.") from None  # fmt: skip
        self.done = done_ids(self.path)
        self._lock = threading.Lock()
        self._sink = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close() / __exit__

    def write(self, record: dict[str, Any]) -> None:
        # An upstream error that echoed a model's key is written with *** instead; the id stays as it is (resuming).
        line = json_line({name: value if name == "id" else HELD.within(value) for name, value in record.items()})
        with self._lock:
            self._sink.write(line)
            self._sink.flush()
            os.fsync(self._sink.fileno())
            if not record.get("error"):
                self.done.add(str(record["id"]))

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, this run's and earlier runs'."""
        with self._lock:
            self._sink.flush()
        return list(read_jsonl(self.path))

    def close(self) -> None:
        self._sink.close()
        if self._file_lock is not None:
            try:
                prune_errors(errors_path(self.path), self.done)  # still under the lock: nobody else writes it
            finally:
                self._file_lock.release()

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
    done = set()
    for number, record in _numbered(complete.decode("utf-8").split("\n"), path):  # the bytes read above
        if "id" not in record:
            raise ValueError(f"{path}:{number}: a line without an \"id\", so not a record a fusion-dspy batch wrote "
                             "(is --output the inputs file?); give another --output, or remove the line.")  # fmt: skip
        if not record.get("error"):
            done.add(str(record["id"]))
    return done


def prune_errors(path: Path, done: set[str]) -> None:
    """Rewrite an errors file to hold only the items still failing: the last line of each id not in ``done``.

    The file is replaced with ``write_atomically``: a crash leaves the old one or the new one (empty when nothing
    is failing any more). A line that is not a JSON object with an ``id`` is kept as it is (nothing is dropped
    that cannot be read).

    Example:
        >>> path = tmp_path / "out.errors.jsonl"
        >>> _ = path.write_text("".join(json_line(r) for r in [{"id": 1, "error": "old"}, {"id": 2, "error": "x"},
        ...                                                    {"id": 1, "error": "new"}]))
        >>> prune_errors(path, done={"2"})          # 2 succeeded since; 1 failed twice: its latest line stays
        >>> path.read_text()
        '{"id": 1, "error": "new"}\\n'
    """
    if not path.exists():
        return
    old = path.read_text(encoding="utf-8")
    kept: dict[Any, str] = {}
    for number, line in enumerate(old.splitlines(keepends=True)):
        if not line.strip():
            continue
        try:
            item_id = str(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            kept[("unreadable", number)] = line if line.endswith("\n") else line + "\n"
            continue
        kept.pop(item_id, None)  # the latest line of an id is the one kept, in the order the lines came
        if item_id not in done:
            kept[item_id] = line
    new = "".join(kept.values())
    if new != old:
        write_atomically(path, new)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash at any point leaves one whole file, the old or the new: beside
    it first (a name of its own, so two writers never share it), fsynced, then renamed over it (``os.replace``),
    and the folder fsynced so the rename itself survives a power cut."""
    fresh = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Made as open() makes files (0o666 less the umask); a file rewritten keeps its own mode.
        with open(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        if path.exists():
            os.chmod(fresh, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(fresh, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)  # the old file stays, and no stray copy beside it
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line, UTF-8 as is; text that is not valid Unicode (a lone surrogate) as a JSON escape instead.

    Example:
        >>> json_line({"text": "café"}).strip(), json_line({"text": "bad " + chr(0xD800)}).strip()
        ('{"text": "café"}', '{"text": "bad \\\\ud800"}')
    """
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)  # every non-ASCII character escaped: still the same JSON value
    return line + "\n"

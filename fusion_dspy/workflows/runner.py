"""The loop of ``run`` and ``synth``: items -> one record each in the output, or one line in the errors file.

Shared so both commands behave alike under faults: ids are checked first (``items.prepare``); an item whose
inputs cannot be sent fails before any request; a failed item goes to ``<output>.errors.jsonl`` and is tried
again by the next run (the output holds successes only); the output is locked against a second process;
Ctrl-C stops taking new items (``interrupt.run_until_interrupted``) and keeps every finished record.
"""

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fusion_dspy.workflows.interrupt import run_until_interrupted
from fusion_dspy.workflows.items import Item, prepare
from fusion_dspy.workflows.jsonl import ResultsLog, errors_path
from fusion_dspy.workflows.progress import progress_bar

logger = logging.getLogger(__name__)

Work = Callable[[str, dict[str, Any]], dict[str, Any]]  # (id, inputs) -> the record to write


def run_items(
    work: Work,
    items: Iterable[dict[str, Any]],
    fields: list[str],
    output: str | Path,
    concurrency: int = 1,
    description: str = "batch",
    show_progress: bool = True,
) -> dict[str, int]:
    """Write ``work(id, inputs)`` for each item not yet in ``output``; counts of ``done``, ``failed``, ``skipped``.

    Args:
        work: Does one item and returns its record (with ``"id"``); what it raises is that item's error.
        items: Dicts of input fields, each with an optional ``id`` (default: the item's position).
        fields: The input fields every item must have.
        output: The JSONL output, resumed by ``id``; failures go to ``errors_path(output)``.
        concurrency: Items in flight at once.
        description: The progress bar's label.
        show_progress: Show a progress bar with rate and ETA.

    Example:
        >>> def double(item_id, inputs):
        ...     return {"id": item_id, "double": 2 * inputs["x"]}
        >>> run_items(double, [{"x": 1}, {"x": None}], ["x"], tmp_path / "out.jsonl", show_progress=False)
        {'done': 1, 'failed': 1, 'skipped': 0}
        >>> run_items(double, [{"x": 1}, {"x": 3}], ["x"], tmp_path / "out.jsonl", show_progress=False)
        {'done': 1, 'failed': 0, 'skipped': 1}
    """
    prepared = prepare(items, fields)
    with ResultsLog(output) as log, ResultsLog(errors_path(output), exclusive=False) as errors:
        todo = [item for item in prepared if item.id not in log.done]
        counts = {"done": 0, "failed": 0, "skipped": len(prepared) - len(todo)}
        with progress_bar(disable=not show_progress) as progress:
            bar = progress.add_task(f"{description} -> {log.path.name}", total=len(todo))

            def one(item: Item) -> str:
                try:
                    check_sendable(item)
                    log.write(work(item.id, item.inputs))
                    return "done"
                except Exception as error:  # noqa: BLE001 - recorded; the next run tries this item again
                    logger.warning("Item %s failed: %s: %s", item.id, type(error).__name__, error)
                    errors.write({"id": item.id, "inputs": item.inputs, "error": f"{type(error).__name__}: {error}"})
                    return "failed"
                finally:
                    progress.advance(bar)

            for outcome in run_until_interrupted(one, todo, max_workers=concurrency):
                if isinstance(outcome, Exception):  # the errors file itself could not be written
                    raise outcome
                counts[outcome] += 1
    return counts


class InputProblem(ValueError):
    """An item's inputs cannot be sent (missing or null field, text that is not valid Unicode)."""


def check_sendable(item: Item) -> None:
    """Raise ``InputProblem`` for an item whose inputs cannot be sent: the one refusal of every engine (local,
    ``--workers``, Ray), before any request."""
    if item.problem:
        raise InputProblem(f"item {item.id}: {item.problem}")

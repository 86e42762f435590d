"""The items of a batch: one id each (no two alike), and inputs checked before any request is paid for.

An item's id is its ``id`` field or else its position. Ids are compared as text, so ``0`` and ``"0"`` are the
same id, and so is the position 0 of an item without one: two items with one id is an error naming both lines
(before, the second was taken as already done). An item whose inputs cannot be sent (a
missing or misspelt field, a null value, text that is not valid Unicode) is not run: it fails with a message
saying what to fix, and costs nothing.
"""

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion_dspy.workflows.jsonl import read_numbered_jsonl


@dataclass(frozen=True)
class Item:
    """One unit of batch work: its id, its input fields, and why it cannot run (``None`` when it can)."""

    id: str
    inputs: dict[str, Any]
    problem: str | None = None


def item_ids(items: Sequence[dict[str, Any]], where: Sequence[str] | None = None) -> list[str]:
    """The id of each item: its ``id`` as text, or its position; two items with one id are an error.

    Args:
        items: Dicts of input fields, each with an optional ``id``.
        where: How to name each item in errors (e.g. ``"in.jsonl:3"``); default ``"item <position>"``.

    Example:
        >>> item_ids([{"id": 7}, {"id": "a"}]), item_ids([{"q": 1}, {"q": 2}])
        (['7', 'a'], ['0', '1'])
        >>> item_ids([{"q": 1}, {"id": "0"}])
        Traceback (most recent call last):
        ValueError: item 0 (no id: its position) and item 1 have the same id '0'; give each item its own id.
        >>> item_ids([{"id": 0}, {"id": "0"}])
        Traceback (most recent call last):
        ValueError: item 0 and item 1 have the same id '0'; give each item its own id.
    """
    where = list(where) if where is not None else [f"item {position}" for position in range(len(items))]
    ids, first = [], {}
    for position, item in enumerate(items):
        value = item.get("id", position)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"{where[position]}: id {value!r} is a {type(value).__name__}; ids are text or integers.")
        text = str(value)
        if text in first:
            named = [f"{where[index]}{'' if 'id' in items[index] else ' (no id: its position)'}"
                     for index in (first[text], position)]  # fmt: skip
            raise ValueError(f"{named[0]} and {named[1]} have the same id {text!r}; give each item its own id.")
        first[text] = position
        ids.append(text)
    return ids


def input_problem(item: dict[str, Any], fields: Sequence[str]) -> str | None:
    """Why these inputs cannot be sent as they are (``None`` when they can).

    Example:
        >>> input_problem({"questoin": "2+2?"}, ["question"])
        "lacks the input field 'question' (did you mean 'questoin'? the inputs are ['question'])"
        >>> input_problem({"question": None}, ["question"])
        "the input field 'question' is null; give it a value"
    """
    for name in fields:
        if name not in item:
            near = difflib.get_close_matches(name, [key for key in item if key != "id"], n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            return f"lacks the input field {name!r} ({hint}the inputs are {list(fields)})"
        if (problem := value_problem(name, item[name])) is not None:
            return problem
    return None


def value_problem(name: str, value: Any, role: str = "input") -> str | None:
    """Why one field's value cannot be used as it is: null, or text that is not valid Unicode (``None``: it can).

    Args:
        name: The field's name, for the message.
        value: Its value (text, or lists and dicts of text, are searched).
        role: What the field is, for the message: ``"input"`` or ``"output"`` (a dev set's gold answer).

    Example:
        >>> value_problem("answer", None, "output")
        "the output field 'answer' is null; give it a value"
    """
    if value is None:
        return f"the {role} field {name!r} is null; give it a value"
    if (bad := _not_unicode(value)) is not None:
        return (f"the {role} field {name!r} holds text that is not valid Unicode (a lone surrogate U+{bad:04X}, "
                "e.g. half of a broken emoji); repair the text")  # fmt: skip
    return None


def prepare(items: Iterable[dict[str, Any]], fields: Sequence[str]) -> list[Item]:
    """``Item``s of the input fields, with their ids and any problem found; raises on colliding ids.

    Example:
        >>> [(i.id, i.problem) for i in prepare([{"q": "a"}, {"q": None}], ["q"])]
        [('0', None), ('1', "the input field 'q' is null; give it a value")]
    """
    items = list(items)
    ids = item_ids(items)
    return [Item(item_id, {name: item[name] for name in fields if name in item}, input_problem(item, fields))
            for item_id, item in zip(ids, items, strict=True)]  # fmt: skip


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSONL input file, with their ids checked (collisions name the lines)."""
    numbered = list(read_numbered_jsonl(path))
    items = [item for _, item in numbered]
    item_ids(items, [f"{path}:{number}" for number, _ in numbered])
    return items


def _not_unicode(value: Any) -> int | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return ord(value[error.start])
        return None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next((bad for part in value if (bad := _not_unicode(part)) is not None), None)
    return None


def _names(where: list[str]) -> str:
    return ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")

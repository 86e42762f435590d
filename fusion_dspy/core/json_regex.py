"""A client's JSON Schema regexes, matched in bounded time: a ``pattern`` can never freeze the server (ReDoS).

``jsonschema`` matches a schema's ``pattern`` and ``patternProperties`` regexes with Python's backtracking ``re``,
without a time limit, so one schema such as ``{"pattern": "^(a|a)*$"}`` and one answer ``"aaa...a!"`` could hold
the server for minutes. ``bounded_validator(cls)`` is the draft's validator class extended (``jsonschema``'s public
``extend``) so that every match of a schema regex against answer data goes through ``search``: the ``regex``
library (syntax-compatible with ``re``, so a valid schema keeps its meaning) with a timeout of ``MATCH_SECONDS``.
A match that takes longer, or a regex that does not compile, is a validation problem saying so: the answer is
invalid, as any other answer that breaks the schema.

Two keywords match keys against ``patternProperties``' regexes. ``patternProperties`` itself and
``additionalProperties`` are implemented here (keys matched by ``search``; ``additionalProperties`` without
``patternProperties`` is ``jsonschema``'s own): a map with ``additionalProperties: false`` and key patterns is a
common schema. ``unevaluatedProperties`` next to ``patternProperties`` is refused up front instead (``refusal``,
a 400 from ``check_schema``): its bookkeeping of evaluated keys spans ``$ref``, ``allOf``/``anyOf``/``oneOf``,
``if``/``then``/``else`` and ``dependentSchemas``, a second implementation to keep in step with ``jsonschema``'s for
a combination that OpenAI's structured outputs accept nowhere (they support neither keyword), and for which
``additionalProperties`` says the same in almost every schema. The message names that fix.

A regex must compile with ``regex`` (``format_checker``, used by ``check_schema``): what it cannot compile is a
400, not an error in the middle of a request. ``regex`` also knows a few things ``re`` refused (``\\p{L}``).

Example:
    >>> search("^[A-Z]", "Paris")
    True
    >>> try:
    ...     search("^(a|a)*$", "a" * 40 + "!")
    ... except PatternError as error:
    ...     print(error)
    the schema's pattern '^(a|a)*$' took longer than 0.1 s to match 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'
    (a backtracking blow-up): simplify it (no nested or overlapping repeats such as '(a+)+' or '(a|a)*')
"""

import functools
from typing import Any

import jsonschema
import regex

MATCH_SECONDS = 0.1  # the most one regex of a client's schema may take to match one string of an answer
COMPILE_ERRORS = (regex.error, RecursionError, OverflowError, ValueError)  # what compiling a bad regex raises


class PatternError(ValueError):
    """A schema regex that does not compile, or took longer than ``MATCH_SECONDS`` to match."""


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text`` (JSON Schema regexes are not anchored), within
    ``MATCH_SECONDS``; raise ``PatternError`` saying what to change when it cannot tell."""
    try:
        return regex.search(pattern, text, timeout=MATCH_SECONDS, concurrent=True) is not None
    except TimeoutError:
        shown = repr(text[:30] + "..." if len(text) > 30 else text)
        raise PatternError(f"the schema's pattern {pattern!r} took longer than {MATCH_SECONDS} s to match {shown} "
                           "(a backtracking blow-up): simplify it (no nested or overlapping repeats such as '(a+)+' "
                           "or '(a|a)*')") from None  # fmt: skip
    except COMPILE_ERRORS as error:
        raise PatternError(f"the schema's pattern {pattern!r} is not a valid regular expression ({error})") from None


@functools.cache
def format_checker(cls: type) -> jsonschema.FormatChecker:
    """The format checker of ``cls.check_schema``: the draft's own, with its ``regex`` format (the ``pattern``
    keyword's and, from draft 6 on, ``patternProperties``' keys) compiled by ``regex``, the engine that will run it.

    Example:
        >>> checker = format_checker(jsonschema.Draft202012Validator)
        >>> checker.conforms("^[a-z]+$", "regex"), checker.conforms("((", "regex")
        (True, False)
    """
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers.update(cls.FORMAT_CHECKER.checkers)
    checker.checks("regex", raises=COMPILE_ERRORS)(lambda pattern: not isinstance(pattern, str)
                                                   or regex.compile(pattern) is not None)  # fmt: skip
    return checker


def refusal(schema: Any, cls: type) -> str | None:
    """Why ``schema`` (of ``cls``'s draft) cannot be checked in bounded time (``None``: it can): see the module doc.
    Any key of the schema named so counts (a property named ``patternProperties`` too: rename it then).

    Example:
        >>> refusal({"patternProperties": {"^x-": {}}, "unevaluatedProperties": False},
        ...         jsonschema.Draft202012Validator)[:60]
        "'unevaluatedProperties' next to 'patternProperties' is not s"
    """
    keywords = set(_keys(schema))
    if "unevaluatedProperties" in cls.VALIDATORS and {"unevaluatedProperties", "patternProperties"} <= keywords:
        return ("'unevaluatedProperties' next to 'patternProperties' is not supported (their keys would be matched "
                "without a time limit): use 'additionalProperties' instead of 'unevaluatedProperties'")  # fmt: skip
    return None


def _keys(node: Any) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    if validator.is_type(instance, "string"):
        try:
            if not search(pattern, instance):
                yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")
        except PatternError as error:
            yield jsonschema.ValidationError(str(error))


def _matched_keys(instance: dict[str, Any], pattern: str) -> Any:
    """``(key, matched, problem)`` for each key of ``instance``: ``problem`` when ``search`` could not tell."""
    for key in instance:
        try:
            yield key, search(pattern, key), None
        except PatternError as error:
            yield key, False, jsonschema.ValidationError(str(error), path=[key])


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, matched, problem in _matched_keys(instance, pattern):
            if problem is not None:
                yield problem
            elif matched:
                yield from validator.descend(instance[key], subschema, path=key, schema_path=pattern)


def _additional_properties(base: Any) -> Any:
    """``additionalProperties``: the keys neither in ``properties`` nor matched by a ``patternProperties`` regex are
    valid against its schema (or absent when it is ``false``); ``base`` (``jsonschema``'s) without patterns."""

    def additional_properties(validator: Any, additional: Any, instance: Any, schema: dict[str, Any]) -> Any:
        patterns = schema.get("patternProperties")
        if not patterns or not validator.is_type(instance, "object"):
            yield from base(validator, additional, instance, schema)
            return
        properties, matched = schema.get("properties") or {}, set()
        for pattern in patterns:
            # a key a regex could not tell about is not extra: `patternProperties` reports the problem
            matched |= {key for key, hit, problem in _matched_keys(instance, pattern) if hit or problem is not None}
        extras = [key for key in instance if key not in properties and key not in matched]
        if validator.is_type(additional, "object"):
            for key in extras:
                yield from validator.descend(instance[key], additional, path=key)
        elif not additional and extras:
            names = ", ".join(repr(key) for key in sorted(extras))
            regexes = ", ".join(repr(pattern) for pattern in sorted(patterns))
            verb = "does" if len(extras) == 1 else "do"
            yield jsonschema.ValidationError(f"{names} {verb} not match any of the regexes: {regexes}")

    return additional_properties


@functools.cache
def bounded_validator(cls: type) -> type:
    """``cls`` (a ``jsonschema`` validator class) whose schema regexes are matched by ``search``.

    Example:
        >>> Validator = bounded_validator(jsonschema.Draft202012Validator)
        >>> [error.message for error in Validator({"pattern": "^(a|a)*$"}).iter_errors("a" * 40 + "!")][0][:40]
        "the schema's pattern '^(a|a)*$' took lon"
    """
    keywords = {"pattern": _pattern, "patternProperties": _pattern_properties,
                "additionalProperties": _additional_properties(cls.VALIDATORS["additionalProperties"])}  # fmt: skip
    return jsonschema.validators.extend(cls, {k: v for k, v in keywords.items() if k in cls.VALIDATORS})

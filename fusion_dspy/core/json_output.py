"""JSON answers that must fit a JSON Schema: a DSPy output type built from the schema, checked by ``jsonschema``.

An OpenAI ``response_format`` (``{"type": "json_schema", ...}`` or ``{"type": "json_object"}``) becomes the type
of a task's output field. DSPy shows the schema to the model (its adapters print a typed field's JSON schema, and
``JSONAdapter`` asks a backend that has structured output for it), parses the reply into the type, and a reply
that does not validate is an ``AdapterParseError``: a sample that failed, or a fusion that is retried and then
falls back. ``jsonschema`` (the maintained validator) is the judge, so every keyword of the schema counts, not
only those a pydantic model can express; its regexes are matched in bounded time (``json_regex``: a schema's
``pattern`` cannot freeze the server).

Example:
    >>> Answer = json_type({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    >>> Answer.model_validate({"city": "Paris"}).root
    {'city': 'Paris'}
    >>> schema_problems({"town": "Paris"}, Answer.json_schema)
    ["$: 'city' is a required property"]
"""

from typing import Any, ClassVar

import jsonschema
import referencing
import referencing.exceptions
from pydantic import RootModel, model_validator

from fusion_dspy.core.json_regex import bounded_validator, format_checker, refusal

JSON_OBJECT: dict[str, Any] = {"type": "object"}  # what {"type": "json_object"} asks for: any JSON object


def check_schema(schema: Any) -> None:
    """Raise ``ValueError`` saying what is wrong when ``schema`` is not a valid JSON Schema (of its own draft).

    Example:
        >>> check_schema({"type": "object"})
        >>> check_schema({"type": "objekt"})
        Traceback (most recent call last):
        ...
        ValueError: not a valid JSON Schema: 'objekt' is not valid under any of the given schemas (at type)
        >>> check_schema({"type": "string", "pattern": "^(a"})
        Traceback (most recent call last):
        ...
        ValueError: not a valid JSON Schema: '^(a' is not a 'regex' (missing ) at position 3) (at pattern)
    """
    if not isinstance(schema, dict):
        raise ValueError(f"not a valid JSON Schema: expected an object, got {type(schema).__name__}")
    remote = next(_remote_refs(schema), None)
    if remote is not None:  # a client's schema must never make the server fetch a URL
        raise ValueError(f"not a usable JSON Schema: {remote!r} refers outside the schema; only local references "
                         "('#/$defs/...') are followed: put the referenced schema under $defs")  # fmt: skip
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema, format_checker=format_checker(cls))  # its regexes must compile with `regex`
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        why = f" ({error.cause})" if error.cause is not None else ""
        raise ValueError(f"not a valid JSON Schema: {error.message}{why} (at {where})") from None
    refused = refusal(schema, cls)
    if refused is not None:
        raise ValueError(f"not a usable JSON Schema: {refused}")


def _remote_refs(node: Any) -> Any:
    """The ``$ref`` / ``$dynamicRef`` values of a schema that point outside it (anything not starting with ``#``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                yield value
            else:
                yield from _remote_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _remote_refs(value)


def schema_problems(instance: Any, schema: dict[str, Any]) -> list[str]:
    """What makes ``instance`` invalid against ``schema``, one line each (``[]``: valid), best matches first.
    References are resolved within the schema only (an empty registry: nothing is ever fetched). Each regex of the
    schema gets at most ``json_regex.MATCH_SECONDS`` per string it matches; a slower match is a problem.

    Example:
        >>> schema_problems("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", {"type": "string", "pattern": "^(a|a)*$"})
        ["$: the schema's pattern '^(a|a)*$' took longer than 0.1 s to match ...: simplify it ..."]
    """
    cls = jsonschema.validators.validator_for(schema)
    refused = refusal(schema, cls)
    if refused is not None:
        return [f"$: {refused}"]
    validator = bounded_validator(cls)(schema, registry=referencing.Registry())
    try:
        errors = sorted(validator.iter_errors(instance), key=jsonschema.exceptions.relevance)
    except referencing.exceptions.Unresolvable as error:
        return [f"$: the schema's reference {error.ref!r} cannot be resolved within it"]
    return [f"{error.json_path}: {error.message}" for error in errors]


class JSONValue(RootModel[Any]):
    """Any JSON value valid against the class's ``json_schema``; subclasses are made by ``json_type``."""

    json_schema: ClassVar[dict[str, Any]] = {}
    checked: ClassVar[bool] = True

    @model_validator(mode="after")
    def _valid(self) -> "JSONValue":
        problems = schema_problems(self.root, self.json_schema) if self.checked else []
        if problems:
            raise ValueError("the JSON does not fit the schema: " + "; ".join(problems[:3]))
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return dict(cls.json_schema)  # the schema itself, as DSPy shows it to the model


def json_type(schema: dict[str, Any] | None = None, name: str = "JSONAnswer", checked: bool = True
              ) -> type[JSONValue]:  # fmt: skip
    """A ``JSONValue`` type for ``schema`` (default: any JSON object), to annotate a DSPy output field with.

    Args:
        schema: A JSON Schema (checked with ``check_schema``); ``None`` accepts any JSON object.
        name: The type's name, as the model may see it.
        checked: Validate against the schema when parsing (an invalid reply is then unparsable). ``False`` shows
            the schema only, for a caller that checks it itself (the server's contract: its failure kind is
            ``invalid``).

    Example:
        >>> Reply = json_type({"type": "array", "items": {"type": "integer"}}, "Numbers")
        >>> sig = dspy.Signature("question -> answer").with_updated_fields("answer", type_=Reply)
        >>> sig.output_fields["answer"].annotation.__name__
        'Numbers'
    """
    schema = JSON_OBJECT if schema is None else schema
    check_schema(schema)
    return type(name, (JSONValue,), {"json_schema": schema, "checked": checked, "__module__": __name__})

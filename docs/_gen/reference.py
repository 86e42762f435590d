"""The docs' generated reference pages, written at build time by mkdocs-gen-files (mkdocs.yml, `gen-files`).

- configuration/reference.md: every field of the config file's pydantic models (fusion_dspy/backends/config.py)
  and of the typed options (fusion_dspy/core/options.py): type, default, constraints, description;
- cli.md: every `fusion-dspy` command and option, from the argparse parser (fusion_dspy.cli.build_parser).

Nothing here is hand-copied: a field or an option added to the code shows up on the next build.
"""

import argparse
import types
import typing
from typing import Any

from griffe import Docstring, DocstringSectionKind
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fusion_dspy.backends import config
from fusion_dspy.cli import build_parser
from fusion_dspy.core import options

CONFIG_SECTIONS = [  # (heading, model, where it sits in the file)
    ("The file", config.FusionConfig, ""),
    ("`models.<name>`", config.ModelConfig, "models.<name>."),
    ("`models.<name>.deployments[]`", config.Deployment, "models.<name>.deployments[]."),
    ("`roles`", config.Roles, "roles."),
    ("`roles.generators[]` (a teacher pool)", config.Teacher, "roles.generators[]."),
    ("`fusion`", config.FusionSettings, "fusion."),
    ("`fusion.adaptive`", config.AdaptiveSettings, "fusion.adaptive."),
]
OPTION_SECTIONS = [options.SampleOptions, options.FuseOptions, options.SelectOptions]


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `"fuse" | "select"`, `list[Teacher | str]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{arg}"' if isinstance(arg, str) else repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def default_of(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "its section" if isinstance(value, BaseModel) else f"`{value!r}`"
    return "required" if field.default is PydanticUndefined else f"`{field.default!r}`"


def constraints(field: FieldInfo) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least"}
    found = []
    for item in field.metadata:
        for name, word in words.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{word} {value}" + (" item" if name == "min_length" else ""))
    return ", ".join(found)


def documented_args(model: type) -> dict[str, str]:
    """The Google-style `Args:` of a class docstring, by name (parsed by griffe, as mkdocstrings does)."""
    sections = Docstring(model.__doc__ or "").parse("google", warnings=False)
    return {item.name: " ".join(item.description.split()) for section in sections
            if section.kind is DocstringSectionKind.parameters for item in section.value}  # fmt: skip


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fields_table(model: type[BaseModel], prefix: str = "") -> str:
    described = documented_args(model)
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        text = field.description or described.get(name, "")
        limits = constraints(field)
        text = f"{text} ({limits})" if text and limits else text or limits
        rows.append(f"| `{prefix}{name}` | `{cell(type_name(field.annotation))}` | {cell(default_of(field))} "
                    f"| {cell(text)} |")  # fmt: skip
    return "\n".join(rows)


def summary(model: type) -> str:
    return (model.__doc__ or "").strip().split("\n\n", 1)[0].replace("\n", " ")


def config_reference() -> str:
    parts = ["# Configuration reference", "",
             "Generated at build time from the pydantic models of `fusion_dspy/backends/config.py` (the config file) "
             "and `fusion_dspy/core/options.py` (the typed options of the Python API). A misspelt or unknown field "
             "is an error naming the file, the field and the fix. How to write a config: "
             "[Configuration](index.md).", ""]  # fmt: skip
    for heading, model, prefix in CONFIG_SECTIONS:
        parts += [f"## {heading}", "", summary(model), "", fields_table(model, prefix), ""]
    parts += ["# Python options", "",
              "`fd.FusionOfN`, `fd.BestOfN`, `fd.Sample`, `fd.Fuse` and `fd.Route` take these frozen, validated "
              "objects (`sampling=`, `fusing=`, `selection=` / `fallback=`); `options.replace(...)` derives a "
              "variant. The config's `fusion:` section inherits the fields a file can hold.", ""]  # fmt: skip
    for model in OPTION_SECTIONS:
        parts += [f"## `fd.{model.__name__}`", "", summary(model), "", fields_table(model), ""]
    return "\n".join(parts)


def _option(action: argparse.Action) -> str:
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        names += " {" + ", ".join(map(str, action.choices)) + "}"
    return names


def _command_table(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for group in parser._action_groups:  # argparse has no public walk of its groups; --help reads these too
        actions = [a for a in group._group_actions if not isinstance(a, (argparse._HelpAction,
                                                                           argparse._SubParsersAction))]  # fmt: skip
        if not actions:
            continue
        title = {"positional arguments": "arguments", "options": "options"}.get(group.title, group.title)
        lines += ["", f"**{title}**" + (f": {group.description}" if group.description else ""), "",
                  "| option | meaning |", "|---|---|"]
        for action in actions:
            required = " (required)" if action.required else ""
            lines.append(f"| {cell(_option(action))} | {cell((action.help or '') % vars(action))}{required} |")
    return lines


def cli_reference() -> str:
    parser = build_parser()
    parts = ["# CLI reference", "",
             "Generated at build time from `fusion_dspy.cli.build_parser()`: the same text as "
             "`fusion-dspy COMMAND --help`.", "", parser.description or "", ""]
    parts += _command_table(parser)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    for name, command in subparsers.choices.items():
        parts += ["", f"## `fusion-dspy {name}`", "", helps.get(name) or "", "", command.description or ""]
        mutually_exclusive = [" / ".join(a.option_strings[0] for a in group._group_actions)
                              for group in command._mutually_exclusive_groups]  # fmt: skip
        if mutually_exclusive:
            parts += ["", "One of: " + "; ".join(f"`{item}`" for item in mutually_exclusive) + "."]
        parts += _command_table(command)
    if parser.epilog:
        parts += ["", parser.epilog]
    return "\n".join(parts) + "\n"


def write_pages() -> None:
    import mkdocs_gen_files

    for path, text in [("configuration/reference.md", config_reference()), ("cli.md", cli_reference())]:
        with mkdocs_gen_files.open(path, "w") as page:
            page.write(text)
        mkdocs_gen_files.set_edit_path(path, "_gen/reference.py")


if __name__ == "<run_path>":  # mkdocs-gen-files runs this file with runpy.run_path
    write_pages()

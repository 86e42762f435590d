"""A griffe extension for the API reference: this project's docstrings title their doctests ``Example:``
(singular), which griffe's Google parser reads as a free-text admonition, so the ``>>>`` lines would render as
Markdown (block quotes, and ``x["a"]["b"]`` as a broken reference link). Read as an ``Examples:`` section, they
render as code, as mkdocstrings intends."""

import re

import griffe

SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = SINGULAR.sub(r"\1Examples:", obj.docstring.value)

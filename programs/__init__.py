"""Ready task programs (shipped as fusion_dspy.programs): each a ``fusion_dspy.workflows.Task`` with data, module
and metric.

Each registers itself under the ``fusion_dspy.tasks`` entry-point group (pyproject.toml), so
``resolve_task("math")`` (``--program math``) finds it by name and nothing below this package names it.
Import a program's helpers from its module: ``from fusion_dspy.programs.math import load_math``.
"""

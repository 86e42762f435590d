"""The algorithm: Sample -> Fuse / Select, their pool, signatures, store, meter and one-body step driver.

Nothing here knows about config files, backends or batch jobs; the public names are re-exported by
``fusion_dspy``.
"""

import importlib


def __getattr__(name: str):
    """A submodule on first use (``fusion_dspy.core.router``): numpy and the rest stay out of ``import fusion_dspy``."""
    try:
        return importlib.import_module(f"fusion_dspy.core.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"fusion_dspy.core.{name}":
            raise
        raise AttributeError(f"module 'fusion_dspy.core' has no attribute {name!r}") from None

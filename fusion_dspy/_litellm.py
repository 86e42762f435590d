"""litellm, imported only when a model needs it: a process whose models all run on the native engine never does.

litellm's import takes seconds (it builds some 400,000 objects) and, unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is
set first, fetches its model cost map from the network, waiting ~10 s when offline. ``import fusion_dspy`` sets the
switch (``setdefault``: a user's own value wins), so every import of litellm fusion-dspy causes, and DSPy's lazy
one, comes after it. A script that imports litellm itself *before* fusion_dspy has already fetched (or waited):
litellm reads the switch at its own import only, so nothing done later helps. Import fusion_dspy first, or export
``LITELLM_LOCAL_MODEL_COST_MAP=True`` in the environment (docs/configuration/engines.md).

``import_litellm`` imports it with the garbage collector off and, in a process that froze its imports (a command's,
``fusion_dspy.process``), freezes what the import built, so later collections never walk it (~0.9 s of
collections during the import, ~1.2 s more at exit, measured on 2 cores). ``model_cost`` reads litellm's context
windows without importing it.
"""

import functools
import gc
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# The cost map litellm ships and reads when LITELLM_LOCAL_MODEL_COST_MAP is set: the same data, without its import.
COST_MAP_FILE = "model_prices_and_context_window_backup.json"


def import_litellm() -> ModuleType:
    """litellm, imported now if it was not: with the collector off, frozen where the process froze its imports.

    Example:
        >>> import_litellm().__name__
        'litellm'
    """
    if (module := sys.modules.get("litellm")) is not None:
        return module
    enabled, frozen = gc.isenabled(), gc.get_freeze_count() > 0
    gc.disable()
    try:
        return importlib.import_module("litellm")
    finally:
        if frozen:  # a command's process (CommandProcess froze its imports): keep litellm's out of the collector's way
            gc.freeze()
        if enabled:
            gc.enable()


def model_cost() -> dict[str, Any]:
    """litellm's model map (context windows, prices): its own ``litellm.model_cost`` once litellm is imported or
    when the live map is asked for (``LITELLM_LOCAL_MODEL_COST_MAP`` other than ``True``), else the copy it ships,
    read without importing it.

    Example:
        >>> model_cost()["gpt-4o"]["max_input_tokens"]
        128000
    """
    if "litellm" in sys.modules or not local_cost_map():
        return import_litellm().model_cost
    return _shipped_cost_map()


def local_cost_map() -> bool:
    """Whether litellm and DSPy read the model map they ship (``LITELLM_LOCAL_MODEL_COST_MAP=True``, which
    ``import fusion_dspy`` sets unless the variable is set), rather than fetch it from the network."""
    return os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "").lower() == "true"


@functools.cache
def _shipped_cost_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return import_litellm().model_cost
    return json.loads((Path(next(iter(spec.submodule_search_locations))) / COST_MAP_FILE).read_text(encoding="utf-8"))

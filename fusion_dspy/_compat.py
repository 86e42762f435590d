"""Old import paths of the flat 0.1 layout, kept working for one release with a ``DeprecationWarning``.

``import fusion_dspy.sample`` (or ``from fusion_dspy.fusion import FusionOfN``) gives the *same* module object
as its new home (``fusion_dspy.core.sample``), so isinstance checks and monkeypatches keep working. One finder
serves every old path instead of a shim file per module.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED_MODULES = {
    "fusion_dspy.sample": "fusion_dspy.core.sample",
    "fusion_dspy.fuse": "fusion_dspy.core.fuse",
    "fusion_dspy.select": "fusion_dspy.core.select",
    "fusion_dspy.fusion": "fusion_dspy.core.fusion",
    "fusion_dspy.signatures": "fusion_dspy.core.signatures",
    "fusion_dspy.store": "fusion_dspy.core.store",
    "fusion_dspy.meter": "fusion_dspy.core.meter",
    "fusion_dspy.concurrency": "fusion_dspy.core.concurrency",
    "fusion_dspy.config": "fusion_dspy.backends.config",
    "fusion_dspy.embedded": "fusion_dspy.backends.embedded",
    "fusion_dspy.plain_adapter": "fusion_dspy.backends.plain_adapter",
    "fusion_dspy.task": "fusion_dspy.workflows.task",
    "fusion_dspy.batch": "fusion_dspy.workflows.batch",
    "fusion_dspy.evaluation": "fusion_dspy.workflows.evaluation",
    "fusion_dspy.eval_report": "fusion_dspy.workflows.reports",
    "fusion_dspy.synth": "fusion_dspy.workflows.synth",
    "fusion_dspy.demo": "fusion_dspy.workflows.demo",
}

# Names the top-level package exported in 0.1 and now leaves to its subpackages.
MOVED_NAMES = {
    "Backends": "fusion_dspy.backends",
    "FusionConfig": "fusion_dspy.backends",
    "read_config": "fusion_dspy.backends",
    "PlainAdapter": "fusion_dspy.backends",
    "StageMeter": "fusion_dspy.core.meter",
    "merge_usage": "fusion_dspy.core.meter",
    "total_tokens": "fusion_dspy.core.meter",
    "DEFAULT_FUSE_INSTRUCTIONS": "fusion_dspy.core.signatures",
    "fuse_signature": "fusion_dspy.core.signatures",
    "task_signature": "fusion_dspy.core.signatures",
}


def moved_name(name: str):
    """The object a 0.1 top-level name now lives under, with a warning naming its new home."""
    home = MOVED_NAMES[name]
    warnings.warn(f"fusion_dspy.{name} moved to {home}.{name}; the old name goes away in 0.3.",
                  DeprecationWarning, stacklevel=3)  # fmt: skip
    return getattr(importlib.import_module(home), name)


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.real_spec  # the import system stamped the alias's spec on the real module


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        target_name = MOVED_MODULES.get(fullname)
        if target_name is None:
            return None
        warnings.warn(f"{fullname} moved to {target_name}; the old path goes away in 0.3.", DeprecationWarning,
                      stacklevel=2)  # fmt: skip
        return importlib.util.spec_from_loader(fullname, _Alias(target_name))


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())

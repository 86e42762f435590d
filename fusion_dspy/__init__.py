"""fusion-dspy: Fusion-of-N and Best-of-N as composable, optimizable DSPy modules.

The top level holds the modules, their option objects (``SampleOptions``, ``FuseOptions``, ``SelectOptions``), the
candidate pool, the call's ``FusionReport``, the store, the errors and ``load_config``; the rest lives
in namespaced subpackages, as in optuna: ``fusion_dspy.backends`` (config, LMs, embedded model),
``fusion_dspy.workflows`` (tasks, batch runs, evaluation, synthetic data), ``fusion_dspy.optimizers`` and
``fusion_dspy.testing``.

Example:
    >>> import dspy, fusion_dspy as fd
    >>> lm = fd.testing.scripted_lm(lambda call: {"comparison": "They agree.", "answer": "Paris"}
    ...                             if call.wants("comparison") else {"answer": "Paris"})
    >>> fused = fd.FusionOfN("question -> answer", n=3, lm=lm)
    >>> fused(question="Capital of France?").answer
    'Paris'
"""

import importlib
import os

# litellm fetches its model cost map from the network at import and waits ~10 s when offline; the copy it
# ships is enough for us. setdefault: a user who wants the live map can still set the variable to False.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from fusion_dspy import _compat  # noqa: E402
from fusion_dspy.backends import ConfigError, load_config  # noqa: E402
from fusion_dspy.core.best_of_n import BestOfN  # noqa: E402
from fusion_dspy.core.fuse import Fuse  # noqa: E402
from fusion_dspy.core.fusion import FusionOfN  # noqa: E402
from fusion_dspy.core.options import FuseOptions, SampleOptions, SelectOptions  # noqa: E402
from fusion_dspy.core.pool import Candidate, Pool  # noqa: E402
from fusion_dspy.core.report import Failure, FusionReport  # noqa: E402
from fusion_dspy.core.route import Route  # noqa: E402
from fusion_dspy.core.sample import Sample  # noqa: E402
from fusion_dspy.core.select import Select  # noqa: E402
from fusion_dspy.core.store import CandidateStore  # noqa: E402
from fusion_dspy.errors import (  # noqa: E402
    DeadlineExceeded,
    FusionDSPyError,
    FusionError,
    SamplingError,
    SelectionError,
)

_compat.install()

_SUBPACKAGES = ("backends", "core", "optimizers", "programs", "testing", "workflows")

__all__ = [
    "BestOfN",
    "Candidate",
    "CandidateStore",
    "ConfigError",
    "DeadlineExceeded",
    "Failure",
    "Fuse",
    "FuseOptions",
    "FusionDSPyError",
    "FusionError",
    "FusionOfN",
    "FusionReport",
    "Pool",
    "Route",
    "Sample",
    "SampleOptions",
    "SamplingError",
    "Select",
    "SelectOptions",
    "SelectionError",
    "backends",
    "load_config",
    "optimizers",
    "testing",
    "workflows",
]
__version__ = "0.3.0"


def __getattr__(name: str):
    if name in _SUBPACKAGES:  # imported on first use: optuna, rich and matplotlib stay out of `import fusion_dspy`
        return importlib.import_module(f"fusion_dspy.{name}")
    if name in _compat.MOVED_NAMES:
        return _compat.moved_name(name)
    raise AttributeError(f"module 'fusion_dspy' has no attribute {name!r}")

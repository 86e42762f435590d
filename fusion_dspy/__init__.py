"""fusion-dspy: Fusion-of-N and Best-of-N as composable, optimizable DSPy modules.

    import dspy, fusion_dspy as fd
    fused = fd.FusionOfN(dspy.ChainOfThought("question -> answer"), n=5)
    best = fd.BestOfN(dspy.ChainOfThought("question -> answer"), n=5, reward_fn=lambda inputs, pred: ...)
"""

import os

# litellm fetches its model cost map from the network at import and waits ~10 s when offline; the copy it
# ships is enough for us. setdefault: a user who wants the live map can still set the variable to False.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from fusion_dspy.backends import Backends, load_config  # noqa: E402
from fusion_dspy.config import ConfigError, FusionConfig, read_config  # noqa: E402
from fusion_dspy.errors import FusionDSPyError, FusionError, SamplingError, SelectionError  # noqa: E402
from fusion_dspy.fuse import Fuse  # noqa: E402
from fusion_dspy.fusion import BestOfN, FusionOfN  # noqa: E402
from fusion_dspy.meter import StageMeter, merge_usage, total_tokens  # noqa: E402
from fusion_dspy.plain_adapter import PlainAdapter  # noqa: E402
from fusion_dspy.sample import Sample  # noqa: E402
from fusion_dspy.select import Select  # noqa: E402
from fusion_dspy.signatures import DEFAULT_FUSE_INSTRUCTIONS, fuse_signature, task_signature  # noqa: E402
from fusion_dspy.store import CandidateStore  # noqa: E402

__all__ = [
    "DEFAULT_FUSE_INSTRUCTIONS",
    "Backends",
    "BestOfN",
    "CandidateStore",
    "ConfigError",
    "Fuse",
    "FusionDSPyError",
    "FusionError",
    "FusionConfig",
    "FusionOfN",
    "PlainAdapter",
    "Sample",
    "SamplingError",
    "Select",
    "SelectionError",
    "StageMeter",
    "fuse_signature",
    "load_config",
    "merge_usage",
    "read_config",
    "task_signature",
    "total_tokens",
]
__version__ = "0.1.0"

"""Backends: the config file, the ``dspy.LM`` of every role (through litellm), the embedded model, adapters.

Example:
    >>> from fusion_dspy.backends import load_config
    >>> backends = load_config(None)          # no file: the embedded model plays every role
    >>> backends.config.fusor
    'embedded'
"""

from fusion_dspy.backends.config import ConfigError, FusionConfig, read_config
from fusion_dspy.backends.plain_adapter import PlainAdapter
from fusion_dspy.backends.roles import Backends, load_config

__all__ = ["Backends", "ConfigError", "FusionConfig", "PlainAdapter", "load_config", "read_config"]

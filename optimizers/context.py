"""Refuse an N_max the fusor cannot read: N candidates must fit in the fusor's context window with the task."""

import logging

import dspy

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import ConfigError, config_source
from fusion_dspy.core.context import known_context_window
from fusion_dspy.core.signatures import DEFAULT_FUSE_INSTRUCTIONS

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # a rough, deliberately generous rule for English text
PROMPT_OVERHEAD = 150  # field markers, tags and the adapter's own words, in tokens


def context_window(backends: Backends, name: str) -> int | None:
    """The model's context window: from the config, else from litellm's model info, else unknown (None)."""
    return backends.config.model(name).context_window or known_context_window(backends.config.model(name).model)


def check_context_window(backends: Backends, n_max: int, example: dspy.Example) -> None:
    """Raise a ``ConfigError`` when ``n_max`` candidates of the generators' ``max_tokens`` cannot fit the fusor."""
    fusor = backends.config.fusor
    window = context_window(backends, fusor)
    per_candidate = max((backends.config.model(t.model).max_tokens or 0) for t in backends.config.roles.teachers())
    if not window or not per_candidate:
        logger.info("Cannot check that %d candidates fit the fusor (context window or max_tokens unknown).", n_max)
        return
    inputs = sum(len(str(value)) for value in example.inputs().values()) // CHARS_PER_TOKEN
    answer = backends.config.model(fusor).max_tokens or per_candidate
    base = len(DEFAULT_FUSE_INSTRUCTIONS) // CHARS_PER_TOKEN + inputs + PROMPT_OVERHEAD + answer
    needed = base + n_max * per_candidate
    if needed > window:
        fits = max(0, (window - base) // per_candidate)
        raise ConfigError(
            f"{config_source(backends.config)}: N_max={n_max} candidates of up to {per_candidate} tokens need about "
            f"{needed} tokens in the fusor's prompt and answer, but models.{fusor} reads {window}. Lower the largest "
            f"N to {fits} or less, lower the generators' max_tokens, or use a fusor with a longer context_window."
        )

"""Exceptions raised by fusion-dspy, each saying what went wrong and what to change."""

from typing import Any

from dspy.utils.exceptions import AdapterParseError


class FusionDSPyError(Exception):
    """Base class of every error fusion-dspy raises on purpose."""


class ConfigError(FusionDSPyError):
    """A config file that cannot be used; the message names the file, the field and the fix."""


class MissingFileError(ConfigError):
    """A file the set-up names (a config file, a tuned.json) does not exist."""


class MissingKeyError(ConfigError):
    """A model's ``api_key_env`` (or a deployment's) names an environment variable that is not set."""


class UnreachableError(ConfigError):
    """A configured server (``api_base``) did not answer the start-up probe."""


class SamplingError(FusionDSPyError):
    """Too few candidates survived sampling.

    Args:
        message: What happened and how to fix it.
        failures: The failed samples, as data (``fusion_dspy.core.report.Failure``: stage, kind, model, index,
            message); each is listed under the message, one line a sample.
    """

    def __init__(self, message: str, failures: list[Any] | None = None):
        self.failures = list(failures or [])
        details = "".join(f"\n  - {line}" for line in self.failures)
        super().__init__(message + details)


class FusionError(FusionDSPyError):
    """The fusor's output could not be used (e.g. it broke the output format even after DSPy's fallback)."""


class DeadlineExceeded(FusionDSPyError, TimeoutError):
    """A call outlived its ``deadline_s``; requests still in flight are abandoned (their results discarded)."""


class SelectionError(FusionDSPyError):
    """No candidate could be scored or picked (every reward call failed, or the judge's answer was unusable)."""


class InvalidOutputError(FusionDSPyError, AdapterParseError):
    """A reply was read, but breaks the request's contract: its JSON does not fit the schema, a tool call names an
    unknown tool or has arguments its ``parameters`` refuse, or it ignores ``tool_choice``.

    An ``AdapterParseError``, so a sample that gives one is dropped and a fusion that gives one is retried and then
    falls back, as for any unusable output; its failure kind is ``invalid`` (``fusion_dspy.failures``).

    Args:
        problems: What is wrong, one line each.
        signature: The signature the reply was for.
        lm_response: The reply, as read.
    """

    def __init__(self, problems: list[str], signature: Any, lm_response: str = ""):
        self.problems = list(problems)
        AdapterParseError.__init__(self, adapter_name="CheckedAdapter", signature=signature, lm_response=lm_response,
                                   message="; ".join(self.problems))  # fmt: skip

"""Exceptions raised by fusion-dspy, each saying what went wrong and what to change."""


class FusionDSPyError(Exception):
    """Base class of every error fusion-dspy raises on purpose."""


class SamplingError(FusionDSPyError):
    """Too few candidates survived sampling.

    Args:
        message: What happened and how to fix it.
        failures: One line per failed sample (``"sample 3 (openai/x): TimeoutError: ..."``).
    """

    def __init__(self, message: str, failures: list[str] | None = None):
        self.failures = list(failures or [])
        details = "".join(f"\n  - {line}" for line in self.failures)
        super().__init__(message + details)


class FusionError(FusionDSPyError):
    """The fusor's output could not be used (e.g. it broke the output format even after DSPy's fallback)."""


class DeadlineExceeded(FusionDSPyError, TimeoutError):
    """A call outlived its ``deadline_s``; requests still in flight are abandoned (their results discarded)."""


class SelectionError(FusionDSPyError):
    """No candidate could be scored or picked (every reward call failed, or the judge's answer was unusable)."""

"""Keys never leave the process: every text that reaches a response, a log or an output file can pass through a
``Redactor``, which masks the key values it knows.

``HELD`` knows every key a config of this process names (``Backends`` holds them through
``hold``), so a batch's results and errors files and a command's logs mask them without being
told which keys there are: an upstream error that echoes the key it was sent ("invalid key sk-..."), or a URL with
a key in its query string, is written with ``***`` instead. Keys held while a command runs are released when it
ends (``fusion_dspy.process.CommandProcess``); the server masks its own key and the config's the same way.
"""

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from fusion_dspy.backends.config import FusionConfig

MASK = "***"


class Redactor:
    """Replaces every known secret value in a text with ``***``.

    Args:
        secrets: The values to hide.
        min_length: Shorter values are ignored: they would mask ordinary words (``"test"``, ``"EMPTY"``).

    Example:
        >>> Redactor(["sk-123456"])("bad key sk-123456")
        'bad key ***'
        >>> Redactor(["sk-123456"]).within({"error": ["bad key sk-123456"], "n": 2})
        {'error': ['bad key ***'], 'n': 2}
    """

    def __init__(self, secrets: Iterable[str | None] = (), min_length: int = 4):
        self.secrets: list[str] = []
        self.min_length = min_length
        self._lock = threading.Lock()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Mask these values too (the longest first, so a key that contains another is masked whole)."""
        with self._lock:
            known = set(self.secrets) | {s for s in secrets if s and len(s) >= self.min_length}
            self.secrets = sorted(known, key=len, reverse=True)  # a new list: readers never see it half-built

    def reset(self, secrets: list[str]) -> None:
        """Mask exactly ``secrets`` again, an earlier ``self.secrets``: the values added since are forgotten."""
        with self._lock:
            self.secrets = list(secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def within(self, value: Any) -> Any:
        """``value`` with every string in it masked, through dicts, lists and tuples (a record to write)."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.within(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.within(item) for item in value]  # as JSON writes it
        return value


HELD = Redactor(min_length=8)  # every key a config names (hold() holds them); real keys are long


def hold(*keys: str | None) -> None:
    """Mask these keys in results and errors files and in a command's logs: until the command this runs in is left
    (``fusion_dspy.process.CommandProcess`` puts the held keys back as it found them), or for the life of the
    process outside one. ``Backends`` holds every key its config names.

    Args:
        keys: Key values; ``None``, empty and short ones (under 8 characters: placeholders such as ``"EMPTY"``)
            are ignored.

    Example:
        >>> from fusion_dspy.process import CommandProcess
        >>> with CommandProcess():
        ...     hold("sk-0123456789abcdef")
        ...     HELD("bad key sk-0123456789abcdef")
        'bad key ***'
        >>> HELD("bad key sk-0123456789abcdef")      # released with the command
        'bad key sk-0123456789abcdef'
    """
    HELD.add(*keys)


def config_secrets(config: FusionConfig) -> list[str]:
    """The values of every key variable a config names (its models' and their deployments')."""
    names = [m.api_key_env for m in config.models.values()]
    names += [d.api_key_env for m in config.models.values() for d in m.deployments]
    return [os.environ[name] for name in names if name and os.environ.get(name)]


def masked_records(redact: Redactor, make_record: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A log record factory: ``make_record``'s records, with the secrets ``redact`` knows when each is made masked
    in its message (``logging.setLogRecordFactory`` installs it; ``CommandProcess`` does, for a command)."""

    def masked(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if redact.secrets:
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed log call: logging reports it when it formats the record
                return record
            if any(secret in text for secret in redact.secrets):
                record.msg, record.args = redact(text), ()
        return record

    masked.masks = redact  # type: ignore[attr-defined]
    return masked


def redact_logs(redact: Redactor) -> None:
    """Deprecated: mask the secrets in every log record this process creates from now on, never undone. A command
    masks its logs by entering ``fusion_dspy.process.CommandProcess`` (``mask_logs`` adds a redactor), which puts
    logging's record factory back when it is left."""
    warnings.warn("fusion_dspy.backends.secrets.redact_logs is deprecated: a command's process masks its logs "
                  "while it is in a fusion_dspy.process.CommandProcess (CommandProcess.mask_logs adds a Redactor), "
                  "which puts logging back when left; the old name goes away in 0.4.", DeprecationWarning,
                  stacklevel=2)  # fmt: skip
    if getattr(logging.getLogRecordFactory(), "masks", None) is not redact:  # else in place already
        logging.setLogRecordFactory(masked_records(redact, logging.getLogRecordFactory()))

"""Keys never leave the process: every text that reaches a response, a log or an output file can pass through a
``Redactor``, which masks the key values it knows.

``HELD`` knows every key this process has read from the environment for a model (``Backends`` adds each one as it
reads it), so a batch command's results and errors files and its logs mask them without being told which keys
there are: an upstream error that echoes the key it was sent ("invalid key sk-..."), or a URL with a key in its
query string, is written with ``***`` instead. The server masks its own key and the config's the same way.
"""

import logging
import os
import threading
from collections.abc import Iterable
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


HELD = Redactor(min_length=8)  # every key a config of this process names (Backends adds them); real keys are long


def config_secrets(config: FusionConfig) -> list[str]:
    """The values of every key variable a config names (its models' and their deployments')."""
    names = [m.api_key_env for m in config.models.values()]
    names += [d.api_key_env for m in config.models.values() for d in m.deployments]
    return [os.environ[name] for name in names if name and os.environ.get(name)]


def redact_logs(redact: Redactor) -> None:
    """Mask the secrets in every log record this process creates from now on, including secrets ``redact``
    learns later (``HELD`` grows as models are built)."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "masks", None) is redact:
        return  # already in place (a second command in the same process)

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
    logging.setLogRecordFactory(masked)

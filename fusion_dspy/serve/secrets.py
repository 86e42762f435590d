"""Keys never leave the server: every text that reaches a response or a log passes through a ``Redactor``."""

import logging
import os
from collections.abc import Iterable

from fusion_dspy.backends.config import FusionConfig

MASK = "***"


class Redactor:
    """Replaces every known secret value in a text with ``***``.

    Args:
        secrets: The values to hide (empty and very short values are ignored: they would mask ordinary words).

    Example:
        >>> Redactor(["sk-123456"])("bad key sk-123456")
        'bad key ***'
    """

    def __init__(self, secrets: Iterable[str | None] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def config_secrets(config: FusionConfig) -> list[str]:
    """The values of every key variable a config names (its models' and their deployments')."""
    names = [m.api_key_env for m in config.models.values()]
    names += [d.api_key_env for m in config.models.values() for d in m.deployments]
    return [os.environ[name] for name in names if name and os.environ.get(name)]


def redact_logs(redact: Redactor) -> None:
    """Mask the secrets in every log record this process creates from now on (a served process's logs included)."""
    if not redact.secrets:
        return
    make_record = logging.getLogRecordFactory()

    def masked(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        text = record.getMessage()
        if any(secret in text for secret in redact.secrets):
            record.msg, record.args = redact(text), ()
        return record

    logging.setLogRecordFactory(masked)

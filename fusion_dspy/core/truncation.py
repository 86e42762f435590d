"""Replies cut short at ``max_tokens`` (finish_reason ``"length"``): noticed per sample, kept, and marked.

DSPy 3.4 reads every reply's finish_reason but hands it to no prediction, adapter output or callback: on
``"length"`` it only logs a warning on the ``dspy.clients.lm`` logger (its LM history has the reason too, but
the batch commands switch history off). So ``watch()`` collects those warnings for the calls made inside it,
with a logging filter keyed by a context variable: each sample runs in its own thread or task, and sees its
own replies only. Which records say so is ``fusion_dspy.failures.says_truncated``'s to tell (the one place that
reads DSPy's text). The filter never drops a record; DSPy's warning is still logged as before.

Limits: a reply served again from DSPy's request cache is not re-read (DSPy logs nothing then; a
``CandidateStore`` keeps the mark), and a ``dspy`` logger set above WARNING makes no record to read: to quiet
DSPy's warnings, raise the level of its handler instead, as the batch commands do (``fusion_dspy.cli.main``).
"""

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from fusion_dspy.failures import says_truncated

DSPY_LM_LOGGER = "dspy.clients.lm"  # where DSPy 3.4 reports a reply cut short (tests/test_dspy_contract.py)

# The lists of the watches open in this context, innermost last: a record goes to each (watches nest).
_collectors: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar("fusion_dspy_truncated",
                                                                                    default=())


class _Collect(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        lists = _collectors.get()
        if lists and says_truncated(record):
            for seen in lists:
                seen.append(record.getMessage())
        return True


_FILTER = _Collect()


@contextlib.contextmanager
def watch() -> Iterator[list[str]]:
    """Collect DSPy's warnings of replies cut short by the LM calls made inside, into the list it yields.

    Watches nest: a watch around a whole ``FusionOfN`` call sees the cuts its stages watch for themselves (each
    sample's, the fusor's).

    Example:
        >>> lm = scripted_lm(lambda call: {"answer": "4"}, finish_reason="length")   # every reply cut short
        >>> with watch() as cut:
        ...     _ = dspy.Predict("question -> answer")(question="2 + 2?", lm=lm)
        >>> len(cut)
        1
    """
    logger = logging.getLogger(DSPY_LM_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    seen: list[str] = []
    token = _collectors.set((*_collectors.get(), seen))
    try:
        yield seen
    finally:
        _collectors.reset(token)

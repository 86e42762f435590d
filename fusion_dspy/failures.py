"""What kind of failure an exception is, read from its type: the one place that knows the error classes.

Failures reach fusion-dspy as exceptions of DSPy (the LM errors of ``dspy.utils.exceptions``, the ``dspy.lm15``
errors engines raise, ``AdapterParseError``), of the SDKs under it (litellm, openai), of Python (``TimeoutError``,
``ConnectionError``) and of fusion-dspy itself. ``kind_of`` names the ``FailureKind`` of any of them by its type,
reading the errors it was raised from too; ``is_outage`` says whether that kind means the model was unavailable
rather than that it answered badly. Callers branch on the kind, never on a class name or a message, so a renamed
class or a reworded message cannot silently change what they do.

The SDKs are never imported here (a later release drops litellm from the native path): an exception of a litellm
type can exist only once litellm is loaded, so its classes are read from ``sys.modules``, as DSPy's own litellm
engine does. fusion-dspy's classes defined above this module (``ContextOverflowError``, ``Straggler``,
``StageUnavailable``) are read the same way. tests/test_failures.py pins every class named here.

One failure a library reports as text only: a reply cut at ``max_tokens``, which DSPy 3.4 only logs
(``fusion_dspy.core.truncation``). ``says_truncated`` holds that single match.
"""

import asyncio
import concurrent.futures
import enum
import logging
import sys
from collections.abc import Iterator

import dspy
from dspy import lm15

from fusion_dspy.errors import DeadlineExceeded, InvalidOutputError


class FailureKind(str, enum.Enum):
    """Why a call failed, as far as the caller's next step goes (retry, wait, shorten, answer 400/429/502/504...)."""

    TIMEOUT = "timeout"  # the provider, a connection or a local credential lock took too long
    RATE_LIMIT = "rate_limit"
    CONTEXT_WINDOW = "context_window"  # the prompt does not fit the model's context window
    AUTH = "auth"  # the key was refused, or may not use this model
    BILLING = "billing"  # quota or budget spent
    SERVER = "server"  # the provider failed while handling the request (5xx)
    TRANSPORT = "transport"  # no response: connection refused or reset, DNS, TLS
    UNAVAILABLE = "unavailable"  # a stage's model was unavailable (StageUnavailable); its cause says how
    BAD_REQUEST = "bad_request"  # the provider refused the request (unknown model, unsupported parameter...)
    UNPARSABLE = "unparsable"  # the reply came, but the adapter could not read the output fields from it
    INVALID = "invalid"  # the reply was read but broke the request's contract (a JSON schema, a tool, tool_choice)
    DEADLINE = "deadline"  # fusion-dspy's own deadline_s ran out (DeadlineExceeded)
    STRAGGLER = "straggler"  # a sample still running when the straggler grace ran out: not waited for
    OTHER = "other"


_K = FailureKind
# Failures of the service, not of the answer: a stage that hit one says nothing about how good its method is.
OUTAGES = frozenset({_K.TIMEOUT, _K.RATE_LIMIT, _K.AUTH, _K.BILLING, _K.SERVER, _K.TRANSPORT, _K.UNAVAILABLE,
                     _K.DEADLINE})  # fmt: skip
# Kinds that only say "unavailable" or "no response": an error they were raised from may say more (a timeout).
_REFINED_BY_CAUSE = (_K.UNAVAILABLE, _K.TRANSPORT)  # from the least to the most specific

# Specific classes precede their parents (ContextWindowExceededError is an LMInvalidRequestError; DeadlineExceeded a
# TimeoutError).
_TYPES: tuple[tuple[type[BaseException], FailureKind], ...] = (
    (DeadlineExceeded, _K.DEADLINE),
    (dspy.ContextWindowExceededError, _K.CONTEXT_WINDOW), (lm15.ContextLengthError, _K.CONTEXT_WINDOW),
    (dspy.LMAuthError, _K.AUTH), (lm15.AuthError, _K.AUTH),
    (dspy.LMBillingError, _K.BILLING), (lm15.BillingError, _K.BILLING),
    (dspy.LMRateLimitError, _K.RATE_LIMIT), (lm15.RateLimitError, _K.RATE_LIMIT),
    (dspy.LMTimeoutError, _K.TIMEOUT), (lm15.TimeoutError, _K.TIMEOUT),
    (dspy.LMLockTimeoutError, _K.TIMEOUT), (lm15.LockTimeoutError, _K.TIMEOUT),
    (dspy.LMServerError, _K.SERVER), (lm15.ServerError, _K.SERVER),
    (dspy.LMTransportError, _K.TRANSPORT), (lm15.TransportError, _K.TRANSPORT),
    (dspy.LMInvalidRequestError, _K.BAD_REQUEST), (lm15.InvalidRequestError, _K.BAD_REQUEST),
    (dspy.LMUnsupportedFeatureError, _K.BAD_REQUEST), (lm15.CapabilityError, _K.BAD_REQUEST),
    (InvalidOutputError, _K.INVALID), (dspy.AdapterParseError, _K.UNPARSABLE),
)  # fmt: skip

# The OpenAI SDK's error classes, which litellm re-exports under the same names (its own derive from them).
_OPENAI_STATUS = (("AuthenticationError", _K.AUTH), ("PermissionDeniedError", _K.AUTH),
                  ("RateLimitError", _K.RATE_LIMIT), ("InternalServerError", _K.SERVER),
                  ("APIConnectionError", _K.TRANSPORT),
                  ("BadRequestError", _K.BAD_REQUEST), ("NotFoundError", _K.BAD_REQUEST),
                  ("UnprocessableEntityError", _K.BAD_REQUEST))  # fmt: skip

# Classes of modules this one does not import, by (module, class): an instance means its module is loaded.
_LOADED: tuple[tuple[str, str, FailureKind], ...] = (
    ("fusion_dspy.core.context", "ContextOverflowError", _K.CONTEXT_WINDOW),  # a FusionError, refused before sending
    ("fusion_dspy.core.concurrency", "Straggler", _K.STRAGGLER),
    ("fusion_dspy.workflows.scoring", "StageUnavailable", _K.UNAVAILABLE),
    ("litellm", "ContextWindowExceededError", _K.CONTEXT_WINDOW),  # a BadRequestError
    ("litellm", "BudgetExceededError", _K.BILLING),
    ("litellm", "Timeout", _K.TIMEOUT),  # an APIConnectionError
    ("litellm", "RouterRateLimitError", _K.RATE_LIMIT),  # every deployment of a Router group cooling down
    ("litellm", "ServiceUnavailableError", _K.SERVER),
    ("litellm", "BadGatewayError", _K.SERVER),
    *(("litellm", name, kind) for name, kind in _OPENAI_STATUS),
    # litellm's classes derive from openai's; these are for openai's own, where one gets through unmapped.
    ("openai", "APITimeoutError", _K.TIMEOUT),  # an APIConnectionError
    *(("openai", name, kind) for name, kind in _OPENAI_STATUS),
)

# Python's own, last: lm15.TimeoutError and DeadlineExceeded are TimeoutErrors with a meaning of their own.
_BUILTIN: tuple[tuple[tuple[type[BaseException], ...], FailureKind], ...] = (
    ((TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError), _K.TIMEOUT),  # one class from 3.11 on
    ((ConnectionError,), _K.TRANSPORT),
)


def _own_kind(error: BaseException) -> FailureKind:
    """The kind of ``error`` alone, by its type."""
    for cls, kind in _TYPES:
        if isinstance(error, cls):
            return kind
    for module_name, name, kind in _LOADED:
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return kind
    for classes, kind in _BUILTIN:
        if isinstance(error, classes):
            return kind
    return _K.OTHER


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from: each one's ``__cause__``, else its unsuppressed ``__context__``.

    Args:
        error: Any exception, or ``None`` (no causes).

    Example:
        >>> try:
        ...     raise RuntimeError("wrapped") from TimeoutError("read")
        ... except RuntimeError as error:
        ...     [type(link).__name__ for link in causes(error)]
        ['RuntimeError', 'TimeoutError']
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def kind_of(error: BaseException) -> FailureKind:
    """The kind of failure ``error`` is: that of the first error in its chain of causes whose type has one.

    A wrapper without a kind of its own (``FusionError``, DSPy's ``LMUnexpectedError``) takes its cause's. A
    transport error or an unavailable stage takes a more specific kind from its causes: lm15 reports a read timeout
    as a ``TransportError`` raised from the socket's ``TimeoutError``, and that is a timeout.

    Args:
        error: Any exception (or a ``Straggler`` outcome).

    Example:
        >>> kind_of(dspy.LMRateLimitError("slow down")).value, kind_of(TimeoutError("read")).value
        ('rate_limit', 'timeout')
        >>> try:
        ...     raise fd.FusionError("The fusor failed") from dspy.LMServerError("503")
        ... except fd.FusionError as error:
        ...     kind_of(error).value
        'server'
    """
    vague = None
    for link in causes(error):
        kind = _own_kind(link)
        if kind in _REFINED_BY_CAUSE:
            vague = max(vague or kind, kind, key=_REFINED_BY_CAUSE.index)
        elif kind is not _K.OTHER:
            return kind
    return vague or _K.OTHER


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says a model was unavailable (down, timing out, rate limited, refusing the key, out of
    quota, past a deadline), not that it answered badly.

    Args:
        error: Any exception.

    Example:
        >>> is_outage(TimeoutError("read timed out")), is_outage(ValueError("unparsable"))
        (True, False)
    """
    return kind_of(error) in OUTAGES


# DSPy 3.4 says a reply was cut at max_tokens only in a warning on the ``dspy.clients.lm`` logger:
# "LM response was truncated due to exceeding max_tokens=..." (litellm engine) or "LM response was truncated;
# increase max_tokens ..." (other engines). tests/test_failures.py pins both.
DSPY_TRUNCATED = "truncated"


def says_truncated(record: logging.LogRecord) -> bool:
    """Whether a record of DSPy's LM logger reports a reply cut short at ``max_tokens`` (finish_reason ``"length"``).

    Args:
        record: A log record of the ``dspy.clients.lm`` logger.

    Example:
        >>> says_truncated(logging.makeLogRecord({"levelno": logging.WARNING, "msg": "LM response was truncated"}))
        True
    """
    return record.levelno >= logging.WARNING and DSPY_TRUNCATED in record.getMessage()

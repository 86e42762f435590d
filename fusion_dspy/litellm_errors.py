"""The ``fusion/`` litellm provider's errors as litellm's own exception types, chosen from typed data.

litellm passes its own exception types through untouched; anything else raised inside a custom provider becomes an
``APIConnectionError`` with a "This looks like a bug in LiteLLM" notice. So every failure of the provider leaves it
as one of litellm's public exceptions, with our message saying what to fix:

- **setup** (building the profiles, on the first call): a missing config or tuned file (``MissingFileError``) is a
  ``NotFoundError``, an unset key variable (``MissingKeyError``) an ``AuthenticationError``, a server that does not
  answer (``UnreachableError``) an ``APIConnectionError``, any other unusable config or tuned file a
  ``BadRequestError``;
- **a request** (``ServeError``, the status the server would answer): 400 ``BadRequestError`` (context length:
  ``ContextWindowExceededError``), 401 ``AuthenticationError``, 404 ``NotFoundError``, 408/504 ``Timeout``, 429
  ``RateLimitError``, 503 ``ServiceUnavailableError``, 500 ``InternalServerError``;
- **upstream failures** (a 502 from ``serve.run.upstream_error``): by the ``FailureKind`` of what failed (every
  failed sample's, or the error it was raised from): refused key ``AuthenticationError``, rate limit or quota
  ``RateLimitError``, no connection ``APIConnectionError``, timeout ``Timeout``, anything else ``BadGatewayError``.
"""

from typing import Any

import litellm

from fusion_dspy.backends.config import MissingFileError, MissingKeyError, UnreachableError
from fusion_dspy.errors import FusionDSPyError, SamplingError
from fusion_dspy.failures import FailureKind, kind_of
from fusion_dspy.serve.schema import ServeError

PROVIDER = "fusion"
SETUP = ("Set up the fusion/ provider with register(config=..., tuned=[...]) or $FUSION_DSPY_CONFIG and "
         "$FUSION_DSPY_TUNED.")  # fmt: skip

_SETUP_TYPES: tuple[tuple[type[BaseException], type[Exception]], ...] = (
    (MissingFileError, litellm.NotFoundError),
    (MissingKeyError, litellm.AuthenticationError),
    (UnreachableError, litellm.APIConnectionError),
    (FusionDSPyError, litellm.BadRequestError),  # any other config or tuned file that cannot be used
)
_STATUS: dict[int, type[Exception]] = {
    400: litellm.BadRequestError, 401: litellm.AuthenticationError, 403: litellm.AuthenticationError,
    404: litellm.NotFoundError, 408: litellm.Timeout, 413: litellm.BadRequestError, 429: litellm.RateLimitError,
    502: litellm.BadGatewayError, 503: litellm.ServiceUnavailableError, 504: litellm.Timeout,
}  # fmt: skip
# An upstream failure (502) by what failed, with what to check; other kinds stay a BadGatewayError.
_UPSTREAM: dict[FailureKind, tuple[type[Exception], str]] = {
    FailureKind.AUTH: (litellm.AuthenticationError, "The upstream model refused the key: check the api_key_env "
                       "variable of that model in the config."),
    FailureKind.BILLING: (litellm.RateLimitError, "The upstream model's quota or budget is spent."),
    FailureKind.RATE_LIMIT: (litellm.RateLimitError, "The upstream model is rate limiting: retry later, or lower "
                             "n or the concurrency."),
    FailureKind.TRANSPORT: (litellm.APIConnectionError, "The upstream model did not answer: start its server, or "
                            "fix api_base in the config."),
    FailureKind.TIMEOUT: (litellm.Timeout, "The upstream model timed out: raise its timeout in the config, or "
                          "lower n or max_tokens."),
}  # fmt: skip


def _make(cls: type[Exception], message: str, model: str, **extra: Any) -> Exception:
    return cls(message=message, model=model, llm_provider=PROVIDER, **extra)


def setup_error(error: BaseException, model: str, redact=str) -> Exception:
    """litellm's exception for a provider that could not be set up (its config, tuned files, keys, servers).

    Args:
        error: What building the profiles raised.
        model: The requested model (``fusion/<profile>``).
        redact: Removes known keys from the message.

    Example:
        >>> from fusion_dspy.backends.config import MissingFileError
        >>> error = setup_error(MissingFileError("--tuned qa=tuned.json: no such file."), "fusion/qa")
        >>> type(error).__name__, error.status_code
        ('NotFoundError', 404)
    """
    cls = next((mapped for ours, mapped in _SETUP_TYPES if isinstance(error, ours)), litellm.InternalServerError)
    message = redact(str(error) if isinstance(error, FusionDSPyError) else f"{type(error).__name__}: {error}")
    return _make(cls, f"{message} {SETUP}", model)


def _upstream_kind(error: ServeError) -> FailureKind | None:
    """The one kind every failed sample shares, or the kind of the error the 502 was raised from."""
    cause = error.__cause__
    if isinstance(cause, SamplingError):
        kinds = {getattr(failure, "kind", None) for failure in cause.failures}
        return next(iter(kinds)) if len(kinds) == 1 else None
    return None if cause is None else kind_of(cause)


def request_error(error: ServeError, model: str) -> Exception:
    """litellm's exception for a request the provider refused or whose models failed (``ServeError``).

    Args:
        error: The error, with the status ``fusion-dspy serve`` would answer, raised from its cause.
        model: The requested model (``fusion/<profile>``).

    Example:
        >>> error = request_error(ServeError(400, "n must be at most 16", param="n"), "fusion/fusion")
        >>> type(error).__name__, error.status_code
        ('BadRequestError', 400)
    """
    message = error.message
    if error.status == 400 and error.code == "context_length_exceeded":
        return _make(litellm.ContextWindowExceededError, message, model)
    if error.status == 502 and (kind := _upstream_kind(error)) in _UPSTREAM:
        cls, hint = _UPSTREAM[kind]
        return _make(cls, f"{message} {hint}", model)
    cls = _STATUS.get(error.status, litellm.InternalServerError)
    extra = {"headers": error.headers} if cls is litellm.RateLimitError and error.headers else {}
    return _make(cls, message, model, **extra)

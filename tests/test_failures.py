"""Failures are classified by the TYPES of DSPy's, the SDKs', Python's and our own errors, never by name or text."""

import asyncio
import logging
import subprocess
import sys

import dspy
import httpx
import litellm
import openai
import pytest
from dspy import lm15
from litellm.exceptions import MidStreamFallbackError
from litellm.types.router import RouterRateLimitError

from fusion_dspy.backends.engine import lm15_errors
from fusion_dspy.backends.native import _timeouts_as_timeouts
from fusion_dspy.core.concurrency import Straggler
from fusion_dspy.core.context import ContextOverflowError
from fusion_dspy.errors import DeadlineExceeded, FusionError, InvalidOutputError, SamplingError, SelectionError
from fusion_dspy.failures import OUTAGES, FailureKind, causes, is_outage, kind_of, says_truncated
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from fusion_dspy.workflows import scoring
from fusion_dspy.workflows.scoring import StageUnavailable

K = FailureKind
SDK = {"model": "openai/m", "llm_provider": "openai"}


def response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))


def raised_from(*chain: BaseException) -> BaseException:
    """``chain[0]`` raised from ``chain[1]``, raised from ``chain[2]``... as ``raise ... from ...`` links them."""
    for outer, inner in zip(chain, chain[1:], strict=False):
        outer.__cause__ = inner
    return chain[0]


DSPY_ERRORS = [
    (dspy.LMTimeoutError("slow"), K.TIMEOUT), (lm15.TimeoutError("slow"), K.TIMEOUT),
    (dspy.LMLockTimeoutError("credential lock busy"), K.TIMEOUT), (lm15.LockTimeoutError("busy"), K.TIMEOUT),
    (dspy.LMRateLimitError("slow down", retry_after=3), K.RATE_LIMIT), (lm15.RateLimitError("429"), K.RATE_LIMIT),
    (dspy.ContextWindowExceededError(model="m"), K.CONTEXT_WINDOW), (lm15.ContextLengthError("413"), K.CONTEXT_WINDOW),
    (dspy.LMAuthError("bad key"), K.AUTH), (lm15.AuthError("401"), K.AUTH),
    (dspy.LMBillingError("quota"), K.BILLING), (lm15.BillingError("402"), K.BILLING),
    (dspy.LMServerError("503"), K.SERVER), (lm15.ServerError("500"), K.SERVER),
    (dspy.LMTransportError("reset"), K.TRANSPORT), (lm15.TransportError("reset"), K.TRANSPORT),
    (dspy.LMInvalidRequestError("400"), K.BAD_REQUEST), (dspy.LMUnsupportedModelError("404"), K.BAD_REQUEST),
    (lm15.InvalidRequestError("400"), K.BAD_REQUEST), (lm15.UnsupportedFeatureError("tools"), K.BAD_REQUEST),
    (dspy.LMUnsupportedFeatureError("tools"), K.BAD_REQUEST),
    (dspy.AdapterParseError("ChatAdapter", dspy.Signature("question -> answer"), "no fields"), K.UNPARSABLE),
    (dspy.LMUnexpectedError("?"), K.OTHER), (dspy.LMNotConfiguredError("no key"), K.OTHER),
]  # fmt: skip
OWN_AND_PYTHON_ERRORS = [
    (TimeoutError("read"), K.TIMEOUT), (asyncio.TimeoutError(), K.TIMEOUT), (ConnectionRefusedError(), K.TRANSPORT),
    (DeadlineExceeded("FusionOfN did not finish"), K.DEADLINE), (Straggler("sample 3"), K.STRAGGLER),
    (ContextOverflowError("the fusor's prompt is too long"), K.CONTEXT_WINDOW),
    (StageUnavailable("the fuse stage's model is unavailable"), K.UNAVAILABLE),
    (FusionError("unusable"), K.OTHER), (SelectionError("no pick"), K.OTHER), (SamplingError("too few"), K.OTHER),
    (ValueError("unparsable"), K.OTHER),
    (InvalidOutputError(["$.city: 5 is not of type 'string'"], dspy.Signature("question -> answer")), K.INVALID),
]  # fmt: skip
LITELLM_ERRORS = [
    (litellm.Timeout(message="the model ran for a while", **SDK), K.TIMEOUT),
    (litellm.RateLimitError(message="", **SDK), K.RATE_LIMIT),
    (litellm.CallerCredentialRateLimitError(message="your key's limit", **SDK), K.RATE_LIMIT),
    (RouterRateLimitError(model="m", cooldown_time=5.0, enable_pre_call_checks=False, cooldown_list=[]), K.RATE_LIMIT),
    (litellm.ContextWindowExceededError(message="too long", **SDK), K.CONTEXT_WINDOW),
    (litellm.AuthenticationError(message="bad key", **SDK), K.AUTH),
    (litellm.PermissionDeniedError(message="not for you", response=response(403), **SDK), K.AUTH),
    (litellm.BudgetExceededError(current_cost=2.0, max_budget=1.0), K.BILLING),
    (litellm.InternalServerError(message="oops", **SDK), K.SERVER),
    (litellm.ServiceUnavailableError(message="down", **SDK), K.SERVER),
    (litellm.BadGatewayError(message="bad gateway", **SDK), K.SERVER),
    (MidStreamFallbackError(message="stream broke", original_exception=None, **SDK), K.SERVER),
    (litellm.APIConnectionError(message="Request timed out", **SDK), K.TRANSPORT),  # its words are not read
    (litellm.BadRequestError(message="context window exceeded", **SDK), K.BAD_REQUEST),  # nor are these
    (litellm.NotFoundError(message="no such model", **SDK), K.BAD_REQUEST),
    (litellm.UnprocessableEntityError(message="bad field", response=response(422), **SDK), K.BAD_REQUEST),
    (litellm.APIError(status_code=500, message="server error", **SDK), K.OTHER),  # a status is no type
    (openai.APITimeoutError(request=response(408).request), K.TIMEOUT),
    (openai.RateLimitError("slow down", response=response(429), body=None), K.RATE_LIMIT),
    (openai.APIConnectionError(request=response(500).request), K.TRANSPORT),
]  # fmt: skip


@pytest.mark.parametrize(("error", "kind"), DSPY_ERRORS + OWN_AND_PYTHON_ERRORS + LITELLM_ERRORS,
                         ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.value)
def test_each_error_type_has_its_kind(error, kind):
    assert kind_of(error) is kind
    assert is_outage(error) == (kind in OUTAGES)


def test_every_kind_is_reached_by_a_real_error_type():
    reached = {kind for _, kind in DSPY_ERRORS + OWN_AND_PYTHON_ERRORS + LITELLM_ERRORS}
    assert reached == set(FailureKind)


def test_an_upstream_error_with_an_unusual_message_is_still_classified_right():
    assert kind_of(litellm.Timeout(message="the model said hello", **SDK)) is K.TIMEOUT
    assert kind_of(litellm.RateLimitError(message="", **SDK)) is K.RATE_LIMIT
    assert kind_of(dspy.LMServerError("exceeds the context window of the load balancer")) is K.SERVER
    assert kind_of(dspy.LMTransportError("read timed out")) is K.TRANSPORT  # no TimeoutError under it

    class TimeoutErrorOfAPlugin(Exception):  # a name is not a type
        pass

    assert kind_of(TimeoutErrorOfAPlugin("timed out")) is K.OTHER and not is_outage(TimeoutErrorOfAPlugin())


def test_the_cause_chain_is_read():
    assert kind_of(raised_from(FusionError("The fusor failed"), dspy.LMServerError("503"))) is K.SERVER
    assert kind_of(raised_from(dspy.LMUnexpectedError("?"), litellm.Timeout(message="", **SDK))) is K.TIMEOUT
    assert kind_of(raised_from(StageUnavailable("unavailable"), dspy.LMRateLimitError("429"))) is K.RATE_LIMIT
    # lm15 reports a read timeout as a transport error raised from the socket's TimeoutError: a timeout.
    read = raised_from(StageUnavailable("unavailable"), dspy.LMTransportError("x"), lm15.TransportError("x"),
                       TimeoutError("the read"))  # fmt: skip
    assert kind_of(read) is K.TIMEOUT
    assert kind_of(raised_from(dspy.LMTransportError("x"), ConnectionResetError())) is K.TRANSPORT
    # The outermost error with a kind of its own decides: our deadline, whatever timed out under it.
    assert kind_of(raised_from(DeadlineExceeded("deadline"), asyncio.TimeoutError())) is K.DEADLINE
    loop = raised_from(ValueError("a"), ValueError("b"))
    loop.__cause__.__cause__ = loop
    assert kind_of(loop) is K.OTHER and len(list(causes(loop))) == 2


def test_an_implicit_context_is_read_unless_suppressed():
    def raise_while_handling(suppress: bool):
        try:
            raise TimeoutError("read")
        except TimeoutError:
            if suppress:
                raise RuntimeError("wrapped") from None
            raise RuntimeError("wrapped")  # noqa: B904 - the implicit __context__ is the point

    for suppress, kind in ((False, K.TIMEOUT), (True, K.OTHER)):
        with pytest.raises(RuntimeError) as raised:
            raise_while_handling(suppress)
        assert kind_of(raised.value) is kind


def test_a_real_lm15_read_timeout_is_a_timeout_sync_and_async():
    with StubOpenAIServer(respond=lambda call: {"answer": "4"}, delay=2.0) as server:
        lm = dspy.LM("openai/m", api_base=server.api_base, api_key="x", engine="lm15", timeout=0.3, num_retries=0)
        with pytest.raises(dspy.LMTransportError) as sync:
            dspy.Predict("question -> answer")(question="q", lm=lm)
        with pytest.raises(dspy.LMTransportError) as async_:
            asyncio.run(dspy.Predict("question -> answer").acall(question="q", lm=lm))
    assert kind_of(sync.value) is K.TIMEOUT and kind_of(async_.value) is K.TIMEOUT


def test_outages_are_the_failures_of_the_service_not_of_the_answer():
    assert {K.TIMEOUT, K.RATE_LIMIT, K.AUTH, K.BILLING, K.SERVER, K.TRANSPORT, K.UNAVAILABLE, K.DEADLINE} == OUTAGES
    assert is_outage(raised_from(FusionError("The fusor failed"), dspy.LMTimeoutError("x")))
    assert not is_outage(raised_from(FusionError("unusable"), dspy.AdapterParseError(
        "ChatAdapter", dspy.Signature("question -> answer"), "no fields")))  # fmt: skip
    assert scoring.is_outage is is_outage  # still importable from scoring, for one release


def test_kind_of_does_not_import_litellm():
    code = ("import sys; from fusion_dspy.failures import kind_of, FailureKind; "
            "assert kind_of(TimeoutError()) is FailureKind.TIMEOUT and kind_of(ValueError()) is FailureKind.OTHER; "
            "assert 'litellm' not in sys.modules and 'openai' not in sys.modules, 'imported an SDK'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("raised", "expected"), [
    (litellm.Timeout(message="the model said hello", **SDK), lm15.TimeoutError),
    (litellm.APIConnectionError(message="refused", **SDK), lm15.TransportError),
    (litellm.ContextWindowExceededError(message="too long", **SDK), lm15.ContextLengthError),
    (litellm.RateLimitError(message="", **SDK), lm15.RateLimitError),
    (litellm.NotFoundError(message="no such model", **SDK), lm15.UnsupportedModelError),
    (litellm.ServiceUnavailableError(message="down", **SDK), lm15.ServerError),
    (type("PromptTooLong", (litellm.ContextWindowExceededError,), {})(message="x", **SDK), lm15.ContextLengthError),
    (type("Unreachable", (litellm.APIConnectionError,), {})(message="x", **SDK), lm15.TransportError),
])  # fmt: skip
def test_the_router_engine_raises_litellms_errors_as_lm15_errors_by_type(raised, expected):
    with pytest.raises(lm15.LM15Error) as mapped, lm15_errors("router/m"):
        raise raised
    assert type(mapped.value) is expected and mapped.value.__cause__ is raised


def test_the_router_engine_lets_an_error_without_kind_or_status_through():
    with pytest.raises(ValueError, match="not an SDK error"), lm15_errors("router/m"):
        raise ValueError("not an SDK error, timed out")


def test_the_native_engine_turns_lm15_transport_errors_into_timeouts_by_their_cause():
    with pytest.raises(lm15.TimeoutError), _timeouts_as_timeouts():
        raise lm15.TransportError("no bytes for 0.3s") from TimeoutError("the socket read")
    with pytest.raises(lm15.TransportError) as kept, _timeouts_as_timeouts():
        raise lm15.TransportError("timed out, says the text") from ConnectionResetError()
    assert not isinstance(kept.value, lm15.TimeoutError)


def dspy_warnings(lm: dspy.LM) -> list[logging.LogRecord]:
    """The records DSPy's LM logger makes for one call of ``lm``."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("dspy.clients.lm")
    logger.addHandler(handler)
    try:
        dspy.Predict("question -> answer")(question="2 + 2?", lm=lm)
    finally:
        logger.removeHandler(handler)
    return records


@pytest.mark.parametrize("engine", ["scripted", "litellm"])
def test_dspys_warning_of_a_reply_cut_at_max_tokens_is_read_and_no_other(engine):
    """DSPy 3.4 says finish_reason 'length' only in text (its two wordings: the litellm engine's and the others')."""
    with StubOpenAIServer(respond=lambda call: {"answer": "4"}, finish_reason="length") as server:
        lm = scripted_lm(lambda call: {"answer": "4"}, finish_reason="length") if engine == "scripted" else dspy.LM(
            "openai/m", api_base=server.api_base, api_key="x", engine="litellm", cache=False)  # fmt: skip
        records = dspy_warnings(lm)
    assert [record.getMessage()[:25] for record in records if says_truncated(record)] == ["LM response was truncated"]
    with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        lm = scripted_lm(lambda call: {"answer": "4"}) if engine == "scripted" else dspy.LM(
            "openai/m", api_base=server.api_base, api_key="x", engine="litellm", cache=False)  # fmt: skip
        assert not any(says_truncated(record) for record in dspy_warnings(lm))
    quiet = logging.makeLogRecord({"levelno": logging.INFO, "msg": "LM response was truncated"})
    assert not says_truncated(quiet) and not says_truncated(logging.makeLogRecord({
        "levelno": logging.WARNING, "msg": "LM response was cut short"}))  # fmt: skip

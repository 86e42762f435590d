"""One chat request through a profile: draw the candidates, then fuse or select, with every call accounted for.

Shared by the HTTP server and the litellm provider. The candidates are drawn first; the fusor's reply can then
be streamed token by token (``FusionRun.stream``). Failures become ``ServeError``s with the status they deserve.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import dspy
from dspy.streaming import StreamListener, StreamResponse
from dspy.utils.exceptions import ContextWindowExceededError, LMError, LMTimeoutError

import fusion_dspy.tracing as tracing
from fusion_dspy.backends.memo_adapter import MemoChatAdapter, stream_adapter
from fusion_dspy.backends.secrets import Redactor
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.report import FusionReport, StageReport
from fusion_dspy.errors import FusionDSPyError, SamplingError
from fusion_dspy.failures import FailureKind
from fusion_dspy.serve.agent import Agent, agent_deltas
from fusion_dspy.serve.chat import render_conversation, reply_text
from fusion_dspy.serve.profiles import Limits, Profile
from fusion_dspy.serve.schema import ChatCompletionRequest, FusionOptions, ServeError


def upstream_error(error: BaseException, redact: Redactor) -> ServeError:
    """The ServeError for a failure of the models behind a profile (502 upstream failure, 504 timeout...)."""
    if isinstance(error, ServeError):
        return error
    text = redact(f"{type(error).__name__}: {error}")
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return ServeError(504, "The fusion did not finish within the server's time limit (--timeout).",
                          type="timeout_error", code="timeout")  # fmt: skip
    if isinstance(error, SamplingError):
        kinds = [getattr(failure, "kind", None) for failure in error.failures]  # Failures, from Sample
        if kinds and all(kind == FailureKind.CONTEXT_WINDOW for kind in kinds):  # retrying cannot help
            return ServeError(400, text, param="messages", code="context_length_exceeded")
        timed_out = kinds and all(kind == FailureKind.TIMEOUT for kind in kinds)
        status, code = (504, "upstream_timeout") if timed_out else (502, "upstream_failed")
        return ServeError(status, text, type="upstream_error", code=code)
    if isinstance(error, LMTimeoutError):
        return ServeError(504, text, type="upstream_error", code="upstream_timeout")
    if isinstance(error, ContextWindowExceededError):
        return ServeError(400, text, param="messages", code="context_length_exceeded")
    if isinstance(error, (LMError, FusionDSPyError)):
        return ServeError(502, text, type="upstream_error", code="upstream_failed")
    return ServeError(500, f"Internal error of the fusion server: {text}", type="server_error", code="internal_error")


class FusionRun:
    """One request: its per-request program, the sample stage, the combine stage, and the response.

    Args:
        profile: The served model.
        request: The validated request.
        limits: Server-side bounds on n and max_tokens.
        redact: Removes known keys from any text that leaves the server (default: none known).
        request_id: The server request's id (``X-Request-Id``), put in the report.

    Example:
        >>> from fusion_dspy.serve.profiles import build_profiles
        >>> profiles = build_profiles(fd.load_config(stub_config))
        >>> request = ChatCompletionRequest(model="fusion", messages=[{"role": "user", "content": "Hi"}])
        >>> run = FusionRun(profiles["fusion"], request, Limits())
        >>> pool = run.sample()                         # or await run.asample() in async code
        >>> body = run.response(pool, run.combine(pool))
        >>> body["choices"][0]["message"]["content"], body["fusion"]["n"], body["fusion"]["method"]
        ('Hello!', 2, 'fuse')
    """

    def __init__(self, profile: Profile, request: ChatCompletionRequest, limits: Limits | None = None,
                 redact: Redactor | None = None, request_id: str | None = None):  # fmt: skip
        self.profile, self.request, self.redact = profile, request, redact or Redactor()
        self.request_id = request_id
        limits = limits or Limits()
        options = request.fusion or FusionOptions()
        self.agent = Agent.of(request)  # tools, a JSON answer, stop sequences: None for plain chat
        self.program = profile.program_for(options, request.candidates, request.temperature,
                                           request.candidate_max_tokens, limits, self.agent)  # fmt: skip
        self.method = "fuse" if isinstance(self.program, FusionOfN) else "select"
        conversation = render_conversation(request.plain_messages())
        self.inputs = self.agent.inputs(conversation) if self.agent else {profile.input_field: conversation}
        self.names = profile.model_labels([*(options.models or []), *([options.fusor] if options.fusor else [])])
        self.meter = StageMeter()
        self.id, self.created = f"chatcmpl-fusion-{uuid.uuid4().hex}", int(time.time())

    @contextmanager
    def _upstream(self) -> Iterator[None]:
        """Around each stage: models named as the config names them, failures as ``ServeError``s, and the system
        message of a stage that chose no adapter written once per signature (``MemoChatAdapter``)."""
        default = {"adapter": MemoChatAdapter()} if dspy.settings.adapter is None else {}
        try:
            with tracing.model_labels(self.names), dspy.context(**default):
                yield
        except Exception as error:
            raise upstream_error(error, self.redact) from error

    def sample(self) -> dspy.Prediction:
        """The N candidates (failed samples dropped while ``min_candidates`` survive)."""
        with self._upstream(), self.meter.stage("sample"):
            return self.program.sample(**self.inputs)

    async def asample(self) -> dspy.Prediction:
        with self._upstream(), self.meter.stage("sample"):
            return await self.program.sample.acall(**self.inputs)

    def combine(self, pool: Pool) -> dspy.Prediction:
        """Fuse or select over the pool, without streaming."""
        with self._upstream():
            return self.program(candidates=pool, **self.inputs)

    async def acombine(self, pool: Pool) -> dspy.Prediction:
        with self._upstream():
            return await self.program.acall(candidates=pool, **self.inputs)

    async def stream(self, pool: Pool) -> AsyncIterator[str | dict[str, Any] | dspy.Prediction]:
        """The reply's text as it is written, then the final prediction. Only a fusor's reply streams by token; an
        agent's decision is checked whole first, then sent as deltas (dicts: ``agent_deltas``)."""
        if self.agent is not None:
            result = await self.acombine(pool)
            for delta in agent_deltas(self.message(result)[0]):
                yield delta
            yield result
            return
        if self.method != "fuse" or len(self.profile.reply_fields) != 1:
            result = await self.acombine(pool)
            yield self.reply(result)
            yield result
            return
        field = self.profile.reply_fields[0]
        held, streamed, final = "", "", None
        with self._upstream():
            listen_as = stream_adapter(self.program.fuse.adapter or dspy.settings.adapter)
            listener = StreamListener(field) if listen_as is not None else None
            streamer = dspy.streamify(self.program, is_async_program=True)
            with dspy.context(track_usage=True):  # dspy asks a streamed reply for its usage only then
                async for value in streamer(candidates=pool, **self.inputs):
                    if isinstance(value, dspy.Prediction):
                        final = value
                        continue
                    if listener is not None:
                        with dspy.context(adapter=listen_as):
                            response = listener.receive(value)
                        piece = response.chunk if isinstance(response, StreamResponse) else ""
                    else:  # plain chat: the whole reply is the field; hold back whitespace as the parser strips it
                        piece = _delta_text(value)
                        piece = piece.lstrip() if not streamed else piece
                        text = held + piece
                        piece, held = text.rstrip(), text[len(text.rstrip()):]
                    if piece:
                        streamed += piece
                        yield piece
        if final is None:
            raise ServeError(502, "The fusor's stream ended without a result.", type="upstream_error",
                             code="upstream_failed")  # fmt: skip
        text = self.reply(final)
        if not text.startswith(streamed):
            raise ServeError(502, "The fusor's streamed reply could not be used (its output was malformed and had to "
                             "be redone); retry, or ask without streaming.", type="upstream_error",
                             code="fusor_output_unusable")  # fmt: skip
        if text[len(streamed):]:
            yield text[len(streamed):]
        yield final

    def reply(self, result: dspy.Prediction) -> str:
        return self.agent.text(result.get("response")) if self.agent else reply_text(result, self.profile.reply_fields)

    def message(self, result: dspy.Prediction) -> tuple[dict[str, Any], str]:
        """The assistant message and its ``finish_reason`` (the report's: ``"length"`` for a reply cut at max_tokens;
        ``"tool_calls"`` for an agent's tool calls); an agent's decision is checked once more, and one that breaks
        the request's contract is an error (502), never an answer."""
        if self.agent is None:
            return {"role": "assistant", "content": self.reply(result)}, result.report.finish_reason
        problems = self.agent.review(dict(result.items()))
        if problems:
            raise ServeError(502, "The fusion's answer breaks the request's contract (" + "; ".join(problems) + "), "
                             "and no valid candidate was kept: retry, loosen tool_choice or the schema, or ask for "
                             "more candidates (fusion.n) or a stronger fusor (fusion.fusor).", type="upstream_error",
                             code="invalid_output")  # fmt: skip
        return self.agent.message(result, result.report.finish_reason)

    def report(self, result: dspy.Prediction, labeled: bool = True) -> FusionReport:
        """The call's report, its sample stage measured here (the server draws before it combines), its models
        named as the config names them (``labeled``) or by their model strings."""
        sample = StageReport(self.meter.seconds.get("sample", 0.0), self.meter.usage.get("sample", {}))
        report = result.report.replace(stages={**result.report.stages, "sample": sample}, request_id=self.request_id)
        return report.relabeled(self.names) if labeled else report

    def usage_and_fusion(self, pool: Pool, result: dspy.Prediction, *, report: FusionReport | None = None
                         ) -> tuple[dict, dict]:  # fmt: skip
        """OpenAI's ``usage`` (every call summed) and the ``fusion`` object: the report (``FusionReport.to_dict``)
        with the profile and N, keys masked; with ``return_candidates``, each candidate's reply text. ``report`` is
        ``self.report(result)`` when the caller has it already."""
        report = report if report is not None else self.report(result)
        fusion = {"profile": self.profile.name, "n": self.program.sample.n, **self.redact.within(report.to_dict())}
        if self.request.fusion and self.request.fusion.return_candidates:
            for entry, prediction in zip(fusion["candidates"], pool.predictions, strict=True):
                entry["text"] = self.reply(prediction)
        if self.agent is not None:  # each panel member's proposal: its answer or its tool calls
            for entry, prediction in zip(fusion["candidates"], pool.predictions, strict=True):
                entry["proposal"] = self.agent.proposal(prediction)
        return report.usage(), fusion

    def response(self, pool: Pool, result: dspy.Prediction, *, report: FusionReport | None = None) -> dict[str, Any]:
        """The ``chat.completion`` body (``report``: as in ``usage_and_fusion``)."""
        usage, fusion = self.usage_and_fusion(pool, result, report=report)
        message, finish = self.message(result)
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.profile.name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage,
                "fusion": fusion}  # fmt: skip

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        """One ``chat.completion.chunk`` body."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.profile.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}  # fmt: skip


def _delta_text(chunk: Any) -> str:
    try:
        return chunk.choices[0].delta.content or ""
    except (AttributeError, IndexError, TypeError):
        return ""

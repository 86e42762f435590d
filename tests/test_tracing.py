"""OpenTelemetry spans: a call's stages and candidates nest under the caller's span (and a served request under the
client's ``traceparent``); without a tracer provider nothing is recorded and OpenTelemetry is never imported."""

import json
import os
import subprocess
import sys
import textwrap

import dspy
import pytest
import yaml
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import fusion_dspy as fd
import fusion_dspy.tracing as tracing
from fusion_dspy.serve import ServeSettings, build_profiles, create_app
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from tests.serve_support import chat_reply

TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def spans():
    """A tracer provider recording into memory, used by fusion_dspy (and the server) for one test."""
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield provider, exporter
    tracing.use(None)


def answer(call):
    return {"comparison": "They agree.", "answer": "4"} if call.wants("comparison") else {"answer": "4"}


def down(call):
    raise TimeoutError("no reply within 30 s")


def by_name(exporter) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        named.setdefault(span.name, []).append(span)
    return named


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_fusion_inside_a_users_span_shows_each_stage_and_candidate(spans, asynchronous):
    provider, exporter = spans
    good, bad, fusor = scripted_lm(answer, model="scripted/good"), scripted_lm(down, model="scripted/down"), \
        scripted_lm(answer, model="scripted/fusor")  # fmt: skip
    program = fd.FusionOfN(dspy.Predict("question -> answer"), lms=[good, bad, good], fusor_lm=fusor)
    with provider.get_tracer("user").start_as_current_span("user's program") as mine:
        if asynchronous:
            import asyncio

            prediction = asyncio.run(program.acall(question="2 + 2?"))
        else:
            prediction = program(question="2 + 2?")
    named = by_name(exporter)
    (call,), (sample,), (fuse,) = named["fusion_dspy.FusionOfN"], named["fusion_dspy.sample"], named["fusion_dspy.fuse"]
    candidates = sorted(named["fusion_dspy.candidate"], key=lambda s: s.attributes["fusion.candidate.index"])
    assert call.parent.span_id == mine.get_span_context().span_id
    assert sample.parent.span_id == fuse.parent.span_id == call.context.span_id
    assert [c.parent.span_id for c in candidates] == [sample.context.span_id] * 3
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {mine.get_span_context().trace_id}

    assert [c.attributes["gen_ai.request.model"] for c in candidates] == ["scripted/good", "scripted/down",
                                                                         "scripted/good"]  # fmt: skip
    assert [c.attributes["fusion.outcome"] for c in candidates] == ["ok", "failed", "ok"]
    failed = candidates[1]
    assert failed.attributes["error.type"] == "timeout" and failed.status.status_code is StatusCode.ERROR
    assert "no reply" not in str(failed.attributes) + str(failed.events), "no error message is recorded"
    assert all(c.attributes["gen_ai.usage.input_tokens"] > 0 and c.attributes["gen_ai.usage.output_tokens"] > 0
               for c in (candidates[0], candidates[2]))  # fmt: skip
    assert fuse.attributes["gen_ai.request.model"] == "scripted/fusor" and fuse.attributes["fusion.candidates"] == 2
    assert fuse.attributes["gen_ai.usage.output_tokens"] > 0
    assert sample.attributes["fusion.failures"] == 1 and sample.attributes["fusion.candidates"] == 2
    usage = prediction.report.usage()
    assert call.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert call.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert (call.attributes["gen_ai.operation.name"], call.attributes["fusion.method"]) == ("invoke_workflow", "fuse")


def test_best_of_n_shows_its_judge_and_the_candidate_it_kept(spans):
    _, exporter = spans
    lm = scripted_lm(lambda call: {"comparison": "2 is best", "best_candidate": 2} if call.wants("best_candidate")
                     else {"answer": "4"})  # fmt: skip
    judge = scripted_lm(lambda call: {"comparison": "2 is best", "best_candidate": 2}, model="scripted/judge")
    program = fd.BestOfN(dspy.Predict("question -> answer"), n=2, lm=lm,
                         selection=fd.SelectOptions(judge="listwise", judge_lm=judge))  # fmt: skip
    kept = program(question="2 + 2?").report.selected_index
    (select,) = by_name(exporter)["fusion_dspy.select"]
    assert select.attributes["fusion.method"] == "listwise"
    assert select.attributes["gen_ai.request.model"] == "scripted/judge"
    assert select.attributes["fusion.selected_index"] == kept
    assert select.attributes["gen_ai.usage.input_tokens"] > 0


async def test_a_straggler_cut_off_ends_its_span_as_cancelled(spans, caplog):
    _, exporter = spans
    fast, slow = scripted_lm(answer, model="scripted/fast"), scripted_lm(answer, model="scripted/slow", delay=5.0)
    sample = fd.Sample(dspy.Predict("question -> answer"), lms=[fast, fast, slow],
                       options=fd.SampleOptions(min_candidates=1, quorum=2, straggler_grace_s=0.0))  # fmt: skip
    pool = await sample.acall(question="2 + 2?")
    assert len(pool.stragglers) == 1
    outcomes = {s.attributes["gen_ai.request.model"] + "/" + s.attributes["fusion.outcome"]
                for s in by_name(exporter)["fusion_dspy.candidate"]}  # fmt: skip
    assert outcomes == {"scripted/fast/ok", "scripted/slow/cancelled"}
    (stage,) = by_name(exporter)["fusion_dspy.sample"]
    assert (stage.attributes["fusion.stragglers"], stage.attributes["fusion.stop_reason"]) == (1, "quorum")
    assert "Failed to detach context" not in caplog.text


def test_a_served_request_continues_the_clients_trace(spans, tmp_path, monkeypatch):
    _, exporter = spans
    monkeypatch.setenv("TRACE_TEST_KEY", "sk-trace-test-secret-0123456789")
    with StubOpenAIServer(chat_reply) as upstream:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "models": {"panel": {"model": "openai/panel-model", "api_base": upstream.api_base, "cache": False,
                                 "num_retries": 0, "batch_samples": False, "api_key_env": "TRACE_TEST_KEY"}},
            "roles": {"generators": "panel"}, "fusion": {"n": 2}}))  # fmt: skip
        app = create_app(build_profiles(fd.load_config(config)), ServeSettings())
        body = {"model": "fusion", "messages": [{"role": "user", "content": "Hello q-1"}]}
        response = TestClient(app).post("/v1/chat/completions", json=body,
                                        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})  # fmt: skip
    assert response.status_code == 200
    finished = exporter.get_finished_spans()
    (request,) = [s for s in finished if s.kind is SpanKind.SERVER]
    assert request.name == "POST /v1/chat/completions"
    assert (request.parent.trace_id, request.parent.span_id) == (int(TRACE_ID, 16), int(PARENT_ID, 16))
    assert request.attributes["http.response.status_code"] == 200
    assert {s.context.trace_id for s in finished} == {int(TRACE_ID, 16)}, "every span is in the client's trace"
    named = by_name(exporter)
    assert {"fusion_dspy.sample", "fusion_dspy.FusionOfN", "fusion_dspy.fuse"} <= set(named)
    models = {s.attributes.get("gen_ai.request.model") for s in finished} - {None}
    assert models == {"panel"}, "models are named as the config names them"
    assert "sk-trace-test-secret" not in repr([(s.name, dict(s.attributes)) for s in finished])


def fresh_interpreter(script: str, **env: str) -> str:
    """What ``script`` prints, run in a new Python process (no provider set, nothing imported yet)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_a_provider_opentelemetry_is_not_imported_and_nothing_is_recorded():
    seen = json.loads(fresh_interpreter("""
        import json, sys
        import dspy
        import fusion_dspy as fd
        from fusion_dspy.testing import scripted_lm

        def answer(call):
            return {"comparison": "same", "answer": "4"} if call.wants("comparison") else {"answer": "4"}

        program = fd.FusionOfN(dspy.Predict("question -> answer"), n=3, lm=scripted_lm(answer))
        program(question="2 + 2?")
        imported = sorted(name for name in sys.modules if name.startswith("opentelemetry"))

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter, provider = InMemorySpanExporter(), TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        program(question="3 + 3?")                          # imported, but no provider set: still nothing
        unset = len(exporter.get_finished_spans())
        trace.set_tracer_provider(provider)                 # the user configures OpenTelemetry: spans appear
        program(question="4 + 4?")
        print(json.dumps({"imported": imported, "unset": unset,
                          "global": sorted({s.name for s in exporter.get_finished_spans()})}))
    """))
    assert seen["imported"] == [] and seen["unset"] == 0
    assert seen["global"] == ["fusion_dspy.FusionOfN", "fusion_dspy.candidate", "fusion_dspy.fuse",
                              "fusion_dspy.sample"]  # fmt: skip


def test_serve_otel_exports_by_the_otel_variables(tmp_path):
    with StubOpenAIServer(chat_reply) as upstream:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"models": {"panel": {"model": "openai/panel-model", "cache": False,
                                                               "api_base": upstream.api_base}},
                                          "roles": {"generators": "panel"}, "fusion": {"n": 2}}))  # fmt: skip
        printed = fresh_interpreter(f"""
            from fastapi.testclient import TestClient
            from opentelemetry import trace
            from fusion_dspy.serve.command import ServeOptions

            app = ServeOptions(config={str(config)!r}, otel=True).app()
            body = {{"model": "fusion", "messages": [{{"role": "user", "content": "Hi q-1"}}]}}
            response = TestClient(app).post("/v1/chat/completions", json=body,
                                            headers={{"traceparent": "00-{TRACE_ID}-{PARENT_ID}-01"}})
            assert response.status_code == 200, response.text
            trace.get_tracer_provider().force_flush()
        """, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="")
    decoder, exported, at = json.JSONDecoder(), [], printed.find("{")
    while at >= 0:  # the console exporter prints one JSON object per span
        span, end = decoder.raw_decode(printed, at)
        exported.append(span)
        at = printed.find("{", end)
    assert {"POST /v1/chat/completions", "fusion_dspy.sample", "fusion_dspy.FusionOfN"} <= {s["name"] for s in exported}
    assert {s["context"]["trace_id"] for s in exported} == {f"0x{TRACE_ID}"}
    assert {s["resource"]["attributes"]["service.name"] for s in exported} == {"fusion-dspy"}

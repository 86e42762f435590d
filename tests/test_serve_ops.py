"""What an operator runs serve with: metrics, readiness, request ids, keep-alives; and four defects found by probing."""

import json
import logging
import threading

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import chat_reply, config_fixture, fusion_server, stub_fixture, write_config  # noqa: F401

HELLO = [{"role": "user", "content": "Hello q-1"}]


def _post(server, body=None, content=None, headers=None, timeout=60.0):
    return httpx.post(f"{server.base_url}/chat/completions", json=body, content=content, headers=headers or {},
                      timeout=timeout)  # fmt: skip


def _events(response: httpx.Response) -> list[str]:
    """The SSE lines of a streamed reply: ``data: ...`` and ``: comment`` lines, blank lines dropped."""
    return [line for line in response.text.split("\n") if line]


def _surrogate_reply(body: dict) -> str:
    return chat_reply(body).replace("sample", "sample \ud800").replace("fused", "fused \ud800")


# The four defects


def test_a_reply_with_a_lone_surrogate_is_answered_not_a_plain_500(tmp_path):
    with StubOpenAIServer(_surrogate_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO,
                                      "fusion": {"return_candidates": True}})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"].startswith("fused \ufffd q-1")
    assert [c["text"] for c in body["fusion"]["candidates"]] == ["sample \ufffd q-1"] * 2


def test_a_streamed_reply_with_a_lone_surrogate_is_not_cut(tmp_path):
    with StubOpenAIServer(_surrogate_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    events = _events(response)
    assert events[-1] == "data: [DONE]", events[-3:]
    words = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                    if e.startswith("data: ") and json.loads(e[6:])["choices"])  # fmt: skip
    assert words.startswith("fused \ufffd q-1")


def test_a_request_holding_a_lone_surrogate_escape_is_valid_json_and_answered(config, stub):
    body = b'{"model": "fusion", "messages": [{"role": "user", "content": "Hello \\ud800 q-1"}]}'
    json.loads(body)  # valid JSON: the escape is allowed by the grammar
    with fusion_server(config) as server:
        response = _post(server, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert "Hello \ufffd q-1" in stub.requests[0]["messages"][-1]["content"]


def test_fusion_n_over_the_limit_names_fusion_n(config, stub):
    with fusion_server(config) as server:
        response = _post(server, {"model": "fusion", "messages": HELLO, "fusion": {"n": 99}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "fusion.n" and "fusion.n" in response.json()["error"]["message"]
    assert stub.requests == []


# Request ids


def test_a_request_id_is_returned_reported_in_errors_and_logged(config, caplog):
    with caplog.at_level(logging.WARNING), fusion_server(config) as server:
        given = _post(server, {"model": "fusion", "messages": HELLO}, headers={"X-Request-Id": "client-7.a"})
        made = _post(
            server,
            {"model": "fusion", "messages": HELLO},
            headers={"X-Request-Id": ("bad id\u00e9" * 3).encode("latin-1")},
        )
        error = _post(server, {"model": "gpt-9", "messages": HELLO}, headers={"X-Request-Id": "client-8"})
        huge = _post(server, {"model": "fusion", "messages": HELLO}, headers={"X-Request-Id": "x" * 129})
        logging.getLogger("fusion_dspy.test").warning("outside any request")
    assert given.headers["x-request-id"] == "client-7.a"
    assert given.json()["fusion"]["request_id"] == "client-7.a"
    new = made.headers["x-request-id"]
    assert len(new) == 32 and made.json()["fusion"]["request_id"] == new
    assert huge.headers["x-request-id"] != "x" * 129
    assert error.status_code == 404 and error.json()["error"]["request_id"] == "client-8"
    assert error.headers["x-request-id"] == "client-8"
    assert all(record.request_id is None for record in caplog.records)  # the attribute exists on every record


def test_log_records_written_during_a_request_carry_its_id(tmp_path, caplog):
    with StubOpenAIServer(chat_reply, status=lambda i: 500 if i == 0 else 200) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with caplog.at_level(logging.WARNING), fusion_server(config) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO}, headers={"X-Request-Id": "trace-1"})
    assert response.status_code == 200
    ids = {record.request_id for record in caplog.records if record.name.startswith("fusion_dspy")}
    assert "trace-1" in ids, [(r.name, r.getMessage()) for r in caplog.records]


# Keep-alives


def test_a_stream_starts_with_the_role_chunk_as_soon_as_the_request_is_accepted(tmp_path):
    held = threading.Event()  # every panel request waits on it: nothing can have been sampled yet
    with StubOpenAIServer(chat_reply, delay=lambda call: 0 if held.wait(30) else 0) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config, keepalive_s=0) as server, httpx.Client(timeout=60) as client:
            body = {"model": "fusion", "messages": HELLO, "stream": True}
            with client.stream("POST", f"{server.base_url}/chat/completions", json=body) as response:
                lines = response.iter_lines()
                first = next(line for line in lines if line)
                answered_before = len(stub.usage)  # replies the stub wrote (a panel request may have arrived)
                held.set()
                rest = [line for line in lines if line]
    assert response.status_code == 200 and answered_before == 0
    assert json.loads(first[6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert rest[-1] == "data: [DONE]"


def test_a_slow_panel_stream_gets_the_role_chunk_and_keepalives_before_the_first_token(tmp_path):
    with StubOpenAIServer(chat_reply, delay=lambda call: 1.2 if call.index < 2 else 0) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config, keepalive_s=0.3) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    events = _events(response)
    first_token = next(i for i, e in enumerate(events) if e.startswith("data: {") and
                       (json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content"))  # fmt: skip
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    comments = [i for i, e in enumerate(events) if e.startswith(":")]
    assert len([i for i in comments if i < first_token]) >= 2, events[: first_token + 1]
    assert events[-1] == "data: [DONE]"


def test_a_stream_failing_after_the_first_keepalive_ends_with_an_error_event(tmp_path):
    with StubOpenAIServer(chat_reply, delay=1.0, status=500) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
        with fusion_server(config, keepalive_s=0.2) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO, "stream": True},
                             headers={"X-Request-Id": "late-1"})  # fmt: skip
    assert response.status_code == 200  # started when accepted
    events = _events(response)
    assert events[1].startswith(":")
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_failed" and error["request_id"] == "late-1"


# Metrics


def _samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted labels): value}`` of an exposition, read with prometheus-client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def _value(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_metrics_count_a_scripted_run(tmp_path):
    """3 requests (the last streamed); one panel member down; the first fusion fails and a fallback selects."""
    with StubOpenAIServer(chat_reply) as good, StubOpenAIServer(chat_reply, status=500) as down, \
            StubOpenAIServer(chat_reply, status=lambda i: 500 if i == 0 else 200) as fusor:  # fmt: skip
        config = write_config(tmp_path / "c.yaml", {"good": good.api_base, "down": down.api_base,
                                                    "fusor": fusor.api_base}, ["good", "down"], n=2,
                              fallback="select")  # fmt: skip
        data = yaml.safe_load(config.read_text())
        data["roles"]["fusor"] = "fusor"
        config.write_text(yaml.safe_dump(data))
        with fusion_server(config) as server:
            replies = [_post(server, {"model": "fusion", "messages": HELLO}) for _ in range(2)]
            replies.append(_post(server, {"model": "fusion", "messages": HELLO, "stream": True}))
            refused = _post(server, {"model": "gpt-9", "messages": HELLO})
            text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    assert [r.status_code for r in replies] == [200, 200, 200] and refused.status_code == 404
    assert replies[0].json()["fusion"]["fallback"] is not None and replies[1].json()["fusion"]["fallback"] is None
    samples = _samples(text)
    assert _value(samples, "fusion_requests_total", profile="fusion", status="200") == 3
    assert _value(samples, "fusion_requests_total", profile="none", status="404") == 1
    assert _value(samples, "fusion_failures_total", model="down", stage="sample") == 3
    assert _value(samples, "fusion_failures_total", model="good") == 0
    assert _value(samples, "fusion_fallbacks_total", profile="fusion") == 1
    assert _value(samples, "fusion_samples_drawn_count", profile="fusion") == 3
    assert _value(samples, "fusion_samples_drawn_sum", profile="fusion") == 6
    assert _value(samples, "fusion_request_seconds_count", profile="fusion") == 3
    assert _value(samples, "fusion_stage_seconds_count", stage="sample") == 3
    assert _value(samples, "fusion_stage_seconds_count", stage="fuse") == 3
    assert _value(samples, "fusion_time_to_first_token_seconds_count") == 1
    assert _value(samples, "fusion_requests_in_flight") == 0
    reported = sum(r.json()["fusion"]["stages"]["sample"]["prompt_tokens"] for r in replies[:2])
    assert reported > 0 and _value(samples, "fusion_tokens_total", stage="sample", type="prompt") > reported
    labels = {value for (_, ls) in samples for _, value in ls}
    assert not any("Hello" in value or "q-1" in value for value in labels), "no user text in a label"


async def test_a_request_is_counted_before_its_last_byte_is_sent():
    """A client that has its whole answer and then reads /metrics finds its request counted and no longer in flight
    (with --workers the other worker may answer the scrape at once), whether the answer is one body or a stream."""
    from fusion_dspy.serve.metrics import MetricsMiddleware, ServeMetrics

    for bodies in ([b"{}"], [b"data: 1", b"data: [DONE]"]):
        metrics, seen = ServeMetrics(), []

        async def app(scope, receive, send, bodies=bodies):
            scope["state"]["fusion_profile"] = "fusion"
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for k, body in enumerate(bodies):
                await send({"type": "http.response.body", "body": body, "more_body": k < len(bodies) - 1})

        async def send(message, metrics=metrics, seen=seen):
            if message["type"] == "http.response.body":
                samples = _samples(metrics.render()[0].decode())
                seen.append((_value(samples, "fusion_requests_total", profile="fusion", status="200"),
                             _value(samples, "fusion_requests_in_flight")))  # fmt: skip

        await MetricsMiddleware(app, metrics)({"type": "http", "path": "/v1/chat/completions"}, None, send)
        assert seen == [(0, 1)] * (len(bodies) - 1) + [(1, 0)], bodies
        assert _value(_samples(metrics.render()[0].decode()), "fusion_requests_total") == 1, "counted once"


def test_metrics_are_behind_the_key_and_can_be_turned_off(config):
    with fusion_server(config, api_key="ops-key-1") as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        refused = httpx.get(url)
        allowed = httpx.get(url, headers={"Authorization": "Bearer ops-key-1"})
    with fusion_server(config, metrics=False) as server:
        off = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
    assert refused.status_code == 401 and allowed.status_code == 200
    assert "fusion_requests_in_flight" in allowed.text and "ops-key-1" not in allowed.text
    assert off.status_code == 404


# Health


def test_liveness_and_readiness(config, stub, tmp_path):
    with fusion_server(config) as server:
        base = f"http://127.0.0.1:{server.port}"
        live, ready, old = httpx.get(f"{base}/health/liveness"), httpx.get(f"{base}/health/readiness"), \
            httpx.get(f"{base}/health")  # fmt: skip
    assert live.status_code == 200 and old.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "reachable": 1, "backends": 1}
    with StubOpenAIServer(chat_reply) as gone:
        dead = write_config(tmp_path / "dead.yaml", {"gone": gone.api_base}, "gone", n=2)
        app_server = fusion_server(dead)
        server = app_server.__enter__()  # the backend was up when the server started (its check), then it goes
    try:
        unready = httpx.get(f"http://127.0.0.1:{server.port}/health/readiness")
    finally:
        app_server.__exit__(None, None, None)
    assert unready.status_code == 503 and unready.json()["status"] == "unreachable"


# As a real process: draining on SIGTERM, and one view of the metrics across workers


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(config, port: int, *options: str, env: dict | None = None, verbose: bool = False):
    import os
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "fusion_dspy.cli", *(["-v"] if verbose else []), "serve", "--config",
               str(config), "--port", str(port), *options]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})  # fmt: skip
    deadline = time.monotonic() + 300  # a shared machine: two workers took 190 s to start under load
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"fusion-dspy serve was not ready on port {port}: {process.communicate()[1]}")


def test_sigterm_drains_readiness_turns_503_and_the_request_in_flight_finishes(tmp_path):
    import signal
    import threading
    import time

    with StubOpenAIServer(chat_reply, delay=lambda call: 3.0 if call.index == 0 else 0.0) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
        port = _free_port()
        process = _serve(config, port, "--drain-s", "1.5", verbose=True)
        try:
            outcome: dict = {}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            worker = threading.Thread(target=lambda: outcome.update(r=httpx.post(url, json={
                "model": "fusion", "messages": HELLO}, timeout=60)))  # fmt: skip
            worker.start()
            deadline = time.monotonic() + 30
            while not stub.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert stub.requests, "the request never reached the backend"
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            readiness = httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=5)
            liveness = httpx.get(f"http://127.0.0.1:{port}/health/liveness", timeout=5)
            worker.join(60)
            out, _ = process.communicate(timeout=30)  # uvicorn's access log goes to stdout
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert readiness.status_code == 503 and readiness.json()["status"] == "draining"
    assert liveness.status_code == 200
    assert outcome["r"].status_code == 200, outcome["r"].text
    assert outcome["r"].json()["choices"][0]["message"]["content"].startswith("fused q-1")
    request_id = outcome["r"].headers["x-request-id"]
    assert f'"POST /v1/chat/completions HTTP/1.1" 200 OK request_id={request_id}' in out, out[-2000:]


def test_metrics_of_several_workers_are_one_view(tmp_path, stub):
    import signal

    config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
    port, folder = _free_port(), tmp_path / "tmp"
    folder.mkdir()
    process = _serve(config, port, "--workers", "2", env={"TMPDIR": str(folder)})
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client:  # one connection per request: the workers share them
            for k in range(6):
                assert httpx.post(f"{url}/v1/chat/completions", json={"model": "fusion", "messages": [
                    {"role": "user", "content": f"q-{k}"}]}, timeout=60).status_code == 200  # fmt: skip
            views = [_samples(client.get(f"{url}/metrics", headers={"Connection": "close"}).text) for _ in range(4)]
        during = [p.name for p in folder.iterdir()]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert [_value(v, "fusion_requests_total", profile="fusion", status="200") for v in views] == [6.0] * 4
    assert [_value(v, "fusion_stage_seconds_count", stage="sample") for v in views] == [6.0] * 4
    assert any(name.startswith("fusion-dspy-metrics-") for name in during)
    assert list(folder.iterdir()) == [], "the serve command removes its metrics folder"


def test_an_unexpected_failure_is_an_openai_style_500_with_the_request_id(config, monkeypatch):
    async def broken(request, limit):
        raise RuntimeError("a bug of the server")

    monkeypatch.setattr("fusion_dspy.serve.app._read_body", broken)  # fails outside every handled path
    with fusion_server(config) as server:
        response = _post(server, {"model": "fusion", "messages": HELLO}, headers={"X-Request-Id": "bug-1"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "bug-1"
    error = response.json()["error"]
    assert error["code"] == "internal_error" and error["request_id"] == "bug-1"


def test_a_body_nested_deeper_than_python_reads_is_a_400_not_a_500(config):
    with fusion_server(config) as server:
        response = _post(server, content=b"[" * 200_000 + b"]" * 200_000)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"

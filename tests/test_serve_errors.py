"""Every error status of the server, over raw HTTP: what it means, the field it names, and no key in any body."""

import contextlib
import json
import subprocess
import sys
import textwrap
import threading

import httpx
import openai
import pytest

from fusion_dspy.backends.secrets import Redactor
from fusion_dspy.cli import main
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.serve.server import check_exposure, is_loopback
from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import chat_reply, config_fixture, fusion_server, stub_fixture, write_config  # noqa: F401

KEY = "fusion-test-key-4c1d"
UPSTREAM_KEY = "sk-upstream-secret-99"
HELLO = [{"role": "user", "content": "Hello q-1"}]


def _post(server, body=None, content=None, key=None, timeout=30.0):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, content=content, headers=headers,
                      timeout=timeout)  # fmt: skip


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "fusion"}, "messages"),
    ({"model": "fusion", "messages": []}, "messages"),
    ({"model": "fusion", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "fusion", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"model": "fusion", "messages": HELLO, "temperature": 7}, "temperature"),
    ({"model": "fusion", "messages": HELLO, "n": 99}, "n"),
    ({"model": "fusion", "messages": HELLO, "max_tokens": 10**6}, "max_tokens"),
    ({"model": "fusion", "messages": HELLO, "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"model": "fusion", "messages": HELLO, "fusion": {"models": ["stub", "gpt-9"]}}, "fusion.models[1]"),
    ({"model": "fusion", "messages": HELLO, "fusion": {"fusor": "gpt-9"}}, "fusion.fusor"),
    ({"model": "fusion", "messages": HELLO, "fusion": {"models": ["stub"] * 17}}, "fusion.models"),  # > --max-n
    ({"model": "fusion", "messages": HELLO, "fusion": {"api_base": "http://evil"}}, "fusion.api_base"),
])  # fmt: skip
def test_bad_requests_get_400_naming_the_field(config, stub, body, param):
    with fusion_server(config) as server:
        response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in error["message"]
    assert stub.requests == [], "nothing is sampled for a bad request"


def test_malformed_json_is_400_and_unknown_model_is_404(config):
    with fusion_server(config) as server:
        broken = _post(server, content=b"{not json")
        unknown = _post(server, {"model": "gpt-5", "messages": HELLO})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    assert "fusion" in unknown.json()["error"]["message"]


def test_a_wrong_or_missing_key_is_401_and_no_key_is_ever_echoed(config):
    with fusion_server(config, api_key=KEY) as server:
        missing = _post(server, {"model": "fusion", "messages": HELLO})
        wrong = _post(server, {"model": "fusion", "messages": HELLO}, key=KEY[:-1] + "x")
        models = httpx.get(f"{server.base_url}/models")
        right = _post(server, {"model": "fusion", "messages": HELLO}, key=KEY)
        health = httpx.get(f"http://127.0.0.1:{server.port}/health")
    for response in (missing, wrong, models):
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert right.status_code == 200 and health.status_code == 200
    for response in (missing, wrong, models, right):
        assert KEY not in response.text and KEY[:-1] not in response.text


def test_a_body_over_the_limit_is_413(config, stub):
    with fusion_server(config, max_body_bytes=2_000) as server:
        response = _post(server, {"model": "fusion", "messages": [{"role": "user", "content": "x" * 5_000}]})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert stub.requests == []


def test_a_full_server_answers_429_with_retry_after(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def held_reply(body):
        entered.set()
        release.wait(30)
        return chat_reply(body)

    with StubOpenAIServer(held_reply) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
        with fusion_server(config, max_concurrency=1, retry_after=3) as server:
            first: dict = {}
            worker = threading.Thread(target=lambda: first.update(r=_post(server, {"model": "fusion",
                                                                                   "messages": HELLO})))
            worker.start()
            assert entered.wait(30), "the first request never reached the backend"
            refused = _post(server, {"model": "fusion", "messages": HELLO})
            release.set()
            worker.join(30)
            after = _post(server, {"model": "fusion", "messages": HELLO})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert first["r"].status_code == 200 and after.status_code == 200, "the slot is given back"


def test_upstream_failure_is_502_with_the_failures_and_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", UPSTREAM_KEY)
    with StubOpenAIServer(chat_reply, status=500) as bad:
        config = write_config(tmp_path / "c.yaml", {"bad": bad.api_base}, "bad", n=2)
        config.write_text(config.read_text().replace("num_retries: 0", "num_retries: 0\n    api_key_env: STUB_KEY"))
        with fusion_server(config, redact_also=[UPSTREAM_KEY]) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO})
            streamed = _post(server, {"model": "fusion", "messages": HELLO, "stream": True})
    assert response.status_code == 502, response.text
    events = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert streamed.status_code == 200 and events[0]["choices"][0]["delta"]["role"] == "assistant", "started at once"
    for error in (response.json()["error"], events[-1]["error"]):  # the stream ends with the error event
        assert error["code"] == "upstream_failed" and "0 of 2 samples" in error["message"]
    assert UPSTREAM_KEY not in response.text + streamed.text
    assert len(bad.requests) == 2 + 2, "both samples were tried, for each request"


BACKEND = textwrap.dedent("""
    import sys, time
    from fusion_dspy.testing import StubOpenAIServer

    def reply(body):
        print("request", flush=True)
        time.sleep(120)
        return "never"

    server = StubOpenAIServer(reply).start()
    print(server.api_base, flush=True)
    time.sleep(300)
""")


def test_a_killed_upstream_is_502_not_a_hang(tmp_path):
    backend = subprocess.Popen([sys.executable, "-c", BACKEND], stdout=subprocess.PIPE, text=True)
    try:
        api_base = backend.stdout.readline().strip()
        config = write_config(tmp_path / "c.yaml", {"remote": api_base}, "remote", n=1)
        with fusion_server(config) as server:
            outcome: dict = {}
            worker = threading.Thread(target=lambda: outcome.update(r=_post(server, {"model": "fusion",
                                                                                     "messages": HELLO})))
            worker.start()
            assert backend.stdout.readline().strip() == "request"  # the request is inside the backend now
            backend.kill()
            worker.join(60)
        assert not worker.is_alive(), "the request hung after its backend died"
        assert outcome["r"].status_code == 502 and outcome["r"].json()["error"]["code"] == "upstream_failed"
    finally:
        backend.kill()
        backend.wait(10)


def test_a_request_over_the_time_limit_is_504(tmp_path):
    with StubOpenAIServer(chat_reply, delay=5) as slow:
        config = write_config(tmp_path / "c.yaml", {"slow": slow.api_base}, "slow", n=1)
        with fusion_server(config, timeout=0.3) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO})
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"


def test_an_error_after_the_stream_started_ends_it_with_an_error_event(tmp_path):
    gate = threading.Event()  # never set: the fusor's reply stops halfway until the deadline passes
    with StubOpenAIServer(chat_reply, stream_gate=gate) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
        with fusion_server(config, timeout=3) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            words = []
            with pytest.raises(openai.APIError, match="time limit"):
                for chunk in client.chat.completions.create(model="fusion", messages=HELLO, stream=True):
                    words.append(chunk.choices[0].delta.content)
        gate.set()
    assert any(words), "the stream had started before the error"


def test_binding_beyond_loopback_without_a_key_is_refused(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(FusionDSPyError, match="without an API key"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", KEY)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "Refusing to serve on 0.0.0.0 without an API key" in capsys.readouterr().err
    assert main(["serve", "--api-key-env", "FUSION_TEST_UNSET_VARIABLE"]) == 2
    assert "FUSION_TEST_UNSET_VARIABLE" in capsys.readouterr().err


def test_redactor_masks_every_known_key():
    redact = Redactor([KEY, UPSTREAM_KEY, None, ""])
    assert redact(f"auth {KEY} then {UPSTREAM_KEY}.") == "auth *** then ***."


def test_keys_are_masked_in_log_records(caplog):
    import logging

    from fusion_dspy.backends.secrets import redact_logs

    factory = logging.getLogRecordFactory()
    try:
        redact_logs(Redactor([KEY]))
        with caplog.at_level(logging.WARNING):
            logging.getLogger("fusion_dspy.core.sample").warning("upstream said: bad key %s", KEY)
    finally:
        logging.setLogRecordFactory(factory)
    assert "upstream said: bad key ***" in caplog.text and KEY not in caplog.text


def test_a_client_leaving_mid_stream_frees_its_slot(tmp_path):
    import time

    gate = threading.Event()  # the fusor's reply stops halfway: the client leaves while it is still being written
    with StubOpenAIServer(chat_reply, stream_gate=gate) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
        with fusion_server(config, max_concurrency=1) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            stream = client.chat.completions.create(model="fusion", messages=HELLO, stream=True)
            next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
            stream.close()
            health = f"http://127.0.0.1:{server.port}/health"
            deadline = time.monotonic() + 30
            while httpx.get(health).json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            after = _post(server, {"model": "fusion", "messages": HELLO, "stream": False}, timeout=60)
            gate.set()
    assert after.status_code == 200, after.text  # not 429: the slot came back


def test_a_client_gone_before_its_stream_starts_frees_its_slot(config):
    """The client leaves before the response's first byte (the server's send fails): its events never start, and
    the slot still comes back, with nothing left running."""
    import asyncio

    import fusion_dspy as fd
    from fusion_dspy.serve.app import ServeSettings, create_app
    from fusion_dspy.serve.profiles import build_profiles

    app = create_app(build_profiles(fd.load_config(config)), ServeSettings(max_concurrency=1))
    body = json.dumps({"model": "fusion", "messages": HELLO, "stream": True}).encode()

    async def post_and_leave() -> None:
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict) -> None:
            raise OSError("the client is gone")  # ASGI 2.4: a server's send fails once the client has left

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"",
                 "root_path": "", "query_string": b"", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}}  # fmt: skip
        with contextlib.suppress(Exception):
            await app(scope, receive, send)

    async def in_flight() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/health")).json()["in_flight"]

    async def scenario() -> tuple[int, int]:
        await post_and_leave()
        left = await in_flight()
        await asyncio.sleep(0.2)  # a task left running would now be drawing samples
        return left, len(asyncio.all_tasks())

    left, tasks = asyncio.run(scenario())
    assert left == 0, "the slot of a stream that never started is held"
    assert tasks == 1  # only this test's own: no fusion runs for a response never sent


def test_samples_that_all_time_out_upstream_are_504(tmp_path):
    with StubOpenAIServer(chat_reply, delay=5) as slow:
        config = write_config(tmp_path / "c.yaml", {"slow": slow.api_base}, "slow", n=2)
        config.write_text(config.read_text().replace("num_retries: 0", "num_retries: 0\n    timeout: 0.5"))
        with fusion_server(config) as server:
            response = _post(server, {"model": "fusion", "messages": HELLO})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_a_body_that_stalls_gets_408_and_holds_no_slot(tmp_path, stub):
    """A client that sends its headers and then stops mid-body is timed out; meanwhile others are served."""
    import socket
    import time

    config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=1)
    with fusion_server(config, max_concurrency=1, timeout=2.0) as server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"model\"")
        time.sleep(0.3)  # the server is now reading that body
        served = _post(server, {"model": "fusion", "messages": HELLO})
        stalled.settimeout(30)
        answer = b""
        while b"}}" not in answer and (part := stalled.recv(65536)):  # the headers, then the JSON body
            answer += part
        stalled.close()
    answer = answer.decode()
    assert served.status_code == 200, "the stalled body holds no concurrency slot"
    assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer


def test_a_conversation_too_long_for_every_sample_is_400_not_502():
    """Retrying cannot fix it, and the openai client retries a 502: say what the caller must change."""
    import dspy

    import fusion_dspy as fd
    from fusion_dspy.core.report import Failure
    from fusion_dspy.errors import SamplingError
    from fusion_dspy.serve.run import upstream_error

    failures = [Failure("sample", "context_window", "ContextWindowExceededError", "the prompt is 9000 tokens",
                        "openai/m", i) for i in range(2)]  # fmt: skip
    error = upstream_error(SamplingError("Only 0 of 2 samples succeeded", failures), Redactor())
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    mixed = upstream_error(SamplingError("Only 0 of 2 samples succeeded", failures[:1] + [
        Failure("sample", "transport", "APIConnectionError", "refused", "openai/m", 1)]), Redactor())  # fmt: skip
    assert mixed.status == 502

    class TooLong:  # what a backend over its context window answers every sample
        def complete(self, request):
            raise dspy.lm15.ContextLengthError("the prompt is 9000 tokens; the limit is 8192")

    lm = dspy.LM("openai/m", engine=TooLong(), cache=False, num_retries=0)
    with pytest.raises(SamplingError) as sampled:
        fd.Sample("question -> answer", n=2, lm=lm)(question="q")
    assert upstream_error(sampled.value, Redactor()).code == "context_length_exceeded", "from Sample's own failures"


def test_keys_a_config_names_are_held_and_masked_in_records_and_study_outages(monkeypatch, tmp_path):
    import optuna

    from fusion_dspy.backends import Backends, FusionConfig
    from fusion_dspy.backends.secrets import HELD
    from fusion_dspy.optimizers.outages import OUTAGE, record_outage
    from fusion_dspy.workflows.jsonl import ResultsLog

    secret = "sk-held-0123456789abcdef"
    monkeypatch.setenv("HELD_TEST_KEY", secret)
    Backends(FusionConfig.model_validate({"models": {"m": {"model": "openai/m", "api_key_env": "HELD_TEST_KEY"}},
                                          "roles": {"generators": "m"}}))  # fmt: skip
    HELD.add("EMPTY", "test")  # placeholder keys of local servers: masking them would mask ordinary words
    assert secret in HELD.secrets and not {"EMPTY", "test"} & set(HELD.secrets)
    with ResultsLog(tmp_path / "out.jsonl") as log:
        log.write({"id": f"item-{secret}", "error": f"401: key {secret}", "nested": [{"why": secret}]})
    written = (tmp_path / "out.jsonl").read_text()
    assert written.count(secret) == 1 and f'"id": "item-{secret}"' in written, "only the id is kept (resuming)"
    trial = optuna.create_study().ask()
    record_outage(trial, RuntimeError(f"the fuse stage's model is unavailable: bad key {secret}"))
    assert secret not in trial.user_attrs[OUTAGE] and "bad key ***" in trial.user_attrs[OUTAGE]

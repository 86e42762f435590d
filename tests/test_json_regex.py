"""A client's JSON Schema regexes are matched in bounded time: an evil ``pattern`` never freezes the server (ReDoS).

``^(a|a)*$`` against 25 a's and a '!' backtracks through 2**25 paths: seconds with Python's ``re`` (what
``jsonschema`` uses by itself), a tenth of a second and a problem saying so here.
"""

import threading
import time

import httpx
import openai
import pytest

from fusion_dspy.core.json_output import check_schema, schema_problems
from fusion_dspy.testing import StubOpenAIServer
from tests.agent_support import is_fusor
from tests.serve_support import fusion_server, write_config

EVIL = "^(a|a)*$"
SLOW = "a" * 25 + "!"  # ~3 s with `re` on this machine, exponential in its length
PROMPT = "well under the seconds `re` takes on SLOW, with room for a loaded machine"
BUDGET = 1.0  # seconds, for one validation: a match gets 0.1 s


def _timed(instance, schema):
    start = time.perf_counter()
    problems = schema_problems(instance, schema)
    return problems, time.perf_counter() - start


def test_an_evil_pattern_is_a_prompt_problem_not_a_hang():
    problems, seconds = _timed(SLOW, {"type": "string", "pattern": EVIL})
    assert seconds < BUDGET, PROMPT
    assert len(problems) == 1 and "took longer than 0.1 s to match" in problems[0] and "simplify it" in problems[0]
    assert schema_problems("aaaa", {"type": "string", "pattern": EVIL}) == [], "a quick match still counts"


def test_an_evil_pattern_property_is_a_prompt_problem_and_the_other_keys_are_checked():
    schema = {"type": "object", "patternProperties": {EVIL: {"type": "integer"}}}
    problems, seconds = _timed({SLOW: 1, "aa": "not an integer"}, schema)
    assert seconds < BUDGET, PROMPT
    assert any(p.startswith(f"$['{SLOW}']: ") and "took longer than 0.1 s" in p for p in problems), problems
    assert "$.aa: 'not an integer' is not of type 'integer'" in problems


def test_additional_properties_next_to_pattern_properties_is_bounded_and_keeps_its_meaning():
    schema = {"type": "object", "properties": {"id": {}}, "patternProperties": {EVIL: {}, "^x-": {}},
              "additionalProperties": False}  # fmt: skip
    problems, seconds = _timed({SLOW: 1, "id": 1, "x-a": 1, "aaa": 1, "other": 1}, schema)
    assert seconds < BUDGET, PROMPT
    assert f"$: 'other' does not match any of the regexes: '{EVIL}', '^x-'" in problems, problems
    assert sum("took longer than" in p for p in problems) == 1, "reported once, and the slow key is not an extra"
    typed = dict(schema, additionalProperties={"type": "string"})
    assert schema_problems({"id": 1, "x-a": 1, "other": 2}, typed) == ["$.other: 2 is not of type 'string'"]


def test_unevaluated_properties_next_to_pattern_properties_is_refused_up_front():
    schema = {"type": "object", "patternProperties": {"^x-": {}}, "unevaluatedProperties": False}
    with pytest.raises(ValueError, match="use 'additionalProperties' instead of 'unevaluatedProperties'"):
        check_schema(schema)
    problems, seconds = _timed({SLOW: 1}, {**schema, "patternProperties": {EVIL: {}}})
    assert seconds < BUDGET and "not supported" in problems[0], "schema_problems refuses it too, without matching"


def test_a_regex_that_does_not_compile_is_refused_up_front_with_the_reason():
    with pytest.raises(ValueError, match=r"'\^\(a' is not a 'regex' \(missing \) at position 3\) \(at pattern\)"):
        check_schema({"type": "string", "pattern": "^(a"})
    with pytest.raises(ValueError, match="repeat count too big"):  # `re` raised an OverflowError: a 500
        check_schema({"type": "string", "pattern": "a{4294967296}"})
    with pytest.raises(ValueError, match="at patternProperties"):
        check_schema({"type": "object", "patternProperties": {"((": {}}})


def test_unicode_property_classes_work():  # `re` refused them; `regex` (the engine now) has them
    check_schema({"type": "string", "pattern": r"^\p{L}+$"})
    assert schema_problems("Été", {"type": "string", "pattern": r"^\p{L}+$"}) == []


CODE = {"type": "object", "properties": {"code": {"type": "string", "pattern": EVIL}}, "required": ["code"]}
JSON_CODE = {"type": "json_schema", "json_schema": {"name": "code", "schema": CODE}}


def _responder():
    evil_samples = [1]  # the first sample of the evil request answers with the blow-up too: a failed candidate

    def respond(call):
        if "evil" not in call.inputs.get("conversation", ""):  # a plain chat request
            return {"comparison": "same", "response": "plain fused"} if is_fusor(call) else {"response": "plain"}
        if is_fusor(call):  # the fused answer hits the schema's blow-up, on the first try and the retry
            return {"comparison": "both fine", "response": {"code": SLOW}}
        return {"response": {"code": SLOW if evil_samples and evil_samples.pop() else "aaa"}}

    return respond


def test_an_evil_pattern_through_serve_falls_back_promptly_and_blocks_no_other_request(tmp_path):
    evil = {"model": "fusion", "messages": [{"role": "user", "content": "evil"}], "response_format": JSON_CODE}
    plain = {"model": "fusion", "messages": [{"role": "user", "content": "hello"}]}
    with StubOpenAIServer(respond=_responder()) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=3, fallback="select")
        strict = write_config(tmp_path / "s.yaml", {"stub": stub.api_base}, "stub", n=2, fallback="raise")
        with fusion_server(config) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
            client.chat.completions.create(**plain)  # warm-up
            start = time.perf_counter()
            client.chat.completions.create(**plain)
            plain_alone = time.perf_counter() - start  # the plain request's own time, without the evil one
            result = {}
            worker = threading.Thread(target=lambda: result.update(reply=client.chat.completions.create(**evil)))
            started = time.perf_counter()
            worker.start()
            asked = time.monotonic() + 30
            fusor_asked = lambda: any("evil" in str(b) and "comparison" in str(b) for b in stub.requests)  # noqa: E731
            while not fusor_asked() and time.monotonic() < asked:
                time.sleep(0.01)  # the fusor was asked: its answer is about to be checked
            start = time.perf_counter()
            client.chat.completions.create(**plain)
            plain_beside = time.perf_counter() - start
            worker.join(60)
            evil_seconds = time.perf_counter() - started
        with fusion_server(strict) as server, pytest.raises(openai.APIStatusError) as failed:
            openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0).chat.completions.create(**evil)
    assert plain_beside < BUDGET + plain_alone, "the event loop was not held by the evil request's regex"
    assert evil_seconds < 2 * BUDGET, "the fused answer and its retry: 0.1 s of matching each"
    reply = result["reply"]
    assert reply.choices[0].message.content == '{"code": "aaa"}', "a valid candidate"
    cause = reply.model_extra["fusion"]["fallback"]["cause"]
    assert cause["kind"] == "invalid" and "took longer than 0.1 s" in cause["message"], cause
    failed_samples = reply.model_extra["fusion"]["failures"]
    assert [f["kind"] for f in failed_samples] == ["invalid"] and "took longer" in failed_samples[0]["message"]
    assert failed.value.status_code == 502 and "took longer than" in failed.value.response.text


@pytest.mark.parametrize(("extra", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "a{4294967296}"}}}}, "response_format.json_schema.schema"),  # `re`: a 500
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "patternProperties": {"^x-": {}}, "unevaluatedProperties": False}}}]},
     "tools[0].function.parameters"),
])  # fmt: skip
def test_schemas_that_cannot_be_checked_in_bounded_time_get_400_naming_the_field(tmp_path, extra, param):
    with StubOpenAIServer(respond=_responder()) as stub:
        config = write_config(tmp_path / "c.yaml", {"stub": stub.api_base}, "stub", n=2)
        with fusion_server(config) as server:
            response = httpx.post(f"{server.base_url}/chat/completions", timeout=30,
                                  json={"model": "fusion", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and stub.requests == []

"""Cost where the price is known, on both engines: per stage and in total, in the report, its dict and serve's usage.

The expected costs are computed here from the tokens the stub backend reported for each request and the price
tables themselves (genai-prices for the native engine, litellm's for the litellm engine): nothing is hard-coded.
"""

import json
from pathlib import Path

import dspy
import genai_prices
import httpx
import pytest
import yaml
from dspy.utils.exceptions import LMError

import fusion_dspy as fd
from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine
from fusion_dspy.backends.prices import PricedLM, call_cost
from fusion_dspy.core.meter import UNPRICED as UNPRICED_CALLS
from fusion_dspy.core.meter import merge_usage
from fusion_dspy.core.report import FusionReport, StageReport
from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import chat_reply, fusion_server

PRICED, UNPRICED, N = "openai/gpt-4o-mini", "openai/stub-model", 3


def _config(path, api_base: str, model: str, engine: str) -> str:
    path.write_text(yaml.safe_dump({
        "models": {"m": {"model": model, "api_base": api_base, "num_retries": 0, "cache": False, "engine": engine,
                         "batch_samples": False}},
        "roles": {"generators": "m"}, "fusion": {"n": N}}))  # fmt: skip
    return str(path)


def _table_price(usage: dict) -> float:
    """genai-prices' own price of one request to gpt-4o-mini (the native engine's table)."""
    counts = genai_prices.Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"])
    return float(genai_prices.calc_price(counts, "gpt-4o-mini", provider_id="openai").total_price)


def _litellm_price(usage: dict) -> float:
    """litellm's own price of one request to gpt-4o-mini (the litellm engine's cost)."""
    import litellm

    prompt, completion = litellm.cost_per_token(model=PRICED, prompt_tokens=usage["prompt_tokens"],
                                                completion_tokens=usage["completion_tokens"])  # fmt: skip
    return prompt + completion


@pytest.fixture
def stub():
    with StubOpenAIServer(chat_reply) as server:
        yield server


def _fused(config: str):
    from fusion_dspy.serve.chat import ChatReply

    program = fd.load_config(config).program(dspy.Predict(ChatReply), method="fuse")
    return program(conversation="Hello q-1")


@pytest.mark.parametrize("history", [True, False], ids=["history", "no-history"])  # batch commands keep none
@pytest.mark.parametrize(("engine", "price"), [("native", _table_price), ("litellm", _litellm_price)])
def test_each_stage_costs_its_requests_tokens_at_the_tables_price(tmp_path, stub, engine, price, history):
    with dspy.context(disable_history=not history):
        report = _fused(_config(tmp_path / "c.yaml", stub.api_base, PRICED, engine)).report
    assert len(stub.usage) == N + 1  # the samples, then the fusor
    sample, fuse = sum(price(u) for u in stub.usage[:N]), price(stub.usage[N])
    assert report.stages["sample"].cost == pytest.approx(sample, rel=1e-9) and sample > 0
    assert report.stages["fuse"].cost == pytest.approx(fuse, rel=1e-9) and fuse > 0
    assert report.cost == pytest.approx(sample + fuse, rel=1e-9)
    data = json.loads(json.dumps(report.to_dict()))  # what run / eval records hold
    assert data["cost"] == pytest.approx(sample + fuse, rel=1e-9)
    assert data["stages"]["sample"]["cost"] == pytest.approx(sample, rel=1e-9)
    assert report.usage()["cost"] == pytest.approx(sample + fuse, rel=1e-9)


@pytest.mark.parametrize("engine", ["native", "litellm"])
def test_an_unpriced_model_reports_no_cost_rather_than_zero(tmp_path, stub, engine):
    report = _fused(_config(tmp_path / "c.yaml", stub.api_base, UNPRICED, engine)).report
    assert report.total_tokens > 0
    assert report.cost is None and {name: stage.cost for name, stage in report.stages.items()} == {
        "sample": None, "fuse": None}
    data = report.to_dict()
    assert data["cost"] is None and data["stages"]["fuse"]["cost"] is None
    assert "cost" not in report.usage()


def test_a_cache_hit_bills_nothing(tmp_path, stub, memory_cache):
    path = tmp_path / "c.yaml"
    config = yaml.safe_load(Path(_config(path, stub.api_base, PRICED, "native")).read_text())
    config["models"]["m"]["cache"] = True
    path.write_text(yaml.safe_dump(config))
    first, again = _fused(str(path)).report, _fused(str(path)).report
    assert first.cost > 0 and again.cost == 0.0 and again.total_tokens == 0


def test_the_table_prices_by_the_provider_the_prefix_names():
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 400}}
    expected = genai_prices.calc_price(genai_prices.Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=400),
                                       "gpt-4o-mini", provider_id="openai").total_price  # fmt: skip
    assert call_cost(PRICED, usage) == pytest.approx(float(expected))
    assert call_cost(PRICED, usage) < call_cost(PRICED, {"prompt_tokens": 1000, "completion_tokens": 500})
    # no provider prefix, an unknown provider, a self-hosted alias: unknown, not a similar model's price
    for model in ("gpt-4o-mini", "hosted_vllm/gpt-4o-mini", "openai/meta-llama/Llama-3-8B", "embedded"):
        assert call_cost(model, usage) is None, model


@pytest.mark.parametrize("model", [PRICED, UNPRICED])
def test_serve_usage_carries_the_cost_where_known(tmp_path, stub, model):
    config = _config(tmp_path / "c.yaml", stub.api_base, model, "native")
    with fusion_server(config) as server:
        url, body = f"{server.base_url}/chat/completions", {"model": "fusion", "messages": [
            {"role": "user", "content": "Hi q-2"}]}  # fmt: skip
        reply = httpx.post(url, json=body, timeout=60).json()
        streamed = httpx.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}},
                              timeout=60).text  # fmt: skip
    events = [json.loads(line[len("data: "):]) for line in streamed.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    final_usage = [event["usage"] for event in events if event.get("usage")]
    assert len(final_usage) == 1
    if model == UNPRICED:
        assert "cost" not in reply["usage"] and "cost" not in final_usage[0] and reply["fusion"]["cost"] is None
        return
    expected = sum(_table_price(u) for u in stub.usage[: N + 1])  # the non-streamed request's N samples + fusor
    assert reply["usage"]["cost"] == pytest.approx(expected, rel=1e-9)
    assert reply["fusion"]["cost"] == pytest.approx(expected, rel=1e-9)
    assert sum(stage["cost"] for stage in reply["fusion"]["stages"].values()) == pytest.approx(expected, rel=1e-9)
    streamed_expected = sum(_table_price(u) for u in stub.usage[N + 1:])
    assert final_usage[0]["cost"] == pytest.approx(streamed_expected, rel=1e-9)


def test_a_run_record_carries_the_cost_per_stage_and_in_total(tmp_path):
    from fusion_dspy.cli import main
    from tests.test_cli import respond

    with StubOpenAIServer(respond=respond) as server:
        config = _config(tmp_path / "c.yaml", server.api_base, PRICED, "native")
        (tmp_path / "in.jsonl").write_text('{"question": "one"}\n')
        output = tmp_path / "out.jsonl"
        assert main(["run", "--config", config, "--inputs", str(tmp_path / "in.jsonl"), "--output", str(output),
                     "--quiet"]) == 0  # fmt: skip
        expected = sum(_table_price(u) for u in server.usage)
    [record] = [json.loads(line) for line in output.read_text().splitlines()]
    report = record["report"]
    assert report["cost"] == pytest.approx(expected, rel=1e-9) and expected > 0
    assert sum(stage["cost"] for stage in report["stages"].values()) == pytest.approx(expected, rel=1e-9)


def test_a_model_with_one_unpriced_billed_call_leaves_its_stage_cost_unknown():
    # two calls summed by DSPy's tracker: one priced, one billed without a known price
    partial = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "cost": 2e-06, UNPRICED_CALLS: 1}
    sample = StageReport(0.5, {PRICED: partial, "openai/other": {"total_tokens": 5, "cost": 1e-06}})
    report = FusionReport("fuse", stages={"sample": sample, "fuse": StageReport(0.1, {PRICED: {"cost": 3e-06}})})
    assert sample.cost is None and report.stages["fuse"].cost == 3e-06 and report.cost is None
    assert "cost" not in report.usage() and UNPRICED_CALLS not in report.usage()  # OpenAI's usage: counts only
    assert report.to_dict()["cost"] is None and report.to_dict()["stages"]["sample"]["cost"] is None
    assert merge_usage({PRICED: partial}, {PRICED: {"cost": 1e-06, UNPRICED_CALLS: 2}})[PRICED][UNPRICED_CALLS] == 3


def _bare_total(server: StubOpenAIServer, index: int) -> bytes | None:
    """Request 0 (a sample) is answered as usual, but its usage says ``total_tokens`` alone, as some servers do:
    it is billed, and which of its tokens were read and which written is not said, so its price is unknown."""
    if index != 0:
        return None
    body = server.requests[index]
    message = {"role": "assistant", "content": chat_reply(body)}
    return json.dumps({"id": "bare", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                       "usage": {"total_tokens": 15}}).encode()  # fmt: skip


@pytest.fixture
def bare_stub():
    """A stub whose first request is billed without a price (``_bare_total``); ``stub.usage`` lists the others."""
    server = StubOpenAIServer(chat_reply, body=lambda index: _bare_total(server, index))
    with server:
        yield server


@pytest.mark.parametrize("history", [True, False], ids=["history", "no-history"])
@pytest.mark.parametrize(("engine", "price"), [("native", _table_price), ("litellm", _litellm_price)])
def test_a_stage_whose_model_has_priced_and_unpriced_calls_has_no_cost(tmp_path, bare_stub, engine, price, history):
    with dspy.context(disable_history=not history):
        report = _fused(_config(tmp_path / "c.yaml", bare_stub.api_base, PRICED, engine)).report
    assert len(bare_stub.requests) == N + 1 and len(bare_stub.usage) == N  # N - 1 priced samples and the fusor
    assert report.stages["sample"].cost is None  # not the N - 1 priced samples' cost
    usage = report.stages["sample"].usage[PRICED]
    assert usage[UNPRICED_CALLS] == 1  # the usage DSPy summed: the bare total's tokens, the others' cost
    assert usage["cost"] == pytest.approx(sum(price(u) for u in bare_stub.usage[: N - 1]), rel=1e-9)
    assert report.stages["fuse"].cost == pytest.approx(price(bare_stub.usage[N - 1]), rel=1e-9)
    assert report.stages["fuse"].cost > 0
    assert report.cost is None and report.to_dict()["cost"] is None and "cost" not in report.usage()


def test_serve_usage_has_no_cost_when_one_call_was_not_priced(tmp_path, bare_stub):
    config = _config(tmp_path / "c.yaml", bare_stub.api_base, PRICED, "native")
    with fusion_server(config) as server:
        reply = httpx.post(f"{server.base_url}/chat/completions", json={"model": "fusion", "messages": [
            {"role": "user", "content": "Hi q-3"}]}, timeout=60).json()  # fmt: skip
    assert reply["usage"]["total_tokens"] == 15 + sum(u["total_tokens"] for u in bare_stub.usage)
    assert "cost" not in reply["usage"] and UNPRICED_CALLS not in reply["usage"]
    fusion = reply["fusion"]
    assert fusion["cost"] is None and fusion["stages"]["sample"]["cost"] is None
    assert fusion["stages"]["sample"]["usage"]["m"][UNPRICED_CALLS] == 1  # the config's name for the model
    assert fusion["stages"]["fuse"]["cost"] == pytest.approx(_table_price(bare_stub.usage[-1]), rel=1e-9)


@pytest.mark.parametrize("history", [True, False], ids=["history", "no-history"])
def test_a_failed_calls_billed_reply_is_priced(history):
    # n=2 on DSPy's managed path is two requests: the first is answered (billed), the second fails the call
    with StubOpenAIServer(respond=lambda call: {"answer": "4"}, status=lambda i: 500 if i == 1 else 200) as server:
        route = (PRICED, server.api_base)
        lm = PricedLM(PRICED, engine=NativeEngine(*route), async_engine=AsyncNativeEngine(*route), cache=False,
                      num_retries=0)  # fmt: skip
        with dspy.context(disable_history=not history), dspy.track_usage() as tracker, pytest.raises(LMError):
            lm("2 + 2?", n=2)
    [billed] = server.usage
    usage = tracker.get_total_tokens()[PRICED]
    assert usage["total_tokens"] == billed["total_tokens"] and UNPRICED_CALLS not in usage
    assert usage["cost"] == pytest.approx(_table_price(billed), rel=1e-9) and usage["cost"] > 0

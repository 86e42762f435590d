"""DSPy's public engine contract, as fusion-dspy relies on it: fails loudly on a DSPy whose contract changed.

fusion_dspy.backends.engine (the Router behind ``dspy.LM(engine=...)``) and fusion_dspy.testing (the scripted LM)
use only these public names; fusion_dspy.core.truncation reads the warning DSPy logs for a reply cut short. If
one of these tests fails after a DSPy upgrade, the contract moved: adapt those modules, or keep DSPy at the last
version that passes (pyproject.toml's pin).
"""

import dataclasses
import inspect

import dspy
import pytest
from dspy import lm15
from dspy.clients import engines

from fusion_dspy.backends.engine import _CHAT_PARAMETERS, AsyncRouterEngine, RouterEngine, chat_body

CHANGED = "DSPy {version} changed the engine contract fusion-dspy relies on: {what}"


def fail_unless(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(CHANGED.format(version=dspy.__version__, what=what), pytrace=False)


def test_engine_protocol_and_types_are_public():
    fail_unless(hasattr(engines, "Engine") and hasattr(engines, "AsyncEngine"), "dspy.clients.engines.Engine is gone")
    fail_unless("complete" in dir(engines.Engine), "Engine.complete(Request) -> Response is gone")
    request_fields = {f.name for f in dataclasses.fields(lm15.Request)}
    fail_unless({"model", "messages", "system", "tools", "config"} <= request_fields,
                f"dspy.lm15.Request has fields {sorted(request_fields)}")  # fmt: skip
    config_fields = {f.name for f in dataclasses.fields(lm15.Config)}
    fail_unless(set(_CHAT_PARAMETERS) | {"extensions"} <= config_fields,
                f"dspy.lm15.Config lacks {sorted(set(_CHAT_PARAMETERS) - config_fields)}")  # fmt: skip
    parameters = inspect.signature(lm15.response_from_openai_chat).parameters
    fail_unless("model" in parameters and "choice" in parameters, "response_from_openai_chat(body, model=, choice=)")
    fail_unless("engine" in inspect.signature(dspy.LM).parameters and "async_engine" in inspect.signature(
        dspy.LM).parameters, "dspy.LM(engine=..., async_engine=...) is gone")  # fmt: skip


class FakeRouter:
    """What litellm.Router.completion returns: an OpenAI chat-completions body."""

    def __init__(self):
        self.bodies = []

    def _reply(self, body):
        self.bodies.append(body)
        return {"id": "r1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}  # fmt: skip

    def completion(self, **body):
        return self._reply(body)

    async def acompletion(self, **body):
        return self._reply(body)


def router_lm(router):
    return dspy.LM("router/m", engine=RouterEngine(router, "m"), async_engine=AsyncRouterEngine(router, "m"),
                   cache=False, temperature=0.3, max_tokens=50)  # fmt: skip


async def test_a_request_round_trips_through_the_engine_sync_and_async():
    router = FakeRouter()
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=router_lm(router)), dspy.track_usage() as usage:
        assert predict(question="2 + 2?").answer == "4"
        assert (await predict.acall(question="3 + 1?")).answer == "4"
    body = router.bodies[0]
    assert body["model"] == "m" and body["temperature"] == 0.3 and body["max_tokens"] == 50
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and "2 + 2?" in body["messages"][-1]["content"]
    assert "3 + 1?" in router.bodies[1]["messages"][-1]["content"]
    assert usage.get_total_tokens()["router/m"]["prompt_tokens"] == 22  # DSPy read the usage back, both calls


def test_non_text_parts_are_refused_clearly():
    request = lm15.Request(model="m", messages=(lm15.Message.user([lm15.ImagePart(url="http://127.0.0.1/x.png")]),))
    with pytest.raises(lm15.UnsupportedFeatureError, match="text only"):
        chat_body(request)


def test_adapters_format_chat_messages_that_plain_adapter_edits():
    from fusion_dspy.backends import PlainAdapter

    messages = PlainAdapter().format(dspy.Signature("question -> answer", "Answer."), [], {"question": "2 + 2?"})
    fail_unless(isinstance(messages, list) and all(isinstance(m, dict) and "role" in m for m in messages),
                f"Adapter.format returns {type(messages).__name__}, not a list of chat messages (PlainAdapter)")
    assert messages[-1] == {"role": "user", "content": "2 + 2?"}


class StreamingRouter(FakeRouter):
    """litellm.Router.completion(stream=True): OpenAI chat chunks, usage in the last one."""

    WORDS = ["[[ ## answer ## ]]\n", "fo", "ur", "\n\n[[ ## completed ## ]]"]

    def _chunks(self, body):
        self.bodies.append(body)
        for i, word in enumerate(self.WORDS):
            last = i == len(self.WORDS) - 1
            yield {"id": "s1", "model": body["model"], "choices": [{"index": 0, "delta": {"content": word},
                   "finish_reason": "stop" if last else None}],
                   **({"usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}} if last else {})}

    def completion(self, **body):
        return self._chunks(body) if body.get("stream") else super().completion(**body)

    async def acompletion(self, **body):
        if not body.get("stream"):
            return await super().acompletion(**body)

        async def chunks():
            for chunk in self._chunks(body):
                yield chunk

        return chunks()


async def test_the_router_engine_streams_through_dspy_streamify():
    router = StreamingRouter()
    program = dspy.streamify(dspy.Predict("question -> answer"),
                             stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")])
    with dspy.context(lm=router_lm(router)):
        pieces, final = [], None
        async for item in program(question="2 + 2?"):
            if isinstance(item, dspy.streaming.StreamResponse):
                pieces.append(item.chunk)
            elif isinstance(item, dspy.Prediction):
                final = item
    assert final.answer == "four" and "".join(pieces).strip() == "four" and len(pieces) >= 2
    assert router.bodies[0]["stream"] is True and router.bodies[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("engine", ["scripted", "litellm", "litellm-batched"])
def test_a_reply_cut_short_is_reported_on_dspys_lm_logger(engine):
    """fusion_dspy.core.truncation reads DSPy's one public trace of finish_reason 'length': its logged warning."""
    from fusion_dspy.core import truncation
    from fusion_dspy.testing import StubOpenAIServer, scripted_lm

    with StubOpenAIServer(respond=lambda call: {"answer": "4"}, finish_reason="length") as server:
        lm = scripted_lm(lambda call: {"answer": "4"}, finish_reason="length") if engine == "scripted" else dspy.LM(
            "openai/m", api_base=server.api_base, api_key="x", engine="litellm", cache=False,
            **({"n": 2} if engine == "litellm-batched" else {}))  # fmt: skip
        with truncation.watch() as cut:
            dspy.Predict("question -> answer")(question="2 + 2?", lm=lm)
    fail_unless(len(cut) == 1, f"no warning on the {truncation.DSPY_LM_LOGGER!r} logger says a reply was "
                "truncated (finish_reason 'length'): find where DSPy reports it now, and read it there")


@pytest.mark.parametrize("router_class", [lm15.LMRouter, lm15.AsyncLMRouter])
def test_a_router_takes_a_transport_built_with_its_configs_keywords(router_class):
    """fusion_dspy.backends.transport builds the transport a router would, with trust_env=False, from the class of
    the one a router builds and RouterConfig.transport_kwargs()."""
    from fusion_dspy.backends.transport import transport_class

    limits = lm15.RouterConfig(env={}, timeouts=lm15.Timeouts(connect=3, read=4, write=5, pool=6), max_connections=7)
    fail_unless(set(limits.transport_kwargs()) == {"connect_timeout", "read_timeout", "write_timeout",
                                                   "pool_timeout", "max_connections"},
                "RouterConfig.transport_kwargs() names other keywords")  # fmt: skip
    kind = transport_class(router_class)
    parameters = inspect.signature(kind).parameters
    fail_unless({*limits.transport_kwargs(), "trust_env"} <= set(parameters),
                f"{kind.__name__}() no longer takes the config's keywords and trust_env")  # fmt: skip
    transport = kind(**limits.transport_kwargs(), trust_env=False)
    router = router_class(lm15.RouterConfig(env={}, api_keys={"openai": "x"}, transport=transport))
    fail_unless(router.lm("openai:m").transport is transport, "a router no longer uses RouterConfig(transport=...)")
    fail_unless(transport.max_connections == 7, "the transport no longer keeps max_connections")


def test_a_router_closes_the_transport_it_was_given():
    """NativeEngine.close() / aclose() close their routers only: a router must close a transport passed to it in
    RouterConfig(transport=...), as it closes its own (fusion_dspy.backends.transport gives it one)."""
    import asyncio

    from fusion_dspy.backends.transport import transport_class
    from fusion_dspy.testing import StubOpenAIServer

    request = lm15.Request(model="m", messages=(lm15.Message.user("hi"),))
    with StubOpenAIServer(respond=lambda call: {"answer": "4"}) as server:
        def config(transport):
            return lm15.RouterConfig(env={}, api_keys={"openai": "x"}, base_urls={"openai": server.api_base},
                                     transport=transport)  # fmt: skip

        transport = transport_class(lm15.LMRouter)(trust_env=False)
        router = lm15.LMRouter(config(transport))
        router.lm("openai:m").complete(request)
        fail_unless(transport.pool_stats()["idle"] == 1, "the transport kept no connection after a request")
        router.close()
        fail_unless(transport.pool_stats()["idle"] == 0, "LMRouter.close() left a given transport's connections open")

        async def closed_async() -> bool:
            given = transport_class(lm15.AsyncLMRouter)(trust_env=False)
            router = lm15.AsyncLMRouter(config(given))
            lm = router.lm("openai:m")
            await lm.complete(request)
            await router.aclose()
            try:
                await lm.complete(request)
            except lm15.TransportError:
                return True
            return False

        fail_unless(asyncio.run(closed_async()), "AsyncLMRouter.aclose() left a given transport open")

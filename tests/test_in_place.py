"""DSPy's bookkeeping of a native call stays on the event loop, its I/O goes to threads (backends/in_place.py)."""

import asyncio
import socket
import threading

import dspy
import httpx
import pytest

from fusion_dspy.backends.in_place import InPlaceExecutor, bookkeeping_in_place
from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine
from fusion_dspy.backends.retries import CappedRetryLM
from fusion_dspy.testing import StubOpenAIServer
from tests.serve_support import chat_reply, fusion_server, write_config
from tests.test_native_engine import native_backends, respond

PREFIX = "dspy-hop"


def _hops() -> list[str]:
    """The executor's threads: each started for a call that went to a thread (they stay until it shuts down)."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith(PREFIX)]


def _on_a_loop(call):
    """Runs ``await call()`` on a fresh loop whose default executor is an ``InPlaceExecutor`` named for ``_hops``."""

    async def main():
        executor = InPlaceExecutor(thread_name_prefix=PREFIX)
        asyncio.get_running_loop().set_default_executor(executor)
        try:
            return await call(), _hops()
        finally:
            executor.shutdown(wait=True)

    return asyncio.run(main())


@pytest.mark.parametrize("cache", [False, True])
def test_a_native_call_hops_to_no_thread_unless_it_reads_a_cache(tmp_path, monkeypatch, cache):
    """A fused request (a call for N with ``n``, a fuse call) prepares and prices on the loop. With DSPy's cache its
    bookkeeping reads and writes the disk, so it keeps DSPy's threads: the check sees a hop when there is one."""
    with StubOpenAIServer(respond=respond) as server:
        program = native_backends(tmp_path, server, monkeypatch, cache=cache).program("question -> answer")
        answer, hops = _on_a_loop(lambda: program.acall(question="Q?"))
    assert answer.answer == "fused"
    assert (hops != []) is cache, hops


def test_a_plain_dspy_lm_keeps_dspys_threads():
    """Only the library's LMs ask for it: a ``dspy.LM`` on the same engine, on the same loop, hops as DSPy does."""
    with StubOpenAIServer(respond=respond) as server:
        route = ("openai/gen", server.api_base)
        lm = dspy.LM(route[0], engine=NativeEngine(*route), async_engine=AsyncNativeEngine(*route), cache=False)
        answer, hops = _on_a_loop(lambda: dspy.Predict("question -> answer").acall(question="Q?", lm=lm))
        lm.engine.close()
    assert answer.answer == "answer 0" and hops != []


def test_the_litellm_engine_keeps_dspys_threads():
    with StubOpenAIServer(respond=respond) as server:
        lm = CappedRetryLM("openai/gen", api_base=server.api_base, api_key="x", engine="litellm", cache=False)
        answer, hops = _on_a_loop(lambda: dspy.Predict("question -> answer").acall(question="Q?", lm=lm))
    assert answer.answer == "answer 0" and hops != []


async def _stream(engine, request):
    async for _ in engine.stream(request):
        pass


@pytest.mark.parametrize("send", [lambda engine, request: engine.complete(request),
                                  lambda engine, request: engine.choices(request, 2), _stream],
                         ids=["complete", "choices", "stream"])  # fmt: skip
def test_the_engines_own_io_goes_to_a_thread(monkeypatch, send):
    """lm15 opens a proxy's socket with ``asyncio.to_thread`` (an https model behind ``HTTPS_PROXY``): inside a call
    kept in place, the engine's I/O still leaves the loop."""
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: the connect fails, after the hop
    opened_on: list[int] = []
    connect = socket.create_connection

    def recording(*args, **kwargs):
        opened_on.append(threading.get_ident())
        return connect(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    engine = AsyncNativeEngine("openai/gpt-4o-mini", api_key_env=None, timeout=5)  # api.openai.com, https
    request = dspy.lm15.Request(model="openai/gpt-4o-mini", messages=(dspy.lm15.Message.user("Hi"),))

    async def call():
        loop_thread = threading.get_ident()
        with bookkeeping_in_place(), pytest.raises(Exception):  # noqa: B017, PT011 - refused: any transport error
            await send(engine, request)
        return loop_thread

    monkeypatch.setenv("OPENAI_API_KEY", "sk-in-place-test")
    loop_thread, _ = _on_a_loop(call)
    assert opened_on and loop_thread not in opened_on, "the proxy's socket was opened in a thread"


def test_a_call_that_raises_in_place_raises_where_it_is_awaited():
    def refuse():
        raise ValueError("refused")

    async def call():
        with bookkeeping_in_place(), pytest.raises(ValueError, match="refused"):
            await asyncio.to_thread(refuse)
        return "raised"

    assert _on_a_loop(call) == ("raised", [])


def test_the_server_keeps_the_bookkeeping_of_a_fused_request_on_its_loop(tmp_path, monkeypatch):
    """The server sets the executor on its loop at start: a fused request through it starts no hop thread."""

    class Named(InPlaceExecutor):
        def __init__(self):
            super().__init__(thread_name_prefix=PREFIX)

    monkeypatch.setattr("fusion_dspy.serve.app.InPlaceExecutor", Named)
    with StubOpenAIServer(chat_reply) as stub:
        config = write_config(tmp_path / "config.yaml", {"stub": stub.api_base}, "stub", n=3)
        config.write_text(config.read_text().replace("batch_samples: false", "batch_samples: true"))
        with fusion_server(config) as server:
            reply = httpx.post(f"{server.base_url}/chat/completions", timeout=30,
                               json={"model": "fusion", "messages": [{"role": "user", "content": "q-1?"}]})
            hops = _hops()
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"].startswith("fused q-1")
    assert len(stub.requests) == 2 and hops == []  # 3 samples in one request (`n`), the fusion: no hop in either

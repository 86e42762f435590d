"""The pieces of the serving benchmarks (serve.py, serve_side_by_side.py, serve_calls.py): a stub backend and an
OTLP collector, each a process of its own (this file run with --backend or --collector), the served config, the
requests, and the CPU each process spends.

The client is httpx2, pydantic's maintained fork of httpx (the same API). httpx's connection pool (httpcore 1.0.9)
walks every connection for every queued request (encode/httpcore#1035): with 64 requests in flight it spent 22 ms
of CPU a request, so the client, not the server, set the throughput (43 requests/s) and took a core from the
servers being measured. With httpx2, whose pool was mended (pydantic/httpx2#974, #1075), the client spends 2.2 ms."""

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import psutil
import yaml

N = 3
CONCURRENCY, DELAY = 64, 0.2


def reply(body: dict) -> str:
    outputs = body["messages"][0]["content"].split("Your output fields are:")[-1].split("All interactions")[0]
    if "`comparison`" in outputs:
        return "[[ ## comparison ## ]]\nsame\n\n[[ ## response ## ]]\nfused\n\n[[ ## completed ## ]]"
    return "[[ ## response ## ]]\nsampled\n\n[[ ## completed ## ]]"


def run_backend(delay: float) -> None:
    from http.server import ThreadingHTTPServer

    from fusion_dspy.testing import StubOpenAIServer

    ThreadingHTTPServer.request_queue_size = 1024  # 64 x (N + 1) connections may open at once
    server = StubOpenAIServer(reply, delay=delay).start()
    print(server.api_base, flush=True)
    while True:  # until terminated
        time.sleep(3600)


def run_collector() -> None:
    """A stand-in OTLP/HTTP collector for `--otel`: accepts every export, keeps nothing."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    print(f"http://127.0.0.1:{server.server_port}/v1/traces", flush=True)
    server.serve_forever()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _config(api_base: str, folder: Path, engine: str = "litellm") -> Path:
    """The served model: its N samples go in one request (`n`) on either engine; `engine: native` sends it with
    DSPy's lm15 client (a quarter of litellm's CPU per request)."""
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"bench": {"model": "openai/bench", "api_base": api_base, "num_retries": 0, "cache": False,
                             "engine": engine}},
        "roles": {"generators": "bench"}, "fusion": {"n": N}}))  # fmt: skip
    return path


def _wait_healthy(port: int, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the fusion server did not start")


def _body(k: int) -> dict:
    return {"model": "fusion", "messages": [{"role": "user", "content": f"Question {k}?"}]}


def _program(config: Path):
    import dspy

    import fusion_dspy as fd
    from fusion_dspy.serve.chat import ChatReply

    return fd.load_config(config).program(dspy.Predict(ChatReply), method="fuse")


async def _concurrently(one, total: int) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def limited(k: int) -> None:
        async with limit:
            await one(k)

    await asyncio.gather(*(limited(k) for k in range(CONCURRENCY)))  # warm-up: connections, first calls
    start = time.perf_counter()
    await asyncio.gather(*(limited(k) for k in range(total)))
    return total / (time.perf_counter() - start)


def _cpu_seconds(process: psutil.Process, children: bool = True) -> float:
    """CPU seconds (user + system) of a process and, with ``children``, of its children (uvicorn's workers)."""
    total = 0.0
    for one in [process, *(process.children(recursive=True) if children else [])]:
        try:
            times = one.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def throughput(port: int, total: int) -> float:
    """Requests per second through the server with CONCURRENCY requests in flight."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    async def main() -> float:
        async with httpx2.AsyncClient(timeout=120, limits=httpx2.Limits(max_connections=CONCURRENCY)) as client:

            async def one(k: int) -> None:
                (await client.post(url, json=_body(k))).raise_for_status()

            return await _concurrently(one, total)

    return asyncio.run(main())


def throughput_in_process(config: Path, total: int) -> float:
    """The same, with the FusionOfN called in this process: what DSPy and litellm alone allow on this machine."""
    program = _program(config)

    async def one(k: int) -> None:
        await program.acall(conversation=f"Question {k}?")

    return asyncio.run(_concurrently(one, total))


async def _sequential(port: int, requests: int) -> None:
    async with httpx2.AsyncClient(timeout=60) as client:
        for k in range(requests):
            (await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=_body(k))).raise_for_status()


def _summary(values: list[float]) -> str:
    return f"min {min(values):.4g}, median {statistics.median(values):.4g}"


def backend_process(delay: float) -> subprocess.Popen:
    """The stub backend in a process of its own, answering each request after ``delay`` s; its first line of output
    is its api_base."""
    return _start([sys.executable, __file__, "--backend", str(delay)])


def collector_process() -> subprocess.Popen:
    """The stand-in OTLP collector in a process of its own; its first line of output is its traces endpoint."""
    return _start([sys.executable, __file__, "--collector"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a stub backend or an OTLP collector, for the serving benchmarks")
    parser.add_argument("--backend", type=float, metavar="DELAY", help="run the stub backend")
    parser.add_argument("--collector", action="store_true", help="run the OTLP collector")
    args = parser.parse_args()
    if args.collector:
        run_collector()
    else:
        run_backend(args.backend or 0.0)

"""The fusion server's cost: overhead per request against the same FusionOfN in-process, and throughput.

Run by hand: `python benchmarks/serve.py`. The backend (an OpenAI-compatible stub) and the fusion server
(`fusion-dspy serve`) each run in their own process; this process is only the client.

1. Overhead: sequential requests against an instant backend; the p50 latency through the server minus the p50
   of the same FusionOfN called in this process (targets: <= 5 ms on 2 cores).
2. Throughput: 64 requests in flight against a backend taking 0.2 s per call; each request is one sample stage
   and one fuse stage (0.4 s), so the ideal is 64 / 0.4 s = 160 requests/s (target: >= 85 % of it). Printed
   beside it: the same FusionOfN called in this process, which is what DSPy and litellm alone allow here.
   `--workers K` runs the server with K processes. Also printed: the CPU each process spent per request (the
   server's, the backend's, this client's) and the requests per second that total allows on this machine's
   cores, the ceiling any server would meet here.
3. `--otel`: the same with the server tracing (`serve --otel`), exporting every span over OTLP/HTTP to a stand-in
   collector in its own process: the server's CPU per request (printed by both) against a run without it is
   tracing's cost.

`--metrics-cost` measures instead the server's CPU per request with metrics on and off (`--no-metrics`),
sequential requests against an instant backend, rounds alternating; the default is on only while the difference
stays <= 0.5 ms a request.

`--against REF` measures instead the server's CPU per request on this checkout and on git REF (e.g. the commit a
target was set against), two servers on one backend, rounds alternating, sequential (as 1.) and 64 in flight (as
2.): the machine's speed drifts by a third over a day, which moves the milliseconds of both alike but not their
ratio.

Each is measured in 3 rounds; min and median are printed. The machine is shared: numbers are noisy, so each
table is printed with the load average and the CPU steal of its rounds. `--profile FILE` records the throughput
server with py-spy (`pip install py-spy`; only samples holding the GIL, raw collapsed stacks) for a look at
where its CPU goes.
"""

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml
from machine import Machine

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
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the fusion server did not start")


def _body(k: int) -> dict:
    return {"model": "fusion", "messages": [{"role": "user", "content": f"Question {k}?"}]}


def _program(config: Path):
    import dspy

    import fusion_dspy as fd
    from fusion_dspy.serve.chat import ChatReply

    return fd.load_config(config).program(dspy.Predict(ChatReply), method="fuse")


def overhead(config: Path, port: int, requests: int) -> tuple[float, float, float]:
    """p50 seconds of a request through the server, of the same FusionOfN in this process, and p50 of the
    client's latency minus the server's own sample + fuse time (what HTTP, parsing and JSON add)."""
    program, url = _program(config), f"http://127.0.0.1:{port}/v1/chat/completions"

    async def through_server() -> tuple[list[float], list[float]]:
        async with httpx.AsyncClient(timeout=60) as client:
            times, outside = [], []
            for k in range(requests):
                start = time.perf_counter()
                response = await client.post(url, json=_body(k))
                times.append(time.perf_counter() - start)
                stages = response.raise_for_status().json()["fusion"]["stages"]
                outside.append(times[-1] - sum(stage["seconds"] for stage in stages.values()))
            return times, outside

    async def in_process() -> list[float]:
        times = []
        for k in range(requests):
            start = time.perf_counter()
            await program.acall(conversation=f"Question {k}?")
            times.append(time.perf_counter() - start)
        return times

    (served, outside), local = asyncio.run(through_server()), asyncio.run(in_process())
    return statistics.median(served), statistics.median(local), statistics.median(outside)


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
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CONCURRENCY)) as client:

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
    async with httpx.AsyncClient(timeout=60) as client:
        for k in range(requests):
            (await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=_body(k))).raise_for_status()


def _profiler(pid: int, path: str | None) -> subprocess.Popen | None:
    """py-spy recording the server process ``pid`` (GIL holders only) into ``path``; None without --profile."""
    if path is None:
        return None
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--nonblocking", "--format", "raw",
           "--rate", "200", "-o", path, "--pid", str(pid)]  # fmt: skip
    return subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _summary(values: list[float]) -> str:
    return f"min {min(values):.4g}, median {statistics.median(values):.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", type=float, help=argparse.SUPPRESS)  # run as the backend process
    parser.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)  # run as the OTLP collector
    parser.add_argument("--requests", type=int, default=60, help="sequential requests per overhead round")
    parser.add_argument("--total", type=int, default=4 * CONCURRENCY, help="requests per throughput round")
    parser.add_argument("--workers", type=int, default=1, help="fusion server processes for the throughput run")
    parser.add_argument("--engine", choices=["litellm", "native"], default="litellm", help="the served model's engine")
    parser.add_argument("--otel", action="store_true", help="the server traces every request (serve --otel)")
    parser.add_argument("--metrics-cost", action="store_true", help="only the server's CPU per request with "
                        "metrics on and off")  # fmt: skip
    parser.add_argument("--profile", metavar="FILE", help="record the throughput server with py-spy into FILE")
    parser.add_argument("--against", metavar="REF", help="only the server's CPU per request here and at git REF, "
                        "side by side")  # fmt: skip
    args = parser.parse_args()
    if args.backend is not None:
        return run_backend(args.backend)
    if args.collector:
        return run_collector()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    processes = []
    try:
        if args.otel:  # the server's spans go to a collector of their own (its CPU is not counted)
            processes.append(_start([sys.executable, __file__, "--collector"]))
            os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = processes[-1].stdout.readline().strip()
        with tempfile.TemporaryDirectory() as folder:
            if args.against or args.metrics_cost:
                import serve_side_by_side as side_by_side  # imports this module's helpers

                if args.against:
                    return side_by_side.against(args.against, Path(folder), args.engine, args.requests, args.total)
                processes.append(backend := _start([sys.executable, __file__, "--backend", "0"]))
                return side_by_side.metrics_cost(backend.stdout.readline().strip(), Path(folder), args.engine,
                                                 args.requests)  # fmt: skip
            for delay, label in ((0.0, "overhead"), (DELAY, "throughput")):
                backend = _start([sys.executable, __file__, "--backend", str(delay)])
                processes.append(backend)
                config, port = _config(backend.stdout.readline().strip(), Path(folder), args.engine), _free_port()
                workers = args.workers if label == "throughput" else 1
                server = _start([sys.executable, "-m", "fusion_dspy.cli", "serve", "--config", str(config),
                                 "--port", str(port), "--max-concurrency", str(4 * CONCURRENCY),
                                 "--workers", str(workers), *(["--otel"] if args.otel else [])])  # fmt: skip
                processes.append(server)
                _wait_healthy(port)
                machine = Machine()
                if label == "overhead":
                    overhead(config, port, 5)  # warm-up of litellm's clients, both sides
                    rounds, cpu = [], []  # the server's CPU seconds per request, each round
                    for _ in range(3):
                        before = _cpu_seconds(psutil.Process(server.pid))
                        rounds.append(overhead(config, port, args.requests))
                        cpu.append((_cpu_seconds(psutil.Process(server.pid)) - before) / args.requests)
                    extra = [(served - local) * 1000 for served, local, _ in rounds]
                    print(f"overhead per request, N={N}, instant backend, {args.requests} sequential requests:\n"
                          f"  p50 through the server - p50 in-process: {_summary(extra)} ms  "
                          f"[server p50 {_summary([r[0] * 1000 for r in rounds])} ms, in-process p50 "
                          f"{_summary([r[1] * 1000 for r in rounds])} ms]\n"
                          f"  p50 of client latency - the server's own sample + fuse time: "
                          f"{_summary([r[2] * 1000 for r in rounds])} ms\n"
                          f"  the server's CPU per request: {_summary([1000 * c for c in cpu])} ms  "
                          f"{machine}")  # fmt: skip
                else:
                    ideal = CONCURRENCY / (2 * DELAY)
                    watched = {"server": psutil.Process(server.pid), "backend": psutil.Process(backend.pid),
                               "client": psutil.Process()}  # fmt: skip
                    own = {"server": True, "backend": True, "client": False}  # the client's children are the others
                    spy = _profiler(server.pid, args.profile)
                    before = {name: _cpu_seconds(one, own[name]) for name, one in watched.items()}
                    machine, rates, rounds = Machine(), [], []  # rounds: the server's CPU per request, each round
                    for _ in range(3):
                        start = _cpu_seconds(watched["server"])
                        rates.append(throughput(port, args.total))
                        rounds.append((_cpu_seconds(watched["server"]) - start) / (args.total + CONCURRENCY))
                    spent = {name: _cpu_seconds(one, own[name]) - before[name] for name, one in watched.items()}
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(60)
                    requests = 3 * (args.total + CONCURRENCY)  # the warm-up rounds included
                    local = [throughput_in_process(config, args.total) for _ in range(3)]
                    print(f"throughput, {CONCURRENCY} in flight, {DELAY} s backend, N={N}, {workers} worker(s)"
                          f"{', tracing every request' if args.otel else ''}:\n"
                          f"  through the server: {_summary(rates)} requests/s = "
                          f"{_summary([100 * r / ideal for r in rates])} % of the ideal {ideal:.0f}/s\n"
                          f"  the same FusionOfN in-process: {_summary(local)} requests/s = "
                          f"{_summary([100 * r / ideal for r in local])} % of the ideal\n"
                          f"  the server's CPU per request: {_summary([1000 * c for c in rounds])} ms\n"
                          f"  CPU per request through the server (all rounds, {os.cpu_count()} cores): "
                          + ", ".join(f"{name} {1000 * seconds / requests:.1f} ms" for name, seconds in spent.items())
                          + f"; at {sum(spent.values()) * 1000 / requests:.1f} ms in all, the cores allow at most "
                          f"{os.cpu_count() * requests / sum(spent.values()):.0f} requests/s  {machine}")  # fmt: skip
                server.send_signal(signal.SIGINT)
                server.wait(30)
                backend.terminate()
                backend.wait(30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


if __name__ == "__main__":
    main()

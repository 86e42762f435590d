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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import psutil
import serve_side_by_side as side_by_side
from machine import Machine
from serve_stack import (
    CONCURRENCY,
    DELAY,
    N,
    _body,
    _config,
    _cpu_seconds,
    _free_port,
    _program,
    _start,
    _summary,
    _wait_healthy,
    backend_process,
    collector_process,
    throughput,
    throughput_in_process,
)


def overhead(config: Path, port: int, requests: int) -> tuple[float, float, float]:
    """p50 seconds of a request through the server, of the same FusionOfN in this process, and p50 of the
    client's latency minus the server's own sample + fuse time (what HTTP, parsing and JSON add)."""
    program, url = _program(config), f"http://127.0.0.1:{port}/v1/chat/completions"

    async def through_server() -> tuple[list[float], list[float]]:
        async with httpx2.AsyncClient(timeout=60) as client:
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


def _profiler(pid: int, path: str | None) -> subprocess.Popen | None:
    """py-spy recording the server process ``pid`` (GIL holders only) into ``path``; None without --profile."""
    if path is None:
        return None
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--nonblocking", "--format", "raw",
           "--rate", "200", "-o", path, "--pid", str(pid)]  # fmt: skip
    return subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    processes = []
    try:
        if args.otel:  # the server's spans go to a collector of their own (its CPU is not counted)
            processes.append(collector_process())
            os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = processes[-1].stdout.readline().strip()
        with tempfile.TemporaryDirectory() as folder:
            if args.against:
                return side_by_side.against(args.against, Path(folder), args.engine, args.requests, args.total)
            if args.metrics_cost:
                processes.append(backend := backend_process(0.0))
                return side_by_side.metrics_cost(backend.stdout.readline().strip(), Path(folder), args.engine,
                                                 args.requests)  # fmt: skip
            for delay, label in ((0.0, "overhead"), (DELAY, "throughput")):
                backend = backend_process(delay)
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

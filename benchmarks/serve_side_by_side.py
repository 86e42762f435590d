"""Two fusion servers side by side on one backend, rounds alternating: `python benchmarks/serve.py --against REF`
and `--metrics-cost` (see serve.py's docstring). The machine's speed drifts; two servers measured in alternating
rounds drift alike, so their difference or ratio holds where their milliseconds do not."""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import psutil
from machine import Machine
from serve_stack import (
    CONCURRENCY,
    DELAY,
    N,
    _config,
    _cpu_seconds,
    _free_port,
    _sequential,
    _summary,
    _wait_healthy,
    backend_process,
    throughput,
)


def side_by_side(config: Path, servers: dict[str, tuple[list[str], Path | None]], load) -> dict:
    """The CPU ms per request of each server (label: its extra `serve` arguments and the checkout it runs from,
    None for this one), all on one backend, in 3 rounds of `load(port)` (which returns the requests it made),
    rounds alternating."""
    started = {}
    try:
        for label, (extra, checkout) in servers.items():
            port = _free_port()
            command = [sys.executable, "-m", "fusion_dspy.cli", "serve", "--config", str(config), "--port", str(port),
                       "--max-concurrency", str(4 * CONCURRENCY)]  # fmt: skip
            log = config.parent / f"server-{len(started)}.log"  # told when it fails a request
            with log.open("w") as output:
                started[label] = (subprocess.Popen([*command, *extra], cwd=checkout, stdout=output, stderr=output),
                                  port, log)  # fmt: skip
            _wait_healthy(port)
            asyncio.run(_sequential(port, 20))  # warm-up
        spent: dict[str, list[float]] = {label: [] for label in servers}
        for _ in range(3):
            for label, (server, port, log) in started.items():
                before = _cpu_seconds(psutil.Process(server.pid))
                try:
                    requests = load(port)
                except httpx2.HTTPError as error:  # say whose: a ratio needs both, and either can fail
                    state = "still running" if server.poll() is None else f"exited ({server.returncode})"
                    raise RuntimeError(f"the server of {label} failed a request with {type(error).__name__}: "
                                       f"{error!r}; it is {state}. The end of its log:\n"
                                       f"{log.read_text()[-3000:]}") from error  # fmt: skip
                spent[label].append(1000 * (_cpu_seconds(psutil.Process(server.pid)) - before) / requests)
        return spent
    finally:
        for server, _, _ in started.values():
            server.kill()


def sequential(requests: int):
    """A `side_by_side` load: `requests` requests one after the other."""

    def load(port: int) -> int:
        asyncio.run(_sequential(port, requests))
        return requests

    return load


def in_flight(total: int):
    """A `side_by_side` load: CONCURRENCY requests in flight, `total` of them after as many to warm up."""

    def load(port: int) -> int:
        throughput(port, total)
        return total + CONCURRENCY

    return load


def metrics_cost(api_base: str, folder: Path, engine: str, requests: int) -> None:
    """The server's CPU per request with metrics on and off (two servers, same backend), rounds alternating."""
    machine = Machine()
    servers = {flag: ([flag], None) for flag in ("--metrics", "--no-metrics")}
    spent = side_by_side(_config(api_base, folder, engine), servers, sequential(requests))
    extra = [on - off for on, off in zip(spent["--metrics"], spent["--no-metrics"], strict=True)]
    print(f"server CPU per request, {requests} sequential requests, instant backend, N={N}:\n"
          f"  metrics on: {_summary(spent['--metrics'])} ms, off: {_summary(spent['--no-metrics'])} ms, "
          f"on - off: {_summary(extra)} ms (default on while <= 0.5 ms)  {machine}\n"
          f"  in-process, the metrics middleware counting one request's report: "
          f"{_summary([_metrics_cpu() for _ in range(3)])} ms")  # fmt: skip


def against(ref: str, folder: Path, engine: str, requests: int, total: int) -> None:
    """The server's CPU per request on this checkout and on git `ref` (a worktree of it, removed after), rounds
    alternating, sequential on an instant backend and CONCURRENCY in flight on a DELAY one: a ratio that holds
    while the machine's speed drifts, which the milliseconds alone do not."""
    tree = Path(folder) / "against"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), ref], check=True)
    try:
        servers = {"this": ([], None), ref: ([], tree)}
        for delay, load, what in ((0.0, sequential(requests), f"{requests} sequential requests, instant backend"),
                                  (DELAY, in_flight(total), f"{CONCURRENCY} in flight, {DELAY} s backend")):
            backend = backend_process(delay)
            try:
                machine = Machine()
                spent = side_by_side(_config(backend.stdout.readline().strip(), folder, engine), servers, load)
            finally:
                backend.kill()
            ratios = [this / then for this, then in zip(spent["this"], spent[ref], strict=True)]
            print(f"server CPU per request, {what}, N={N}, engine {engine}:\n"
                  f"  this checkout: {_summary(spent['this'])} ms, {ref}: {_summary(spent[ref])} ms, "
                  f"ratio (each round): {_summary(ratios)}  {machine}")  # fmt: skip
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False)


def _metrics_cpu(requests: int = 5000) -> float:
    """CPU ms per request of ``MetricsMiddleware`` counting a typical report (2 stages, 3 samples): exact where the
    difference of two servers is lost in their noise."""
    from fusion_dspy.core.report import CandidateReport, FusionReport, StageReport
    from fusion_dspy.serve.metrics import MetricsMiddleware, ServeMetrics

    usage = {"bench": {"prompt_tokens": 90, "completion_tokens": 20, "total_tokens": 110}}
    report = FusionReport("fuse", tuple(CandidateReport(i, "bench", 7) for i in range(N)), samples_drawn=N,
                          stages={"sample": StageReport(0.2, usage), "fuse": StageReport(0.2, usage)})  # fmt: skip

    async def endpoint(scope: dict, receive, send) -> None:
        scope["state"].update(fusion_profile="fusion", fusion_report=report)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def ignore(message: dict) -> None:
        pass

    async def run(middleware: MetricsMiddleware) -> None:
        for _ in range(requests):
            await middleware({"type": "http", "path": "/v1/chat/completions", "state": {}}, None, ignore)

    middleware = MetricsMiddleware(endpoint, ServeMetrics())
    start = time.process_time()
    asyncio.run(run(middleware))
    return 1000 * (time.process_time() - start) / requests

"""``fusion-dspy synth --workers 1`` (the command's own process) against ``--workers 2``, with a 0.2 s stub server.

Run by hand: ``python benchmarks/workers.py`` (options: ``--help``). The stub server runs in its own process; each
setting runs the real command in a fresh process, so both pay their interpreters' start (one, or the command's
and one per worker, in parallel: each imports DSPy and litellm). Each prompt costs a critical path of two
requests (its samples in parallel, then the fusor), so ``concurrency`` prompts in flight give at most
``concurrency / (2 * delay)`` prompts per second: the concurrency limit.

Printed for each concurrency and setting, min and median of the repeats, as a fraction of that limit: the
command end to end (start included), and in steady state (from its first row written to its last). Then the same
driver and pool on a job with no model at all (each row only waits as long as a prompt's critical path), in steady
state: what the pool itself costs.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ray_engine import synth_setup  # benchmarks/ray_engine.py: the same stub server (its --serve) and files

from fusion_dspy.core.steps import Call
from fusion_dspy.workflows.engine import Outcome
from fusion_dspy.workflows.jsonl import read_jsonl
from fusion_dspy.workflows.runner import run_items
from fusion_dspy.workflows.worker_engine import WorkerEngine


class Sleep:
    """A stand-in for a program: ``seconds`` of waiting, sync or async."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self) -> None:
        time.sleep(self.seconds)

    async def acall(self) -> None:
        await asyncio.sleep(self.seconds)


@dataclass(frozen=True)
class Wait:
    """A job without a model: each row waits ``seconds`` and writes its id."""

    seconds: float
    label: ClassVar[str] = "wait"

    def build(self):
        sleep = Sleep(self.seconds)

        def one(item_id: str, inputs: dict):
            yield Call(sleep)
            return Outcome(results=[{"id": item_id}])

        return one

    def failed(self, item_id: str, inputs: dict, error: Exception) -> Outcome:
        return Outcome(errors=[{"id": item_id, "error": f"{type(error).__name__}: {error}"}])


def timed(run, output: Path, prompts: int) -> tuple[float, float]:
    """Prompts per second end to end and from the first row written to the last (the file polled every 10 ms:
    the command's exit, e.g. its interpreter's teardown, is not steady state)."""
    first: list[float] = []
    last = [0.0]
    done = threading.Event()

    def watch() -> None:
        size = 0
        while not done.is_set():
            now = output.stat().st_size if output.exists() else 0
            if now != size:
                size, last[0] = now, time.perf_counter()
                first[:] = first or [last[0]]
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    run()
    end = time.perf_counter()
    done.set()
    watcher.join()
    written = sum(1 for _ in read_jsonl(output))
    assert written == prompts, f"{written} of {prompts} prompts written"
    return prompts / (end - start), (prompts - 1) / ((last[0] or end) - (first[0] if first else start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32], help="prompts in flight, in total")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=2, help="samples per prompt (one teacher, drawn in one request)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server, folder, config, prompts = synth_setup(args.delay, args.prompts, count=args.n, prefix="workers-bench-")
    settings = {"1 worker": 1, f"{args.workers} workers": args.workers}

    def command(output: Path, concurrency: int, workers: int) -> None:
        subprocess.run([sys.executable, "-m", "fusion_dspy.cli", "synth", "--config", str(config), "--prompts",
                        str(prompts), "--output", str(output), "--concurrency", str(concurrency), "--workers",
                        str(workers), "--quiet"], check=True, capture_output=True)  # fmt: skip

    results: dict[tuple[int, str], list[float]] = {}
    try:
        for concurrency in args.concurrency:
            limit = concurrency / (2 * args.delay)
            for repeat in range(args.repeats):
                line = []
                for label, workers in settings.items():
                    out = folder / f"{workers}-{concurrency}-{repeat}.jsonl"
                    end, steady = timed(lambda o=out, c=concurrency, w=workers: command(o, c, w), out, args.prompts)
                    results.setdefault((concurrency, f"{label}, end to end"), []).append(end / limit)
                    results.setdefault((concurrency, f"{label}, steady state"), []).append(steady / limit)
                    line.append(f"{label} {end:.1f}/s end to end, {steady:.1f}/s steady")
                out = folder / f"pool-{concurrency}-{repeat}.jsonl"
                _, pool = timed(lambda o=out, c=concurrency: run_items(
                    Wait(2 * args.delay), read_jsonl(prompts), ["prompt"], o, WorkerEngine(args.workers, c),
                    show_progress=False), out, args.prompts)  # fmt: skip
                results.setdefault((concurrency, f"{args.workers} workers, no model"), []).append(pool / limit)
                print(f"concurrency {concurrency}, repeat {repeat}: {'; '.join(line)}; no model {pool:.1f}/s; "
                      f"limit {limit:.1f}/s; load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        server.stdin.close()
        server.wait()

    print(f"\n{args.prompts} prompts, N={args.n}, {args.delay} s per request; throughput / concurrency limit, min "
          f"and median of {args.repeats}")
    for (concurrency, label), ratios in results.items():
        print(f"concurrency {concurrency:3d}  {label:30s} min {min(ratios):5.1%}  "
              f"median {statistics.median(ratios):5.1%}")


if __name__ == "__main__":
    main()

"""``synth`` on the local engine and on the Ray engine, against a server that takes 0.2 s per request.

Run by hand: ``python benchmarks/ray_engine.py`` (options: ``--help``). The stub server runs in its own
process. Each prompt costs a critical path of two requests (its samples in parallel, then the fusor), so at
most ``concurrency`` prompts in flight give at most ``concurrency / (2 * delay)`` prompts per second: the
concurrency limit. Both engines get the same total concurrency (Ray: actors x rows in flight per actor).

Printed, min and median of the repeats, measured in this run:
- local / limit: the local engine's throughput as a fraction of the concurrency limit;
- ray / local: the Ray engine's as a fraction of the local engine's, end to end (the Ray instance is up, the
  actors' start - a process each, importing DSPy and litellm - is counted), and in steady state (from the
  first row written to the last).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from serve_stack import reply  # the stub's ChatAdapter replies, as the serving benchmarks' stub gives them

from fusion_dspy.backends import load_config
from fusion_dspy.workflows.jobs import ConfigText, SynthJob
from fusion_dspy.workflows.jsonl import read_jsonl
from fusion_dspy.workflows.ray_engine import RayEngine, require_ray
from fusion_dspy.workflows.runner import run_items
from fusion_dspy.workflows.synth import synthesize


def serve(delay: float) -> None:
    """The stub server's own process: prints its address, serves until stdin closes."""
    from fusion_dspy.testing import StubOpenAIServer

    with StubOpenAIServer(reply, delay=delay) as server:
        print(server.api_base, flush=True)
        sys.stdin.read()


class FirstLine:
    """Notes when the first line lands in a file (polling), for the steady-state rate."""

    def __init__(self, path: Path):
        self.path, self.at, self._stop = path, None, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.at is None:
            if self.path.exists() and self.path.stat().st_size:
                self.at = time.perf_counter()
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(run, output: Path, prompts: int) -> tuple[float, float, float]:
    """Prompts per second end to end and from the first written row to the last; seconds to the first row."""
    watch = FirstLine(output)
    start = time.perf_counter()
    counts = run()
    end = time.perf_counter()
    watch.stop()
    assert counts["done"] == prompts, counts
    first = watch.at or start
    return prompts / (end - start), (prompts - 1) / (end - first), first - start


def as_commands(config: Path, prompts: Path, folder: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Prompts per second of the two commands, each in its own process, against one running Ray instance."""
    command = [str(Path(sys.executable).parent / "fusion-dspy"), "synth", "--config", str(config), "--prompts",
               str(prompts), "--quiet"]  # fmt: skip
    engines = {"local": ["--concurrency", str(args.concurrency)],
               "ray": ["--engine", "ray", "--address", "auto", "--actors", str(args.actors), "--in-flight",
                       str(max(1, args.concurrency // args.actors))]}  # fmt: skip
    rates = {}
    for name, options in engines.items():
        output = folder / f"command-{name}-{time.monotonic_ns()}.jsonl"
        start = time.perf_counter()
        subprocess.run([*command, "--output", str(output), *options], check=True, stdout=subprocess.DEVNULL)
        rates[name] = args.prompts / (time.perf_counter() - start)
        assert sum(1 for _ in output.open()) == args.prompts
    return rates["local"], rates["ray"]


def synth_setup(delay: float, prompts: int, count: int, prefix: str) -> tuple[subprocess.Popen, Path, Path, Path]:
    """The stub server in its own process (this file with ``--serve``; close its stdin to stop it), and in a new
    folder a config with one teacher drawing ``count`` samples a prompt and a JSONL of ``prompts`` prompts."""
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--delay", str(delay)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    api_base = server.stdout.readline().strip()
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"models": {"a": {"model": "openai/teacher", "api_base": api_base,
                                                       "cache": False, "num_retries": 0}},
                                      "roles": {"generators": [{"model": "a", "count": count}]}}))  # fmt: skip
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(prompts)))
    return server, folder, config, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=8, help="prompts in flight, in total")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.delay)

    ray = require_ray()
    server, folder, config, prompts = synth_setup(args.delay, args.prompts, count=2, prefix="ray-bench-")
    program = load_config(config).program("prompt -> response", method="fuse")
    synthesize(program, [{"prompt": "warm-up"}], folder / "warm.jsonl", show_progress=False)  # litellm's set-up
    ray.init(include_dashboard=False, logging_level="WARNING")
    engine = RayEngine(actors=args.actors, in_flight=max(1, args.concurrency // args.actors))
    job = SynthJob(ConfigText.read(config))
    limit = args.concurrency / (2 * args.delay)
    local, remote, commands = [], [], []
    try:
        for repeat in range(args.repeats):
            out = folder / f"local{repeat}.jsonl"
            local.append(timed(lambda out=out: synthesize(program, read_jsonl(prompts), out, args.concurrency,
                                                          show_progress=False), out, args.prompts))  # fmt: skip
            out = folder / f"ray{repeat}.jsonl"
            remote.append(timed(lambda out=out: run_items(job, read_jsonl(prompts), ["prompt"], out, engine,
                                                          show_progress=False), out, args.prompts))  # fmt: skip
            print(f"repeat {repeat}: local {local[-1][0]:.1f}/s, ray {remote[-1][0]:.1f}/s end to end; steady "
                  f"{local[-1][1]:.1f}/s, {remote[-1][1]:.1f}/s; first row after {local[-1][2]:.1f} s, "
                  f"{remote[-1][2]:.1f} s; limit {limit:.1f}/s", flush=True)
        ray.shutdown()
        ray_cli = str(Path(sys.executable).parent / "ray")
        subprocess.run([ray_cli, "start", "--head", "--num-cpus", str(args.actors), "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True)  # fmt: skip
        try:
            for repeat in range(args.repeats):
                commands.append(as_commands(config, prompts, folder, args))
                print(f"repeat {repeat}, as commands: local {commands[-1][0]:.1f}/s, ray {commands[-1][1]:.1f}/s",
                      flush=True)  # fmt: skip
        finally:
            subprocess.run([ray_cli, "stop", "--force"], capture_output=True)
    finally:
        ray.shutdown()
        server.stdin.close()
        server.wait()

    def report(label: str, ratios: list[float]) -> None:
        print(f"{label:34s} min {min(ratios):5.1%}  median {statistics.median(ratios):5.1%}")

    print(f"{args.prompts} prompts, {args.delay} s per request, {args.concurrency} prompts in flight "
          f"(ray: {args.actors} actors x {engine.in_flight}); limit {limit:.1f} prompts/s")
    report("local / concurrency limit", [rate / limit for rate, _, _ in local])
    report("ray / local, end to end", [ray_[0] / local_[0] for ray_, local_ in zip(remote, local, strict=True)])
    report("ray / local, steady state", [ray_[1] / local_[1] for ray_, local_ in zip(remote, local, strict=True)])
    report("ray / local, as commands", [ray_ / local_ for local_, ray_ in commands])


if __name__ == "__main__":
    main()

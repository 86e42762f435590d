"""Soak: 1,000 prompts through `fusion-dspy synth` against a stub server; memory, threads and open files over time.

Run by hand: `python benchmarks/soak.py [--prompts 1000] [--concurrency 4] [--repeat 3] [--history]`. The stub
server runs in its own process; each batch runs in a fresh child process (clean numbers), driven through the CLI
exactly as a user runs it, while a monitor thread samples its resident memory (RSS), thread count and open
descriptors. Printed: the values after the first 5 % of prompts (start: imports, clients and pools warmed up) and
at the end, with end/start ratios (target: flat, 1.00x); with `--repeat`, the min and median RSS ratio over the
runs. `--history` keeps DSPy's LM call history on (its default, and what the batch commands did before they
switched it off), to show the difference.
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

SERVER = """
import sys, time
from fusion_dspy.testing import StubOpenAIServer
def respond(call):
    if call.wants("comparison"):
        return {"comparison": "the drafts agree " * 20, "response": "fused answer " * 40}
    return {"response": "a draft answer " * 40}
with StubOpenAIServer(respond=respond) as server:
    print(server.api_base, flush=True)
    sys.stdin.read()  # until the parent closes it
"""


def child(args: argparse.Namespace) -> None:
    import psutil

    from fusion_dspy import _commands, cli

    if args.history:
        _commands.keep_no_history = lambda: None  # the benchmark's "before" case: DSPy's default history
    me, output, samples = psutil.Process(), Path(args.output), []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            written = output.read_bytes().count(b"\n") if output.exists() else 0
            samples.append((written, me.memory_info().rss / 2**20, threading.active_count() - 1, me.num_fds()))
            done.wait(0.5)

    monitor = threading.Thread(target=watch, daemon=True)
    monitor.start()
    code = cli.main(["synth", "--config", args.config, "--prompts", args.prompts_file, "--output", args.output,
                     "--concurrency", str(args.concurrency), "--quiet"])  # fmt: skip
    done.set()
    monitor.join()
    written = output.read_bytes().count(b"\n")
    samples.append((written, me.memory_info().rss / 2**20, threading.active_count(), me.num_fds()))
    print(json.dumps({"code": code, "samples": samples}))


def report(label: str, samples: list, total: int) -> float:
    start = next(s for s in samples if s[0] >= max(1, total // 20))
    end = samples[-1]
    print(f"{label}: {end[0]} of {total} prompts written")
    for name, index, unit in (("RSS", 1, "MB"), ("threads", 2, ""), ("open files", 3, "")):
        ratio = end[index] / start[index] if start[index] else float("nan")
        print(f"  {name:10s} start {start[index]:8.1f}{unit} (after {start[0]} prompts)  end {end[index]:8.1f}{unit}"
              f"  end/start {ratio:.2f}x")  # fmt: skip
    peak = max(s[1] for s in samples)
    rss_ratio = end[1] / start[1]
    print(f"  RSS peak {peak:.1f}MB; threads {min(s[2] for s in samples)}-{max(s[2] for s in samples)}; "
          f"open files {min(s[3] for s in samples)}-{max(s[3] for s in samples)}")  # fmt: skip
    return rss_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs (each in a fresh process)")
    parser.add_argument("--history", action="store_true", help="keep DSPy's LM history on (the old behaviour)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        api_base = server.stdout.readline().strip()
        ratios = [soak(args, api_base) for _ in range(args.repeat)]
        if len(ratios) > 1:
            print(f"RSS end/start over {len(ratios)} runs: min {min(ratios):.2f}x, median "
                  f"{statistics.median(ratios):.2f}x")  # fmt: skip
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def soak(args: argparse.Namespace, api_base: str) -> float:
    """One batch of ``args.prompts`` prompts in a fresh child process; its RSS end/start ratio."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config, prompts = work / "config.yaml", work / "prompts.jsonl"
        models = {name: {"model": f"openai/{name}", "api_base": api_base, "cache": False, "num_retries": 0}
                  for name in ("teacher-a", "teacher-b", "fusor")}  # fmt: skip
        config.write_text(json.dumps({"models": models, "roles": {"generators": ["teacher-a", "teacher-b"],
                                                                  "fusor": "fusor"}}))  # fmt: skip
        prompts.write_text("".join(json.dumps({"id": i, "prompt": f"Explain topic {i} in a paragraph."}) + "\n"
                                   for i in range(args.prompts)))  # fmt: skip
        started = time.perf_counter()
        run = subprocess.run([sys.executable, __file__, "--child", "--config", str(config), "--prompts-file",
                              str(prompts), "--output", str(work / "train.jsonl"), "--concurrency",
                              str(args.concurrency), *(["--history"] if args.history else [])],
                             capture_output=True, text=True)  # fmt: skip
        if run.returncode != 0:
            sys.exit(f"the batch failed: {run.stderr[-2000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        label = "DSPy history ON (old)" if args.history else "batch commands (history off)"
        return report(f"{label}, synth exit {result['code']}, {time.perf_counter() - started:.0f} s",
                      result["samples"], args.prompts)  # fmt: skip


if __name__ == "__main__":
    main()

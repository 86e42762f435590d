"""Start-up: a one-question ``fusion-dspy run`` on a default (``engine: auto`` -> native) config, against
``python -c "import dspy"``.

Run by hand: ``python benchmarks/startup.py`` (options: ``--help``). A stub OpenAI-compatible server answers at once,
in its own process. Each repeat runs, in fresh processes, ``python -c "import dspy"`` and then the real command
(``fusion-dspy run --config ... --input ... --quiet``: one sample, then the fusor, so two requests), whose time is
counted less its two requests (twice the median round trip of a chat request to the stub, measured here). Printed:
the median and the min of the repeats of each, their ratio (the target: within 1.5x of ``import dspy``), beside the
machine's load (``uptime``) and the share of CPU time stolen by the hypervisor meanwhile (``/proc/stat``), since
both move start-up times on a shared machine. ``--importtime`` also writes ``python -X importtime``'s log of one
run and prints its slowest imports.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from machine import Machine

STUB = """
import sys, time
from fusion_dspy.testing import StubOpenAIServer
server = StubOpenAIServer(respond=lambda call: {"comparison": "Same.", "answer": "4"} if call.wants("comparison")
                          else {"answer": "4"}).start()
print(server.api_base, flush=True)
sys.stdin.read()  # until the benchmark closes it
"""


def seconds(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def round_trip(api_base: str, repeats: int = 5) -> float:
    """Median seconds of one chat request to the stub, from a warm client."""
    body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": "2 + 2?"}]}).encode()
    times = []
    for _ in range(repeats):
        request = urllib.request.Request(f"{api_base}/chat/completions", body, {"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slowest_imports(log: str, top: int) -> list[tuple[float, str]]:
    """The packages whose first import took longest (cumulative ms, nested imports included), from importtime's log."""
    rows = []
    for line in log.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].strip()
            if "." not in name or name in ("dspy.lm15", "fusion_dspy.backends", "fusion_dspy.workflows"):
                rows.append((int(parts[1]) / 1e3, name))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--importtime", type=Path, help="also write one run's `python -X importtime` log here")
    args = parser.parse_args()
    python = sys.executable
    stub = subprocess.Popen([python, "-c", STUB], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        api_base = stub.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            (work / "config.yaml").write_text(json.dumps({
                "models": {"stub": {"model": "openai/stub", "api_base": api_base, "cache": False}},
                "roles": {"generators": "stub"}, "fusion": {"n": 1}}))  # fmt: skip
            run = [python, "-m", "fusion_dspy.cli", "run", "--config", "config.yaml", "--output", "out.jsonl",
                   "--quiet", "--input"]  # fmt: skip
            seconds(run + ["warm-up"], work)  # the disk cache of the interpreter's files, as for import dspy
            requests = 2 * round_trip(api_base)
            watch = Machine()
            dspy_times, run_times = [], []
            for i in range(args.repeats):
                dspy_times.append(seconds([python, "-c", "import dspy"], work))
                run_times.append(seconds(run + [f"question {i}"], work) - requests)
            steal = watch.steal()
            log = ""
            if args.importtime:
                done = subprocess.run([python, "-X", "importtime", *run[1:], "importtime"], cwd=work,
                                      capture_output=True, text=True, check=True)  # fmt: skip
                log = done.stderr
                args.importtime.write_text(log)
    finally:
        stub.stdin.close()
        stub.wait(timeout=30)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if os.name == "posix" else ""
    print(f"{'':<34}{'median s':>10}{'min s':>10}")
    label = 'python -c "import dspy"'
    print(f"{label:<34}{statistics.median(dspy_times):>10.2f}{min(dspy_times):>10.2f}")
    print(f"{'fusion-dspy run (less 2 requests)':<34}{statistics.median(run_times):>10.2f}{min(run_times):>10.2f}")
    print(f"{'ratio (target <= 1.5x)':<34}{statistics.median(run_times) / statistics.median(dspy_times):>9.2f}x"
          f"{min(run_times) / min(dspy_times):>9.2f}x")  # fmt: skip
    print(f"two requests: {requests * 1e3:.1f} ms | load: {uptime} | CPU steal during the runs: {steal:.1%}")
    for took, name in slowest_imports(log, 20):
        print(f"{took:9.0f} ms {name}")


if __name__ == "__main__":
    main()

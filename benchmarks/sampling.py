"""Sampling at the physical limit: wall time over the critical path for N = 1..64, and client CPU per sample.

Run by hand: `python benchmarks/sampling.py [--delay 0.2] [--runs 3] [--ns 1,8,16,32,64]`. The stub server runs
in ITS OWN PROCESS (this file with `--serve`), so the client's numbers are the client's. Each cell prints the
min / median of `--runs` runs of wall time divided by the critical path: one sample + one fusion (2 x delay)
for FusionOfN, one sample for BestOfN (a reward function selects, no LM call); `n=`: the N samples in one
request (the OpenAI `n` parameter), `native`/`nat.`: `engine: native` (DSPy's lm15 client behind fusion-dspy's
engine, backends/native.py), else litellm; without `n=`, one request per sample. dspy.BestOfN is shown next to
it (it draws one sample after another). The async calls all run on one event loop, as in an async application or
a server (``asyncio.run`` per call would add a new loop, its executor threads and new HTTP connections to every call,
which sync calls do not pay). Then: CPU ms per sample of the client (process time), adaptive N on agreeing and
disagreeing questions, one straggler at 10x latency cut off by a quorum, and the share of CPU time the hypervisor
stole during the run (a noisy host inflates every ratio). First, the default config's table: the LM and program
a config with no `engine:` builds (engine auto -> native), batched and not (`--only-default`: that table alone).
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from machine import Machine

DELAY = 0.2


def serve(delay: float, straggle_every: int | None) -> None:
    from fusion_dspy.testing import StubOpenAIServer

    def respond(call):
        if call.wants("comparison"):
            return {"comparison": "compared", "answer": "fused"}
        return {"answer": "42" if call.inputs.get("question", "").startswith("same") else f"answer {call.index}"}

    def wait(call):  # one request of every `straggle_every` takes 10x as long
        return delay * 10 if straggle_every and call.index % straggle_every == straggle_every - 2 else delay

    with StubOpenAIServer(respond=respond, delay=wait) as server:
        print(server.api_base, flush=True)
        sys.stdin.read()  # until the client closes our stdin


class Server:
    """The stub server in a subprocess; `api_base` once it listens."""

    def __init__(self, delay: float, straggle_every: int | None = None):
        args = [sys.executable, __file__, "--serve", "--delay", str(delay)]
        if straggle_every:
            args += ["--straggle-every", str(straggle_every)]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.api_base = self.process.stdout.readline().strip()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


def make_lm(api_base: str, engine: str = "litellm", lean: bool = False):
    """The LM a config builds: `engine: litellm` (lean: `lean_client`), `engine: native` (fusion-dspy's engine
    over DSPy's lm15 client), or DSPy's own string engine `lm15` for comparison."""
    import dspy

    from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine

    if engine == "native":
        route = ("openai/bench", api_base)  # a stub without auth: "no-key"
        return dspy.LM("openai/bench", engine=NativeEngine(*route), async_engine=AsyncNativeEngine(*route),
                       num_retries=0, cache=False)  # fmt: skip
    extra = {"no-log": True} if lean else {}
    return dspy.LM("openai/bench", api_base=api_base, api_key="not-a-secret", engine=engine, num_retries=0,
                   cache=False, **extra)  # fmt: skip


def timed(call, runs: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def ratio(walls: list[float], critical: float) -> str:
    return f"{min(walls) / critical:4.2f}/{statistics.median(walls) / critical:4.2f}"


def sweep(api_base: str, ns: list[int], runs: int, delay: float, run_async) -> None:
    import dspy

    import fusion_dspy as fd

    lm, lean, native = make_lm(api_base), make_lm(api_base, lean=True), make_lm(api_base, engine="native")
    question = {"question": "Why is the sky blue?"}

    def fusion(n, lm=lm, batch=False):
        return fd.FusionOfN("question -> answer", n=n, lm=lm, batch_samples=batch)

    def best(n, lm=lm, batch=False):
        return fd.BestOfN("question -> answer", n=n, lm=lm, reward_fn=lambda inputs, p: -len(p.answer),
                          batch_samples=batch)  # fmt: skip

    def theirs(n):
        predict = dspy.Predict("question -> answer")
        with dspy.context(lm=lm):
            return dspy.BestOfN(predict, N=n, reward_fn=lambda inputs, p: -len(p.answer), threshold=1e9)(**question)

    for warm in (lm, lean, native):  # first sync/async calls import and set up clients: not what we measure
        fusion(2, warm)(**question)
        run_async(fusion(2, warm).acall(**question))
    columns = ["sync", "async", "sync n=", "async n=", "lean sync", "lean async", "native", "nat. async",
               "nat. n=", "nat. a. n=", "BestOfN", "BoN n=", "BoN nat.", "dspy.BoN"]  # fmt: skip
    print(f"\nwall / critical path, min/median of {runs} (delay {delay} s; FusionOfN unless named)")
    print(f"{'N':>3} " + " ".join(f"{c:>10}" for c in columns))
    def row(n: int) -> list[str]:
        return [
            ratio(timed(lambda: fusion(n)(**question), runs)[0], 2 * delay),
            ratio(timed(lambda: run_async(fusion(n).acall(**question)), runs)[0], 2 * delay),
            ratio(timed(lambda: fusion(n, batch=True)(**question), runs)[0], 2 * delay),
            ratio(timed(lambda: run_async(fusion(n, batch=True).acall(**question)), runs)[0], 2 * delay),
            ratio(timed(lambda: fusion(n, lean)(**question), runs)[0], 2 * delay),
            ratio(timed(lambda: run_async(fusion(n, lean).acall(**question)), runs)[0], 2 * delay),
            ratio(timed(lambda: fusion(n, native)(**question), runs)[0], 2 * delay),
            ratio(timed(lambda: run_async(fusion(n, native).acall(**question)), runs)[0], 2 * delay),
            ratio(timed(lambda: fusion(n, native, batch=True)(**question), runs)[0], 2 * delay),
            ratio(timed(lambda: run_async(fusion(n, native, batch=True).acall(**question)), runs)[0], 2 * delay),
            ratio(timed(lambda: best(n)(**question), runs)[0], delay),
            ratio(timed(lambda: best(n, batch=True)(**question), runs)[0], delay),
            ratio(timed(lambda: best(n, native)(**question), runs)[0], delay),
            ratio(timed(lambda: theirs(n), 1)[0], delay) if n <= 8 else "-",
        ]

    for n in ns:
        print(f"{n:>3} " + " ".join(f"{c:>10}" for c in row(n)), flush=True)


SENT: dict[str, int] = {}  # HTTP requests the native engines sent, by method (count_native_requests)


def count_native_requests() -> None:
    """Count each request of the native engines: one per `complete`, one per `choices` (a batch of n)."""
    from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine

    def counted(cls, name):
        method = cls.__dict__[name]
        if asyncio.iscoroutinefunction(method):
            async def wrapper(self, *args, **kwargs):
                SENT[name] = SENT.get(name, 0) + 1
                return await method(self, *args, **kwargs)
        else:
            def wrapper(self, *args, **kwargs):
                SENT[name] = SENT.get(name, 0) + 1
                return method(self, *args, **kwargs)
        setattr(cls, name, wrapper)

    for cls in (NativeEngine, AsyncNativeEngine):
        for name in ("complete", "choices"):
            counted(cls, name)


def default_config(api_base: str, ns: list[int], runs: int, delay: float, run_async) -> None:
    """The LM and program a config with no `engine:` builds (`engine: auto`: native for `openai/` + `api_base`),
    with its default `batch_samples` (auto: the N samples in one request) and with `batch_samples: false`.
    Targets: FusionOfN(64) batched <= 1.1x its critical path, in 2 requests; unbatched <= 1.3x at 32, <= 1.5x at 64."""
    import dspy

    from fusion_dspy.backends import Backends, FusionConfig

    def program(n: int, batch: bool):
        model = {"model": "openai/bench", "api_base": api_base, "num_retries": 0, "cache": False,
                 **({} if batch else {"batch_samples": False})}  # fmt: skip
        backends = Backends(FusionConfig.model_validate({"models": {"bench": model}, "roles": {"generators": "bench"}}))
        return backends, backends.program(dspy.Predict("question -> answer"), n=n)

    count_native_requests()
    backends, _ = program(1, True)
    print(f"\ndefault config (no engine: given -> {backends.config.engine('bench')}): wall / critical path "
          f"(2 x {delay} s), min/median of {runs}; requests and client CPU ms per sync call")  # fmt: skip
    print(f"{'N':>3} {'n= sync':>10} {'n= async':>10} {'requests':>9} {'CPU ms':>9} {'sync':>10} {'async':>10} "
          f"{'requests':>9} {'CPU ms':>9}")  # CPU ms: the client's process time of one sync call, min
    for n in ns:
        cells = []
        for batch in (True, False):
            backends, fused = program(n, batch)
            fused(question="warm-up")
            run_async(fused.acall(question="warm-up"))
            before = sum(SENT.values())
            sync, cpu = timed(lambda fused=fused: fused(question="Why is the sky blue?"), runs)
            requests = (sum(SENT.values()) - before) / runs
            asynchronous = timed(lambda fused=fused: run_async(fused.acall(question="Why?")), runs)[0]
            cells += [ratio(sync, 2 * delay), ratio(asynchronous, 2 * delay), f"{requests:.0f}",
                      f"{min(cpu) * 1000:.0f}"]  # fmt: skip
        print(f"{n:>3} " + " ".join(f"{c:>{10 if i % 4 < 2 else 9}}" for i, c in enumerate(cells)), flush=True)


def cpu_per_sample(api_base: str, runs: int, run_async, n: int = 32) -> None:
    import dspy

    import fusion_dspy as fd

    print(f"\nclient CPU ms per sample (process time, min of {runs}; N={n}; sync)")

    def measure(label: str, lm_kwargs: dict, batch: bool) -> None:
        lm = make_lm(api_base, **lm_kwargs)
        predict = dspy.Predict("question -> answer")
        alone = min(timed(lambda: [predict(question="q", lm=lm) for _ in range(8)], runs)[1]) / 8

        async def eight() -> None:
            for _ in range(8):
                await predict.acall(question="q", lm=lm)

        async_alone = min(timed(lambda: run_async(eight()), runs)[1]) / 8
        sample = fd.Sample("question -> answer", n=n, lm=lm, batch_samples=batch)
        ours = min(timed(lambda: sample(question="q"), runs)[1]) / n
        print(f"  {label:24s} dspy.Predict alone {alone * 1000:5.1f} (async {async_alone * 1000:5.1f}) | Sample "
              f"{ours * 1000:5.1f} ms/sample")  # fmt: skip

    for label, lm_kwargs, batch in [("litellm", {}, False), ("litellm lean (no-log)", {"lean": True}, False),
                                    ("dspy.LM(engine='lm15')", {"engine": "lm15"}, False),
                                    ("native", {"engine": "native"}, False), ("litellm n=", {}, True),
                                    ("native n=", {"engine": "native"}, True)]:
        measure(label, lm_kwargs, batch)


def stragglers(delay: float, runs: int, n: int = 16) -> None:
    import fusion_dspy as fd

    grace = delay
    for engine in ("litellm", "native"):
        with Server(delay, straggle_every=n + 1) as server:  # one of every call's n + 1 requests is 10x slow
            lm = make_lm(server.api_base, engine=engine)
            fused = fd.FusionOfN("question -> answer", n=n, lm=lm, quorum=n - 1, straggler_grace_s=grace)
            fused(question="warm-up")
            results = []
            walls = timed(lambda fused=fused, results=results: results.append(fused(question="q")), runs)[0]
        cut = [len(r.stragglers) for r in results]
        print(f"\none straggler at 10x, N={n}, quorum {n - 1}, grace {grace} s, {engine}: wall / (critical path + "
              f"grace) {ratio(walls, 2 * delay + grace)}; stragglers cut per call {cut}")


def adaptive(api_base: str, n: int = 16) -> None:
    import fusion_dspy as fd
    from fusion_dspy.core.adaptive import Adaptive

    lm = make_lm(api_base)
    for question in ("same: 6 x 7?", "open: why?"):
        pool = fd.Sample("question -> answer", n=n, lm=lm, adaptive=Adaptive(wave=4))(question=question)
        print(f"adaptive N={n} on {question.split(':')[0]!r}: drew {pool.drawn} of {n} "
              f"({pool.drawn / n:.0%}), stopped: {pool.stop_reason}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--delay", type=float, default=DELAY)
    parser.add_argument("--straggle-every", type=int)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ns", default="1,8,16,32,64")
    parser.add_argument("--only-default", action="store_true", help="only the default config's table (engine auto)")
    args = parser.parse_args()
    if args.serve:
        return serve(args.delay, args.straggle_every)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    print(f"client pid {os.getpid()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    watch = Machine()  # every ratio here is inflated by the load and steal it prints
    try:
        if args.only_default:
            with Server(args.delay) as server, asyncio.Runner() as runner:
                default_config(server.api_base, [int(n) for n in args.ns.split(",")], args.runs, args.delay,
                               runner.run)  # fmt: skip
            return
        with Server(args.delay) as server, asyncio.Runner() as runner:
            default_config(server.api_base, [int(n) for n in args.ns.split(",")], args.runs, args.delay, runner.run)
            sweep(server.api_base, [int(n) for n in args.ns.split(",")], args.runs, args.delay, runner.run)
            cpu_per_sample(server.api_base, args.runs, runner.run)
            adaptive(server.api_base)
        stragglers(args.delay, args.runs)
    finally:
        print(f"\n{watch}")


if __name__ == "__main__":
    main()

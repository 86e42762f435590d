"""The function calls the fusion server makes per request, by package: a count that does not drift with the
machine's speed, where its CPU milliseconds drift by a third over a day (docs/benchmarks.md).

Run by hand: `python benchmarks/serve_calls.py --engine native`. The backend (the OpenAI-compatible stub) runs
in its own process. The server's app, built as `fusion-dspy serve` builds it (its start-up included), runs in
this one on uvloop, as under uvicorn, and is called through httpx2's ASGI transport, one request at a time. After
a warm-up, cProfile counts every call the app makes while it answers (the client's own work is before and
after). Printed: the calls per request of each package, its Python functions and the builtins its code calls
(``isinstance``, ``len``, ``dict.get`` ...), and fusion_dspy's functions called most.

A count is a proxy: a call into pydantic-core or json (C) counts as one, like a Python function, and a syscall
not at all. Use it to see whether a change removed work, and `serve.py --against` for what that work cost.
"""

import argparse
import collections
import cProfile
import os
import pstats
import sysconfig
import tempfile
from pathlib import Path

import httpx2
from serve_stack import N, _body, _config, backend_process

STDLIB = sysconfig.get_paths()["stdlib"]


def package(path: str) -> str:
    """Who a profiled function belongs to, by its file: a site package, fusion_dspy, the standard library."""
    if "site-packages/dspy/_vendor/lm15/" in path:
        return "dspy: lm15 (its HTTP client and request types)"
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if "/fusion_dspy/" in path:
        return "fusion_dspy"
    if path.startswith(STDLIB):
        return "stdlib: " + path.removeprefix(STDLIB).strip("/").split("/")[0].removesuffix(".py")
    return path  # '<string>': dataclass __init__s and the like


async def requests(app, count: int, warm_up: int) -> cProfile.Profile:
    """``count`` requests through ``app``, each counted while the app answers it, after ``warm_up`` uncounted ones."""
    profile, measured = cProfile.Profile(), False

    async def counted(scope, receive, send) -> None:  # one request at a time: the calls inside are the app's
        if measured:
            profile.enable()
        try:
            await app(scope, receive, send)
        finally:
            profile.disable()

    transport = httpx2.ASGITransport(app=counted)
    # The lifespan: the server's start and stop (e.g. its event loop's default executor, serve/app.py).
    async with app.router.lifespan_context(app), httpx2.AsyncClient(transport=transport, base_url="http://x") as client:
        for k in range(warm_up + count):
            measured = k >= warm_up
            (await client.post("/v1/chat/completions", json=_body(k))).raise_for_status()
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["litellm", "native"], default="native", help="the served model's engine")
    parser.add_argument("--requests", type=int, default=50, help="measured requests")
    parser.add_argument("--top", type=int, default=15, help="fusion_dspy functions to list")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import uvloop

    from fusion_dspy.serve.command import ServeOptions

    backend = backend_process(0.0)
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = _config(backend.stdout.readline().strip(), Path(folder), args.engine)
            app = ServeOptions(config=str(config)).app()
            profile = uvloop.run(requests(app, args.requests, warm_up=10))
    finally:
        backend.kill()
    by_package, ours = collections.Counter(), collections.Counter()
    for (path, line, name), (_, calls, _, _, callers) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        if path == "~":  # a builtin (isinstance, len, dict.get ...): counted for the package of each caller
            for (caller, *_), (_, made, *_) in callers.items():
                by_package[package(caller)] += made
            continue
        by_package[package(path)] += calls
        if package(path) == "fusion_dspy":
            ours[f"{path.split('/fusion_dspy/')[1]}:{line} {name}"] += calls
    served = sum(by_package.values())
    print(f"function calls per request in the server's app, N={N}, engine {args.engine}, {args.requests} "
          f"sequential requests (cProfile): {served / args.requests:,.0f} in all")  # fmt: skip
    for name, calls in by_package.most_common():
        if calls / served >= 0.005:
            print(f"  {calls / args.requests:8,.0f}  {calls / served:6.1%}  {name}")
    print("fusion_dspy's functions called most, per request:")
    for name, calls in ours.most_common(args.top):
        print(f"  {calls / args.requests:8.1f}  {name}")


if __name__ == "__main__":
    main()

"""The ``fusion-dspy`` command: ``demo`` (the main job, offline on the embedded model), ``run`` (a batch),
``optimize``, ``eval``, ``synth`` and ``serve`` (fusion programs as OpenAI-compatible models)."""

import argparse
import os
import sys
from pathlib import Path

from fusion_dspy import _commands
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.serve.command import ServeOptions


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    engine = parser.add_argument_group("engine", "where the work runs (docs: Batch and Ray)")
    engine.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process (default); ray: a Ray Data pipeline over an actor pool "
                        "(pip install 'fusion-dspy[ray]')")  # fmt: skip
    engine.add_argument("--address", help="Ray cluster: 'auto' (the one this machine is part of) or "
                        "'ray://HEAD:10001' (default: a local Ray instance for this run)")  # fmt: skip
    engine.add_argument("--actors", type=_positive, help="Ray actors, one CPU each (default 2)")
    engine.add_argument("--in-flight", type=_positive, help="rows each Ray actor runs at once (default 16)")
    engine.add_argument("--workers", type=_positive, help="local engine: worker processes on this machine, each "
                        "building the program once and running its share of the items in flight (default 1: "
                        "this process)")  # fmt: skip


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def _group_size(text: str) -> int | str | None:
    text = text.strip().lower()
    return None if text == "none" else text if text == "auto" else int(text)


def _add_task_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument("--config", type=Path, help="YAML/TOML config (default: the embedded model for every role)")
    parser.add_argument("--program", required=True,
                        help="the task: a built-in program name or 'package.module:task' (a fusion_dspy.Task)")
    parser.add_argument("--devset", type=Path, help="JSONL examples: input fields and gold outputs per line "
                        "(default: the program's own data)")  # fmt: skip
    parser.add_argument("--split", default=split, help=f"split of the program's own data (default {split})")
    parser.add_argument("--size", type=int, default=20, help="examples of the program's own data (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the program's own data (default 0)")
    parser.add_argument("--n-values", type=_csv(int), default=[1, 2, 4, 8], help="N to try (default 1,2,4,8)")
    parser.add_argument("--threads", type=int, default=4, help="examples evaluated at once (default 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-dspy", description="Fusion-of-N and Best-of-N for DSPy programs.",
        epilog="Every command takes --help. Without --config every role uses the embedded local model.",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings and info to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="FusionOfN and BestOfN side by side on a few built-in prompts",
                               description="The main job: samples N candidates per prompt, then shows Best-of-N's "
                               "pick and Fusion-of-N's new answer on the same candidates, with tokens and time per "
                               "stage. Offline on the embedded model unless --config says otherwise.")  # fmt: skip
    demo.add_argument("--config", type=Path, help="YAML/TOML config naming the models of each role")
    demo.add_argument("--n", type=_positive, default=3, help="candidates per prompt (default 3)")
    demo.add_argument("--prompt", action="append", help="a prompt of your own (repeatable) instead of the built-ins")
    demo.set_defaults(handler=_commands.demo)

    run = commands.add_parser("run", help="run FusionOfN/BestOfN over one input or a JSONL file",
                              description="Runs each input through the program of the config and appends one JSON "
                              "line per input to --output. Rerunning skips inputs already written.")  # fmt: skip
    run.add_argument("--config", type=Path, help="YAML/TOML config (default: the embedded model for every role)")
    run.add_argument("--signature", default="question -> answer", help='task signature (default "question -> answer")')
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="one input: the value of the signature's first input field")
    source.add_argument("--inputs", type=Path, help="JSONL file, one object of input fields (and optional id) a line")
    run.add_argument("--output", type=Path, default=Path("results.jsonl"), help="JSONL results (default results.jsonl)")
    run.add_argument("--method", choices=["fuse", "select", "auto"], help="override the config's fusion.method")
    run.add_argument("--n", type=_positive, help="override the config's fusion.n")
    run.add_argument("--concurrency", type=int, default=1, help="inputs in flight at once (default 1)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine_arguments(run)
    run.set_defaults(handler=_commands.run)

    optimize = commands.add_parser("optimize", help="tune N, temperature, fuse vs select, fusor prompt, teachers",
                                   description="Optuna search scored by the task's metric on a dev set. The study "
                                   "lives in --storage: rerun the same command to resume it, or start it on "
                                   "several machines to share the work. Candidates are cached in --cache-dir and "
                                   "reused by every trial and run.")  # fmt: skip
    _add_task_arguments(optimize, split="dev")
    optimize.add_argument("--trials", type=int, default=20, help="complete trials the study should have (default 20)")
    optimize.add_argument("--timeout", type=float, help="stop after this many seconds (resume later)")
    optimize.add_argument("--temperatures", type=_csv(float), default=[0.7], help="temperatures (default 0.7)")
    optimize.add_argument("--methods", type=_csv(str), default=["fuse", "select"],
                          help="fuse, select and/or auto (a trained --router); default fuse,select")  # fmt: skip
    optimize.add_argument("--teachers", type=_csv(str), help="model names whose subsets to try as the teacher pool")
    optimize.add_argument("--propose", type=int, default=0, help="extra fusor instructions from the judge model")
    optimize.add_argument("--adaptive-thresholds", type=_csv(float),
                          help="adaptive-N agreement thresholds to try beside fixed N, e.g. 0.8,0.95")  # fmt: skip
    optimize.add_argument("--group-sizes", type=_csv(_group_size), default=[None],
                          help="group fusion to try: none, auto or k (default none)")  # fmt: skip
    optimize.add_argument("--layers", type=_csv(int), default=[1], help="Mixture-of-Agents layers to try (default 1)")
    optimize.add_argument("--permutations", type=_csv(int), default=[1], help="candidate orders to fuse in (default 1)")
    optimize.add_argument("--router", type=Path, help="a trained Router (JSON) for the method auto")
    optimize.add_argument("--cost", action="store_true", help="also minimize tokens (a Pareto front)")
    optimize.add_argument("--sampler", choices=["tpe", "grid"], default="tpe", help="tpe (default) or grid")
    optimize.add_argument("--storage", default="sqlite:///fusion_study.db",
                          help="optuna storage: an RDB URL (default sqlite:///fusion_study.db; postgresql://... for "
                          "many machines) or journal:PATH for a journal file")  # fmt: skip
    optimize.add_argument("--study", help="study name (default fusion-<program>)")
    optimize.add_argument("--cache-dir", type=Path, default=Path(".fusion_dspy_cache/candidates"),
                          help="candidate store (default .fusion_dspy_cache/candidates)")
    optimize.add_argument("--output", type=Path, default=Path("tuned.json"), help="best program (default tuned.json)")
    optimize.add_argument("--plot", type=Path, default=Path("fusion_study.png"), help="PNG of score and cost vs N")
    optimize.set_defaults(handler=_commands.optimize)

    evaluate = commands.add_parser("eval", help="single sample vs Best-of-N vs Fusion-of-N vs oracle, same candidates",
                                   description="Draws the largest N's candidates once per example, scores a single "
                                   "sample, Best-of-N, Fusion-of-N and the oracle (the best candidate by the metric) "
                                   "on them for every N, and reports means with bootstrap 95% intervals. Rerunning "
                                   "continues an interrupted evaluation.")  # fmt: skip
    _add_task_arguments(evaluate, split="test")
    evaluate.add_argument("--output-dir", type=Path, default=Path("eval"), help="records, summary, plot (eval/)")
    _add_engine_arguments(evaluate)
    evaluate.add_argument("--router", type=Path, help="a trained Router (JSON): also score Route (method auto)")
    evaluate.set_defaults(handler=_commands.evaluate)

    synth = commands.add_parser("synth", help="prompts -> teacher pool -> fused answers -> chat fine-tuning JSONL",
                                description="Samples every prompt from the config's teacher pool, fuses the "
                                "answers and appends one chat-format training example with its provenance per "
                                "prompt. Safe to kill and rerun: each prompt is written exactly once.")  # fmt: skip
    synth.add_argument("--config", type=Path, help="YAML/TOML config: roles.generators is the teacher pool")
    synth.add_argument("--prompts", type=Path, required=True, help="JSONL, one object of input fields (and id) a line")
    synth.add_argument("--output", type=Path, default=Path("train.jsonl"), help="training set (default train.jsonl)")
    synth.add_argument("--signature", default="prompt -> response", help='default "prompt -> response"')
    synth.add_argument("--n", type=_positive, help="samples per prompt (default: one per teacher count)")
    synth.add_argument("--concurrency", type=int, default=4,
                       help="prompts in flight at once, local engine (default 4; Ray: --actors x --in-flight)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine_arguments(synth)
    synth.set_defaults(handler=_commands.synth)

    serve = commands.add_parser("serve", help="serve fusion programs as models over an OpenAI-compatible API",
                                description="POST /v1/chat/completions (plain and streaming), GET /v1/models, "
                                "GET /health. Models: 'fusion' (Sample -> Fuse), 'best-of-n' (Sample -> Select) and "
                                "one per --tuned file. Offline on the embedded model unless --config says "
                                "otherwise.")  # fmt: skip
    serve.add_argument("--config", type=Path, help="YAML/TOML config (default: the embedded model for every role)")
    serve.add_argument("--tuned", action="append", metavar="[NAME=]PATH",
                       help="a tuned.json from optimize, served as model NAME (default: the file's stem); repeatable")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a key)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes, each with its own backends and "
                       "--max-concurrency (default 1)")  # fmt: skip
    ServeOptions.add_arguments(serve)
    serve.set_defaults(handler=_commands.serve)
    return parser


def main(argv: list[str] | None = None, ends_process: bool = False) -> int:
    """Run one ``fusion-dspy`` command; its exit code. Its process is set up for it (``CommandProcess``) until it
    returns: called in-process, it leaves nothing changed behind. ``ends_process``: the process ends with it."""
    args = build_parser().parse_args(argv)
    from fusion_dspy.process import CommandProcess  # after parsing: `--help` imports no model library

    with CommandProcess(verbose=args.verbose, ends_process=ends_process) as process:
        try:
            return args.handler(args)
        except (FusionDSPyError, ValueError, FileNotFoundError) as error:
            print(f"error: {process.mask(str(error))}", file=sys.stderr)  # plain, unwrapped: paths stay greppable
            return 2
        except KeyboardInterrupt as stop:
            if args.command in ("demo", "serve"):
                print("\nInterrupted.", file=sys.stderr)
                return INTERRUPTED
            print(f"\nInterrupted: everything finished so far is saved in {_saved_in(args)}. Run the same command "
                  "again to continue; it skips what is done.", file=sys.stderr, flush=True)  # fmt: skip
            if getattr(stop, "abandoned", 0):  # worker threads still wait on their requests: do not wait for them
                sys.stdout.flush()
                os._exit(INTERRUPTED)
            return INTERRUPTED


def program() -> None:
    """The ``fusion-dspy`` program (and ``python -m fusion_dspy.cli``): ``main`` in a process that ends with it."""
    sys.exit(main(ends_process=True))


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def _saved_in(args: argparse.Namespace) -> str:
    if args.command == "eval":
        return str(Path(args.output_dir) / "results.jsonl")
    if args.command == "optimize":
        return f"the study ({args.storage}) and the candidate store ({args.cache_dir})"
    return str(args.output)


if __name__ == "__main__":
    program()

"""The ``fusion-dspy`` command: ``demo`` (the main job, offline on the embedded model) and ``run`` (a batch)."""

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

from fusion_dspy.errors import FusionDSPyError


def _demo(args: argparse.Namespace) -> int:
    from fusion_dspy.config import read_config
    from fusion_dspy.demo import run_demo

    rows = run_demo(read_config(args.config), n=args.n, prompts=args.prompt or None)
    return 1 if all(row.error for row in rows) else 0


def _run(args: argparse.Namespace) -> int:
    from dspy.signatures.signature import ensure_signature

    from fusion_dspy.backends import Backends
    from fusion_dspy.batch import read_jsonl, run_batch
    from fusion_dspy.config import read_config

    signature = ensure_signature(args.signature)
    fields = list(signature.input_fields)
    if args.input is not None:
        items = [{fields[0]: args.input}]
    elif args.inputs is not None:
        items = list(read_jsonl(args.inputs))
    else:
        raise FusionDSPyError("Give --input TEXT (one input) or --inputs FILE.jsonl (one JSON object per line).")
    backends = Backends(read_config(args.config))
    backends.check()
    overrides = {"n": args.n} if args.n else {}
    program = backends.program(signature, method=args.method, **overrides)
    counts = run_batch(program, items, args.output, fields, show_progress=not args.quiet)
    Console(stderr=True).print(f"{args.output}: {counts['done']} done, {counts['failed']} failed, "
                               f"{counts['skipped']} already there")  # fmt: skip
    return 1 if counts["failed"] and not counts["done"] else 0


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
    demo.add_argument("--n", type=int, default=3, help="candidates per prompt (default 3)")
    demo.add_argument("--prompt", action="append", help="a prompt of your own (repeatable) instead of the built-ins")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="run FusionOfN/BestOfN over one input or a JSONL file",
                              description="Runs each input through the program of the config and appends one JSON "
                              "line per input to --output. Rerunning skips inputs already written.")  # fmt: skip
    run.add_argument("--config", type=Path, help="YAML/TOML config (default: the embedded model for every role)")
    run.add_argument("--signature", default="question -> answer", help='task signature (default "question -> answer")')
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="one input: the value of the signature's first input field")
    source.add_argument("--inputs", type=Path, help="JSONL file, one object of input fields (and optional id) a line")
    run.add_argument("--output", type=Path, default=Path("results.jsonl"), help="JSONL results (default results.jsonl)")
    run.add_argument("--method", choices=["fuse", "select"], help="override the config's fusion.method")
    run.add_argument("--n", type=int, help="override the config's fusion.n")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except (FusionDSPyError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)  # plain, unwrapped: paths and fields stay greppable
        return 2


if __name__ == "__main__":
    sys.exit(main())

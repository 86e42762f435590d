"""The ``fusion-dspy`` command: ``demo`` (the main job, offline on the embedded model), ``run`` (a batch),
``optimize``, ``eval``, ``synth`` and ``serve`` (fusion programs as OpenAI-compatible models)."""

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from fusion_dspy.errors import FusionDSPyError


def _demo(args: argparse.Namespace) -> int:
    from fusion_dspy.backends.config import read_config
    from fusion_dspy.workflows.demo import run_demo

    rows = run_demo(read_config(args.config), n=args.n, prompts=args.prompt or None)
    return 1 if all(row.error for row in rows) else 0


def _run(args: argparse.Namespace) -> int:
    from dspy.signatures.signature import ensure_signature

    from fusion_dspy.backends import Backends
    from fusion_dspy.backends.config import read_config
    from fusion_dspy.workflows.batch import run_batch
    from fusion_dspy.workflows.items import read_items

    signature = ensure_signature(args.signature)
    fields = list(signature.input_fields)
    if args.input is not None:  # named by its text: another --input into the same --output is a new item
        digest = hashlib.sha256(args.input.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        items = [{"id": f"input-{digest}", fields[0]: args.input}]
    elif args.inputs is not None:
        items = read_items(args.inputs)
    else:
        raise FusionDSPyError("Give --input TEXT (one input) or --inputs FILE.jsonl (one JSON object per line).")
    workers, engine = _workers(args), _engine(args)
    backends = Backends(read_config(args.config))
    backends.check()
    _keep_no_history()
    overrides = {"n": args.n} if args.n else {}
    if engine or workers > 1:
        from fusion_dspy.workflows.ray_jobs import ConfigText, RunJob, run_on_ray
        from fusion_dspy.workflows.worker_jobs import run_on_workers

        job = RunJob(ConfigText.read(args.config), args.signature, args.method, args.n)
        counts = run_on_ray(job, items, args.output, fields, engine, show_progress=not args.quiet) if engine else \
            run_on_workers(job, items, args.output, fields, workers, args.concurrency, not args.quiet, args.verbose)
    else:
        program = backends.program(signature, method=args.method, **overrides)
        counts = run_batch(program, items, args.output, fields, show_progress=not args.quiet,
                           concurrency=args.concurrency)  # fmt: skip
    return _summary(args.output, counts, "done")


def _summary(output: str, counts: dict[str, int], verb: str) -> int:
    """The batch's last line (where its failures are, and how to retry them, only when some failed); its exit
    code: 1 when nothing at all succeeded."""
    from fusion_dspy.workflows.jsonl import errors_path

    failed = f"{counts['failed']} failed" + (f" (in {errors_path(output)}; rerun to retry)" if counts["failed"] else "")
    Console(stderr=True).print(f"{output}: {counts['done']} {verb}, {failed}, {counts['skipped']} already there")
    return 1 if counts["failed"] and not counts["done"] and not counts["skipped"] else 0


def _keep_no_history() -> None:
    from fusion_dspy.workflows.batch import keep_no_history  # imports DSPy: not for `--help`

    keep_no_history()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    engine = parser.add_argument_group("engine", "where the work runs (README, 'The Ray engine')")
    engine.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process (default); ray: a Ray Data pipeline over an actor pool "
                        "(pip install 'fusion-dspy[ray]')")  # fmt: skip
    engine.add_argument("--address", help="Ray cluster: 'auto' (the one this machine is part of) or "
                        "'ray://HEAD:10001' (default: a local Ray instance for this run)")  # fmt: skip
    engine.add_argument("--actors", type=int, default=2, help="Ray actors, one CPU each (default 2)")
    engine.add_argument("--in-flight", type=int, default=16, help="rows each Ray actor runs at once (default 16)")
    engine.add_argument("--workers", type=_positive, help="local engine: worker processes on this machine, each "
                        "building the program once and running its share of the items in flight (default 1: "
                        "this process)")  # fmt: skip


def _engine(args: argparse.Namespace):
    """The ``RayEngine`` of ``--engine ray``, or ``None`` for the local engine."""
    if args.engine == "local":
        if args.address:
            raise FusionDSPyError("--address is an option of the Ray engine: add --engine ray.")
        return None
    from fusion_dspy.workflows.ray_engine import RayEngine, require_ray

    require_ray()
    return RayEngine(address=args.address, actors=args.actors, in_flight=args.in_flight, verbose=args.verbose)


def _workers(args: argparse.Namespace) -> int:
    """The worker processes of ``--workers`` (1: the command's own process, as without the option)."""
    if args.workers is not None and args.engine == "ray":
        raise FusionDSPyError("--workers is an option of the local engine; with --engine ray, --actors sets the "
                              "worker processes and --in-flight the items each runs at once.")  # fmt: skip
    workers = args.workers or 1
    flag, in_flight = ("--threads", args.threads) if args.command == "eval" else ("--concurrency", args.concurrency)
    if workers > in_flight:
        raise FusionDSPyError(f"--workers {workers} shares {flag} {in_flight} between the workers, so some would "
                              f"idle: give {flag} {workers} or more (e.g. {flag} {16 * workers}).")  # fmt: skip
    return workers


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def _group_size(text: str) -> int | str | None:
    text = text.strip().lower()
    return None if text == "none" else text if text == "auto" else int(text)


def _optimize(args: argparse.Namespace) -> int:
    import optuna
    from rich.progress import Progress

    from fusion_dspy.backends import load_config
    from fusion_dspy.core.store import CandidateStore
    from fusion_dspy.optimizers import outages
    from fusion_dspy.optimizers.report import plot_study, trials_table
    from fusion_dspy.optimizers.search import FusionSearch, SearchSpace, completed_trials
    from fusion_dspy.workflows.task import resolve_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and final table say it better
    for handler in logging.getLogger("optuna").handlers:  # Ctrl-C: our one line, not optuna's trial traceback
        handler.addFilter(_quiet_trial_failures)
    task = resolve_task(args.program)
    devset = _examples(task, args)
    backends = load_config(args.config)
    backends.check()
    _keep_no_history()
    space = SearchSpace(n=args.n_values, temperatures=args.temperatures, methods=args.methods,
                        teachers=args.teachers, proposed_instructions=args.propose,
                        adaptive_thresholds=args.adaptive_thresholds or (), group_sizes=args.group_sizes,
                        layers=args.layers, permutations=args.permutations,
                        router=str(args.router) if args.router else None)  # fmt: skip
    search = FusionSearch(backends, task, devset, space=space, store=CandidateStore(args.cache_dir),
                          storage=args.storage, study_name=args.study, cost_objective=args.cost,
                          num_threads=args.threads, sampler=args.sampler)  # fmt: skip
    console = Console(stderr=True)

    def complete() -> int:
        return len(completed_trials(search.study))

    with Progress(console=console, disable=args.quiet) as progress:
        bar = progress.add_task(f"study {search.study.study_name}", total=args.trials, completed=complete())
        search.optimize(args.trials, timeout=args.timeout,
                        callbacks=[lambda study, trial: progress.update(bar, completed=complete())])  # fmt: skip
    failing = search.outages()  # an outage is not a score of 0: those trials failed, and a rerun retries them
    if failing and not complete():
        raise FusionDSPyError(f"No trial could be scored. {outages.summary(failing)}")
    best = search.best_params()
    console.print(trials_table(search.study, search.instructions, best))
    saved = search.save_best(args.output, program=args.program)
    plotted = plot_study(search.study, args.plot)
    console.print(f"best: {best} -> {saved} (load with fusion_dspy.optimizers.tuned.load_tuned); plot: {plotted}")
    if failing:
        console.print(f"incomplete: {outages.summary(failing)} The best above is of the trials scored.", markup=False)
        return 1
    return 0


def _quiet_trial_failures(record: logging.LogRecord) -> bool:
    """Optuna's log of a failed trial, without its traceback: none after Ctrl-C (our own line says it), and one
    line for a trial an outage stopped (``optimize`` sums those up at the end)."""
    from fusion_dspy.workflows.scoring import StageUnavailable

    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, StageUnavailable):
        record.exc_info, record.exc_text = None, None
    return not isinstance(error, KeyboardInterrupt)


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


def _examples(task, args) -> list:
    if args.devset:
        return task.read_examples(args.devset)
    if task.load is None:
        raise FusionDSPyError(f"The program '{task.name}' has no data of its own: pass --devset FILE.jsonl.")
    return task.load(args.split, args.size, args.seed)


def _eval(args: argparse.Namespace) -> int:
    from fusion_dspy.backends import load_config
    from fusion_dspy.workflows.evaluation import PairedEvaluation, check_earlier_results
    from fusion_dspy.workflows.jsonl import errors_path
    from fusion_dspy.workflows.reports import (
        plot_summary,
        position_bias,
        position_table,
        report_table,
        summarize,
        write_summary,  # fmt: skip
    )
    from fusion_dspy.workflows.task import resolve_task

    workers, engine = _workers(args), _engine(args)
    task = resolve_task(args.program)
    backends = load_config(args.config)
    backends.check()
    _keep_no_history()
    examples = _examples(task, args)
    check_earlier_results(args.output_dir, task, examples, args.router)
    if engine:
        from fusion_dspy.workflows.ray_jobs import ConfigText, EvalJob, evaluate_on_ray

        job = EvalJob.of(ConfigText.read(args.config), args.program, examples, args.n_values, args.output_dir,
                         args.router)  # fmt: skip
        records = evaluate_on_ray(job, engine, show_progress=not args.quiet)
    elif workers > 1:
        from fusion_dspy.workflows.ray_jobs import ConfigText, EvalJob
        from fusion_dspy.workflows.worker_jobs import evaluate_on_workers

        job = EvalJob.of(ConfigText.read(args.config), args.program, examples, args.n_values, args.output_dir,
                         args.router)  # fmt: skip
        records = evaluate_on_workers(job, workers, args.threads, not args.quiet, args.verbose)
    else:
        evaluation = PairedEvaluation(backends, task, examples, n_values=args.n_values,
                                      output_dir=args.output_dir, num_threads=args.threads,
                                      router=args.router)  # fmt: skip
        records = evaluation.run(show_progress=not args.quiet)
    errors = errors_path(Path(args.output_dir) / "results.jsonl")
    wanted = {f"{index}:{n}" for index in range(len(examples)) for n in set(args.n_values)}
    records = [record for record in records if str(record["id"]) in wanted]  # not an earlier run's other N
    if not records:
        raise FusionDSPyError(f"No example could be evaluated (see {errors}): check the backends, then rerun.")
    missing = len(wanted) - len(records)
    rows = summarize(records)
    models = ", ".join(dict.fromkeys(lm.model for lm in backends.generators))
    title = f"{task.name}: {len({r['example'] for r in records})} examples, generators {models}"
    console = Console()
    console.print(report_table(rows, title))
    if positions := position_bias(records):
        console.print(position_table(positions))
    json_path, csv_path = write_summary(rows, args.output_dir)
    plot = plot_summary(rows, Path(args.output_dir) / "quality.png", title)
    console.print(f"records: {Path(args.output_dir) / 'results.jsonl'} | summary: {json_path}, {csv_path} | "
                  f"plot: {plot}")
    if missing > 0:  # an outage is not a score of 0: those are left out of the table and retried by a rerun
        Console(stderr=True).print(f"incomplete: {missing} (example, N) results could not be scored because a "
                                   f"model was unavailable (see {errors}); rerun the same command to retry them.")
        return 1
    return 0


def _synth(args: argparse.Namespace) -> int:
    from fusion_dspy.backends import load_config
    from fusion_dspy.workflows.items import read_items
    from fusion_dspy.workflows.synth import synthesize
    from fusion_dspy.workflows.teachers import reachable_pool

    workers, engine = _workers(args), _engine(args)
    prompts = read_items(args.prompts)
    configured = load_config(args.config)
    backends = reachable_pool(configured, warn=Console(stderr=True).print)
    _keep_no_history()
    if engine or workers > 1:
        from fusion_dspy.workflows.ray_jobs import ConfigText, SynthJob, synthesize_on_ray
        from fusion_dspy.workflows.worker_jobs import synthesize_on_workers

        # The workers build the pool from the file: tell them which teachers reachable_pool kept.
        kept = None if backends is configured else tuple(t.model for t in backends.config.roles.teachers())
        job = SynthJob(ConfigText.read(args.config), args.signature, args.n, kept)
        counts = synthesize_on_ray(job, prompts, args.output, engine, not args.quiet) if engine else \
            synthesize_on_workers(job, prompts, args.output, workers, args.concurrency, not args.quiet, args.verbose)
    else:
        program = backends.program(args.signature, method="fuse", **({"n": args.n} if args.n else {}))
        counts = synthesize(program, prompts, args.output, concurrency=args.concurrency,
                            show_progress=not args.quiet)  # fmt: skip
    return _summary(args.output, counts, "written")


def _serve(args: argparse.Namespace) -> int:
    from fusion_dspy.serve.command import ServeOptions, serve_command

    options = ServeOptions(config=str(args.config) if args.config else None, tuned=tuple(args.tuned or ()),
                           api_key_env=args.api_key_env, max_concurrency=args.max_concurrency, timeout=args.timeout,
                           max_n=args.max_n, max_body_bytes=args.max_body_bytes)  # fmt: skip
    serve_command(options, host=args.host, port=args.port, workers=args.workers,
                  log_level="info" if args.verbose else "warning")  # fmt: skip
    return 0


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
    run.add_argument("--method", choices=["fuse", "select", "auto"], help="override the config's fusion.method")
    run.add_argument("--n", type=_positive, help="override the config's fusion.n")
    run.add_argument("--concurrency", type=int, default=1, help="inputs in flight at once (default 1)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine_arguments(run)
    run.set_defaults(handler=_run)

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
    optimize.set_defaults(handler=_optimize)

    evaluate = commands.add_parser("eval", help="single sample vs Best-of-N vs Fusion-of-N vs oracle, same candidates",
                                   description="Draws the largest N's candidates once per example, scores a single "
                                   "sample, Best-of-N, Fusion-of-N and the oracle (the best candidate by the metric) "
                                   "on them for every N, and reports means with bootstrap 95% intervals. Rerunning "
                                   "continues an interrupted evaluation.")  # fmt: skip
    _add_task_arguments(evaluate, split="test")
    evaluate.add_argument("--output-dir", type=Path, default=Path("eval"), help="records, summary, plot (eval/)")
    _add_engine_arguments(evaluate)
    evaluate.add_argument("--router", type=Path, help="a trained Router (JSON): also score Route (method auto)")
    evaluate.set_defaults(handler=_eval)

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
    synth.set_defaults(handler=_synth)

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
    serve.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the key clients must send "
                       "as 'Authorization: Bearer <key>'")  # fmt: skip
    serve.add_argument("--max-concurrency", type=int, default=64, help="requests in flight; more get 429 (default 64)")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds per request before 504 (default 600)")
    serve.add_argument("--max-n", type=int, default=16, help="most candidates a request may ask for (default 16)")
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body; more get 413")
    serve.add_argument("--workers", type=int, default=1, help="server processes, each with its own backends and "
                       "--max-concurrency (default 1)")  # fmt: skip
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fusion_dspy.workflows.batch import freeze_imports

    freeze_imports()  # this process is the command's: starts and exits ~2 s sooner
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    from fusion_dspy.backends.secrets import HELD, redact_logs

    redact_logs(HELD)  # no model's key in a log line, whatever an upstream error echoes
    if not args.verbose:
        from fusion_dspy.workflows.batch import quiet_dspy_logs

        quiet_dspy_logs()
    try:
        return args.handler(args)
    except (FusionDSPyError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)  # plain, unwrapped: paths and fields stay greppable
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


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def _saved_in(args: argparse.Namespace) -> str:
    if args.command == "eval":
        return str(Path(args.output_dir) / "results.jsonl")
    if args.command == "optimize":
        return f"the study ({args.storage}) and the candidate store ({args.cache_dir})"
    return str(args.output)


if __name__ == "__main__":
    sys.exit(main())

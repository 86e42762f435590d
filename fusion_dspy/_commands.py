"""What each ``fusion-dspy`` command does, given its parsed arguments (``cli.py`` parses them): one function per
command, plus what they share (the engine and worker options, the batch summary line). Each imports what it
needs when it runs (optuna, Ray, the server, the batch engines), so ``fusion-dspy --help`` stays quick."""

import argparse
import hashlib
import logging
import sys
from pathlib import Path

from fusion_dspy.errors import FusionDSPyError


def demo(args: argparse.Namespace) -> int:
    from fusion_dspy.backends.config import read_config
    from fusion_dspy.workflows.demo import run_demo

    rows = run_demo(read_config(args.config), n=args.n, prompts=args.prompt or None)
    return 1 if all(row.error for row in rows) else 0


def run(args: argparse.Namespace) -> int:
    from dspy.signatures.signature import ensure_signature

    from fusion_dspy.backends import Backends
    from fusion_dspy.backends.config import read_config
    from fusion_dspy.workflows.items import read_items
    from fusion_dspy.workflows.jobs import ConfigText, RunJob
    from fusion_dspy.workflows.runner import run_items

    signature = ensure_signature(args.signature)
    fields = list(signature.input_fields)
    if args.input is not None:  # named by its text: another --input into the same --output is a new item
        digest = hashlib.sha256(args.input.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        items = [{"id": f"input-{digest}", fields[0]: args.input}]
    elif args.inputs is not None:
        items = read_items(args.inputs)
    else:
        raise FusionDSPyError("Give --input TEXT (one input) or --inputs FILE.jsonl (one JSON object per line).")
    engine = engine_of(args)
    backends = Backends(read_config(args.config))
    backends.check()
    keep_no_history()
    job = RunJob(ConfigText.read(args.config), args.signature, args.method, args.n)
    counts = run_items(job, items, fields, args.output, engine, show_progress=not args.quiet)
    return summary(args.output, counts, "done")


def summary(output: str, counts: dict[str, int], verb: str) -> int:
    """The batch's last line (where its failures are, and how to retry them, only when some failed); its exit
    code: 1 when nothing at all succeeded."""
    from fusion_dspy.workflows.jsonl import errors_path

    failed = f"{counts['failed']} failed" + (f" (in {errors_path(output)}; rerun to retry)" if counts["failed"] else "")
    print(f"{output}: {counts['done']} {verb}, {failed}, {counts['skipped']} already there", file=sys.stderr)
    return 1 if counts["failed"] and not counts["done"] and not counts["skipped"] else 0


def keep_no_history() -> None:
    from fusion_dspy.process import CommandProcess  # imports DSPy: not for `--help`

    CommandProcess.current().keep_no_history()  # until the command's process is left


def engine_of(args: argparse.Namespace):
    """The one place a batch command's engine is chosen from its flags: ``RayEngine`` (``--engine ray``),
    ``WorkerEngine`` (``--workers K``, K > 1) or ``LocalEngine`` (this process), each as wide as the flags say."""
    if args.workers is not None and args.engine == "ray":
        raise FusionDSPyError("--workers is an option of the local engine; with --engine ray, --actors sets the "
                              "worker processes and --in-flight the items each runs at once.")  # fmt: skip
    workers = args.workers or 1
    flag, in_flight = ("--threads", args.threads) if args.command == "eval" else ("--concurrency", args.concurrency)
    if workers > in_flight:
        raise FusionDSPyError(f"--workers {workers} shares {flag} {in_flight} between the workers, so some would "
                              f"idle: give {flag} {workers} or more (e.g. {flag} {16 * workers}).")  # fmt: skip
    if args.engine == "local":
        given = [flag for flag, value in (("--address", args.address), ("--actors", args.actors),
                                          ("--in-flight", args.in_flight)) if value is not None]  # fmt: skip
        if given:
            raise FusionDSPyError(f"{' and '.join(given)}: options of the Ray engine; add --engine ray (on this "
                                  "machine alone, --workers and --concurrency set the processes and the items in "
                                  "flight).")  # fmt: skip
        if workers > 1:
            from fusion_dspy.workflows.worker_engine import WorkerEngine

            return WorkerEngine(workers, in_flight, verbose=args.verbose)
        from fusion_dspy.workflows.local_engine import LocalEngine

        return LocalEngine(in_flight)
    from fusion_dspy.workflows.ray_engine import RayEngine, require_ray

    require_ray()
    return RayEngine(address=args.address, actors=args.actors or 2, in_flight=args.in_flight or 16,
                     verbose=args.verbose)  # fmt: skip


def optimize(args: argparse.Namespace) -> int:
    import optuna
    from rich.console import Console
    from rich.progress import Progress

    from fusion_dspy.backends import load_config
    from fusion_dspy.core.store import CandidateStore
    from fusion_dspy.optimizers import outages
    from fusion_dspy.optimizers.report import plot_study, trials_table
    from fusion_dspy.optimizers.search import FusionSearch, SearchSpace, completed_trials
    from fusion_dspy.workflows.task import resolve_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and final table say it better
    for handler in logging.getLogger("optuna").handlers:  # Ctrl-C: our one line, not optuna's trial traceback
        handler.addFilter(quiet_trial_failures)
    task = resolve_task(args.program)
    devset = devset_of(task, args)
    backends = load_config(args.config)
    backends.check()
    keep_no_history()
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


def quiet_trial_failures(record: logging.LogRecord) -> bool:
    """Optuna's log of a failed trial, without its traceback: none after Ctrl-C (our own line says it), and one
    line for a trial an outage stopped (``optimize`` sums those up at the end)."""
    from fusion_dspy.workflows.scoring import StageUnavailable

    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, StageUnavailable):
        record.exc_info, record.exc_text = None, None
    return not isinstance(error, KeyboardInterrupt)


def devset_of(task, args) -> list:
    if args.devset:
        return task.read_examples(args.devset)
    if task.load is None:
        raise FusionDSPyError(f"The program '{task.name}' has no data of its own: pass --devset FILE.jsonl.")
    return task.load(args.split, args.size, args.seed)


def evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fusion_dspy.backends import load_config
    from fusion_dspy.workflows.evaluation import check_earlier_results
    from fusion_dspy.workflows.jobs import ConfigText, EvalJob
    from fusion_dspy.workflows.jsonl import errors_path
    from fusion_dspy.workflows.reports import (
        plot_summary,
        position_bias,
        position_table,
        report_table,
        summarize,
        write_summary,  # fmt: skip
    )
    from fusion_dspy.workflows.runner import run_examples
    from fusion_dspy.workflows.task import resolve_task

    engine = engine_of(args)
    task = resolve_task(args.program)
    backends = load_config(args.config)
    backends.check()
    keep_no_history()
    examples = devset_of(task, args)
    check_earlier_results(args.output_dir, task, examples, args.router)
    job = EvalJob.of(ConfigText.read(args.config), args.program, examples, args.n_values, args.output_dir,
                     args.router)  # fmt: skip
    records = run_examples(job, job.todo, job.output_dir, engine, show_progress=not args.quiet)
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


def synth(args: argparse.Namespace) -> int:
    from dspy.signatures.signature import ensure_signature
    from rich.console import Console

    from fusion_dspy.backends import load_config
    from fusion_dspy.workflows.items import read_items
    from fusion_dspy.workflows.jobs import ConfigText, SynthJob
    from fusion_dspy.workflows.runner import run_items
    from fusion_dspy.workflows.teachers import reachable_pool

    engine = engine_of(args)
    prompts = read_items(args.prompts)
    configured = load_config(args.config)
    backends = reachable_pool(configured, warn=Console(stderr=True).print)
    keep_no_history()
    # The job builds the pool from the file (in each worker): tell it which teachers reachable_pool kept.
    kept = None if backends is configured else tuple(t.model for t in backends.config.roles.teachers())
    job = SynthJob(ConfigText.read(args.config), args.signature, args.n, kept)
    fields = list(ensure_signature(args.signature).input_fields)
    counts = run_items(job, prompts, fields, args.output, engine, show_progress=not args.quiet)
    return summary(args.output, counts, "written")


def serve(args: argparse.Namespace) -> int:
    from fusion_dspy.serve.command import ServeOptions, serve_command

    options = ServeOptions.of(args)
    serve_command(options, host=args.host, port=args.port, workers=args.workers,
                  log_level="info" if args.verbose else "warning")  # fmt: skip
    return 0

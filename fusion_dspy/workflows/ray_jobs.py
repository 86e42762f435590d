"""``run``, ``synth`` and ``eval`` on the Ray engine: what each actor builds, and what the driver writes.

Each job is a small picklable spec: the config's text (not its LMs, which hold keys) and the command's options.
An actor builds the same program the local engine builds and turns one row into the same records
(``result_record``, ``training_record``, the paired evaluation's records); the driver writes them through the
same ``ResultsLog`` files, so a run may be resumed by either engine.

Candidate reuse across workers (``eval``): every actor opens the ``CandidateStore`` at one absolute path,
``<output-dir>/candidates``. diskcache is process-safe, so the actors of one machine share it and a rerun draws
nothing twice; across machines that path must be a filesystem with working SQLite locks (not every network
filesystem has them). Without one, each node keeps its own store there: results stay correct (keys are
content-addressed), only the reuse is per node.
"""

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import ensure_signature

from fusion_dspy.backends import Backends, load_config, read_config
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.workflows.batch import error_record, result_record
from fusion_dspy.workflows.evaluation import PairedEvaluation, unscored_records
from fusion_dspy.workflows.items import prepare
from fusion_dspy.workflows.jsonl import ResultsLog, errors_path
from fusion_dspy.workflows.progress import progress_bar
from fusion_dspy.workflows.ray_engine import Outcome, RayEngine
from fusion_dspy.workflows.runner import InputProblem, check_sendable
from fusion_dspy.workflows.synth import training_record
from fusion_dspy.workflows.task import MetricError, resolve_task
from fusion_dspy.workflows.teachers import keep_teachers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigText:
    """A config file as it travels to the workers: its name (for error messages) and its text; ``None``: embedded."""

    name: str | None = None
    text: str | None = None

    @classmethod
    def read(cls, path: str | Path | None) -> "ConfigText":
        return cls() if path is None else cls(str(path), Path(path).read_text())

    def backends(self) -> Backends:
        """The config's ``Backends``, validated as ``read_config`` does; keys come from this process's environment."""
        if self.text is None:
            return load_config(None)
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / Path(self.name).name  # same suffix: .yaml / .toml decides the parser
            copy.write_text(self.text)
            config = read_config(copy)
        config._source = Path(self.name)  # messages name the user's file, not the copy
        return Backends(config)


def _rows(todo: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
    return [{"id": item_id, "data": json.dumps(data, ensure_ascii=False)} for item_id, data in todo]


def _vetted_rows(items: Iterable[dict[str, Any]], fields: list[str], log: ResultsLog,
                 errors: ResultsLog) -> tuple[list[dict[str, str]], int, int]:  # fmt: skip
    """The rows still to do, the items already done, and those refused: an item whose inputs cannot be sent
    (missing or null field, broken Unicode) goes to the errors file at once, as on the local engine."""
    prepared = prepare(items, fields)
    todo, refused = [], 0
    for item in prepared:
        if item.id in log.done:
            continue
        try:
            check_sendable(item)
        except InputProblem as error:
            logger.warning("Item %s failed: %s: %s", item.id, type(error).__name__, error)
            errors.write(error_record(item.id, item.inputs, error))
            refused += 1
        else:
            todo.append((item.id, item.inputs))
    return _rows(todo), len(prepared) - len(todo) - refused, refused


def _drain(engine: RayEngine, job: Any, rows: list, logs: dict[str, ResultsLog], label: str,
           show_progress: bool) -> Iterator[Outcome]:  # fmt: skip
    """Write every outcome's records as it arrives (each id once), then yield it (kept by nobody: a run may
    have millions)."""
    written = set()
    with progress_bar(disable=not show_progress) as progress:
        bar = progress.add_task(label, total=len(rows))
        for outcome in engine.map(job, rows):
            for name, records in (("results", outcome.results), ("errors", outcome.errors)):
                for record in records:
                    if (name, str(record["id"])) not in written:  # a retried block's row that reached us twice
                        written.add((name, str(record["id"])))
                        logs[name].write(record)
            if outcome.warning:
                logger.warning(outcome.warning)
            progress.advance(bar)
            yield outcome


@dataclass(frozen=True)
class RunJob:
    """``fusion-dspy run``: the config's FusionOfN/BestOfN over ``signature``; one result or error record per item."""

    config: ConfigText
    signature: str = "question -> answer"
    method: str | None = None
    n: int | None = None

    def build(self):
        overrides = {"n": self.n} if self.n else {}
        program = self.config.backends().program(self.signature, method=self.method, **overrides)

        async def one(item_id: str, inputs: dict[str, Any]) -> Outcome:
            try:
                return Outcome(results=[result_record(item_id, inputs, await program.acall(**inputs))])
            except Exception as error:  # noqa: BLE001 - one bad item must not end the batch
                logger.warning("Item %s failed: %s: %s", item_id, type(error).__name__, error)
                return Outcome(errors=[error_record(item_id, inputs, error)])  # as locally: retried by a rerun

        return one


def run_on_ray(job: RunJob, items: Iterable[dict[str, Any]], output: str | Path, input_fields: list[str],
               engine: RayEngine, show_progress: bool = True) -> dict[str, int]:  # fmt: skip
    """``run_batch`` on the Ray engine: same file, same records; counts of ``done``, ``failed``, ``skipped``.

    Example:
        >>> job = RunJob(ConfigText.read(stub_config), "question -> answer")  # the config travels as text
        >>> job.config.text.startswith("{models:")                              # then, on a cluster:
        True
        >>> # run_on_ray(job, read_jsonl("in.jsonl"), "out.jsonl", ["question"], RayEngine(address="auto"))
    """
    with ResultsLog(output) as log, ResultsLog(errors_path(output), exclusive=False) as errors:
        rows, skipped, refused = _vetted_rows(items, input_fields, log, errors)
        failed = [bool(outcome.errors) for outcome in _drain(engine, job, rows, {"results": log, "errors": errors},
                                                              f"run (ray) -> {log.path.name}", show_progress)]
    return {"done": failed.count(False), "failed": failed.count(True) + refused, "skipped": skipped}


@dataclass(frozen=True)
class SynthJob:
    """``fusion-dspy synth``: the config's teacher pool fused into one chat training example per prompt.

    ``teachers``: the models of the pool to keep (``None``: all), as ``reachable_pool`` left it in the driver.
    """

    config: ConfigText
    signature: str = "prompt -> response"
    n: int | None = None
    teachers: tuple[str, ...] | None = None

    def build(self):
        backends = self.config.backends()
        if self.teachers is not None:
            backends = keep_teachers(backends, self.teachers)
        program = backends.program(self.signature, method="fuse", **({"n": self.n} if self.n else {}))

        async def one(item_id: str, inputs: dict[str, Any]) -> Outcome:
            try:
                return Outcome(results=[training_record(item_id, inputs, await program.acall(**inputs), program)])
            except Exception as error:  # noqa: BLE001 - recorded; the next run tries this prompt again
                logger.warning("Prompt %s failed: %s: %s", item_id, type(error).__name__, error)
                return Outcome(errors=[error_record(item_id, inputs, error)])

        return one


def synthesize_on_ray(job: SynthJob, prompts: Iterable[dict[str, Any]], output: str | Path, engine: RayEngine,
                      show_progress: bool = True) -> dict[str, int]:  # fmt: skip
    """``synthesize`` on the Ray engine: same training file and ``<output>.errors.jsonl``; same counts."""
    fields = list(ensure_signature(job.signature).input_fields)
    with ResultsLog(output) as log, ResultsLog(errors_path(output), exclusive=False) as errors:
        rows, skipped, refused = _vetted_rows(prompts, fields, log, errors)
        written = [bool(outcome.results) for outcome in _drain(
            engine, job, rows, {"results": log, "errors": errors}, f"synthesizing (ray) -> {log.path.name}",
            show_progress)]  # fmt: skip
    return {"done": written.count(True), "failed": written.count(False) + refused, "skipped": skipped}


class _Collected:
    """Stands in for the results log inside an actor: which records exist, and the new ones to send back."""

    def __init__(self, done: set[str]):
        self.done, self.records = done, []

    def write(self, record: dict[str, Any]) -> None:
        self.done.add(str(record["id"]))
        self.records.append(record)


@dataclass(frozen=True)
class EvalJob:
    """``fusion-dspy eval``: the paired evaluation, one example (all its missing N) per row.

    Args:
        examples: Each example as ``(fields, input_keys)``.
        store: Absolute path of the ``CandidateStore`` every actor shares.
        router: Absolute path of a trained ``Router`` whose ``route`` is scored too (``None``: none).

    Each row's outcome holds its records and, as the local engine writes to ``results.errors.jsonl``, an error
    record per (example, N) whose fusor or judge was unavailable and one for an example that failed outright.
    """

    config: ConfigText
    program: str
    examples: tuple[tuple[dict[str, Any], tuple[str, ...]], ...]
    n_values: tuple[int, ...]
    output_dir: str
    store: str
    router: str | None = None

    @classmethod
    def of(cls, config: ConfigText, program: str, examples: list[dspy.Example], n_values: Iterable[int],
           output_dir: str | Path, router: str | Path | None = None) -> "EvalJob":  # fmt: skip
        output_dir = Path(output_dir).resolve()
        return cls(config, program, tuple((dict(e.toDict()), tuple(e.inputs().keys())) for e in examples),
                   tuple(sorted(set(n_values))), str(output_dir), str(output_dir / "candidates"),
                   None if router is None else str(Path(router).resolve()))  # fmt: skip

    def todo(self, done: set[str]) -> list[tuple[str, list[int]]]:
        """``(example index, the N it lacks)`` for every example with an N not in ``done`` (a results log's)."""
        return [(str(index), missing) for index in range(len(self.examples))
                if (missing := [n for n in self.n_values if f"{index}:{n}" not in done])]  # fmt: skip

    def evaluation(self):
        examples = [dspy.Example(**fields).with_inputs(*keys) for fields, keys in self.examples]
        return PairedEvaluation(self.config.backends(), resolve_task(self.program), examples, self.n_values,
                                self.output_dir, store=CandidateStore(self.store), router=self.router)

    def build(self):
        evaluation = self.evaluation()

        async def one(item_id: str, todo: list[int]) -> Outcome:
            index = int(item_id)
            collected = _Collected({f"{index}:{n}" for n in self.n_values if n not in todo})
            failures = _Collected(set())
            try:
                await evaluation.aevaluate_example(index, collected, failures)
            except MetricError as error:
                return Outcome(results=collected.records, errors=failures.records, fatal=str(error))
            except Exception as error:  # noqa: BLE001 - e.g. every sample failed: left for a rerun
                text = f"{type(error).__name__}: {error}"
                missing = unscored_records(index, [n for n in todo if f"{index}:{n}" not in collected.done], error)
                return Outcome(results=collected.records, errors=[*failures.records, *missing],
                               warning=f"Example {index} could not be scored: {text}")  # fmt: skip
            return Outcome(results=collected.records, errors=failures.records)

        return one


def evaluate_on_ray(job: EvalJob, engine: RayEngine, show_progress: bool = True) -> list[dict[str, Any]]:
    """``PairedEvaluation.run`` on the Ray engine: the same ``results.jsonl`` and ``results.errors.jsonl``;
    returns every record."""
    results = Path(job.output_dir) / "results.jsonl"
    with ResultsLog(results) as log, ResultsLog(errors_path(results), exclusive=False) as errors:
        fatal = [outcome.fatal for outcome in _drain(engine, job, _rows(job.todo(log.done)),
                                                     {"results": log, "errors": errors}, "paired evaluation (ray)",
                                                     show_progress) if outcome.fatal]  # fmt: skip
        if fatal:
            raise MetricError(fatal[0])
        return log.records()

"""The jobs of ``run``, ``synth`` and ``eval``, as every engine runs them: small picklable specs, built where they run.

A job carries the config's text (not its LMs, which hold keys: each process reads the key variables the config
names from its own environment) and the command's options. ``build()`` makes the same program the library
functions take (``run_batch``, ``synthesize``, ``PairedEvaluation``) and returns their per-row steps
(``batch.run_steps``, ``synth.synth_steps``, ``PairedEvaluation.row``): the same records on every engine.

Candidate reuse across processes (``eval``): every process opens the ``CandidateStore`` at one absolute path,
``<output-dir>/candidates``. diskcache is process-safe, so the workers of one machine share it and a rerun draws
nothing twice; across machines that path must be a filesystem with working SQLite locks (not every network
filesystem has them). Without one, each node keeps its own store there: results stay correct (keys are
content-addressed), only the reuse is per node.
"""

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dspy

from fusion_dspy.backends import Backends, load_config, read_config
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.workflows.batch import item_failed, run_steps
from fusion_dspy.workflows.engine import Outcome, RowSteps
from fusion_dspy.workflows.evaluation import PairedEvaluation, example_failed, missing_rows
from fusion_dspy.workflows.synth import synth_steps
from fusion_dspy.workflows.task import resolve_task
from fusion_dspy.workflows.teachers import keep_teachers


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


@dataclass(frozen=True)
class RunJob:
    """``fusion-dspy run``: the config's FusionOfN/BestOfN over ``signature``; one result or error record per item.

    Example:
        >>> job = RunJob(ConfigText.read(stub_config), "question -> answer")   # the config travels as text
        >>> from fusion_dspy.workflows.local_engine import LocalEngine           # or WorkerEngine, RayEngine
        >>> from fusion_dspy.workflows.runner import run_items
        >>> run_items(job, [{"question": "2+2?"}], ["question"], tmp_path / "out.jsonl", LocalEngine(),
        ...           show_progress=False)
        {'done': 1, 'failed': 0, 'skipped': 0}
    """

    config: ConfigText
    signature: str = "question -> answer"
    method: str | None = None
    n: int | None = None
    label: ClassVar[str] = "run"

    def build(self) -> RowSteps:
        overrides = {"n": self.n} if self.n else {}
        return run_steps(self.config.backends().program(self.signature, method=self.method, **overrides))

    def failed(self, item_id: str, inputs: dict[str, Any], error: Exception) -> Outcome:
        return item_failed(item_id, inputs, error)  # as for any failed item: in the errors file, retried by a rerun


@dataclass(frozen=True)
class SynthJob:
    """``fusion-dspy synth``: the config's teacher pool fused into one chat training example per prompt.

    ``teachers``: the models of the pool to keep (``None``: all), as ``reachable_pool`` left it in the driver.
    """

    config: ConfigText
    signature: str = "prompt -> response"
    n: int | None = None
    teachers: tuple[str, ...] | None = None
    label: ClassVar[str] = "synthesizing"

    def build(self) -> RowSteps:
        backends = self.config.backends()
        if self.teachers is not None:
            backends = keep_teachers(backends, self.teachers)
        return synth_steps(backends.program(self.signature, method="fuse", **({"n": self.n} if self.n else {})))

    def failed(self, item_id: str, inputs: dict[str, Any], error: Exception) -> Outcome:
        return item_failed(item_id, inputs, error)


@dataclass(frozen=True)
class EvalJob:
    """``fusion-dspy eval``: the paired evaluation, one example (all its missing N) per row.

    Args:
        examples: Each example as ``(fields, input_keys)``.
        store: Absolute path of the ``CandidateStore`` every process shares.
        router: Absolute path of a trained ``Router`` whose ``route`` is scored too (``None``: none).

    Each row's outcome holds its records and, as ``PairedEvaluation.run`` writes to ``results.errors.jsonl``, an
    error record per (example, N) whose fusor or judge was unavailable and one for an example that failed outright.
    """

    config: ConfigText
    program: str
    examples: tuple[tuple[dict[str, Any], tuple[str, ...]], ...]
    n_values: tuple[int, ...]
    output_dir: str
    store: str
    router: str | None = None
    label: ClassVar[str] = "paired evaluation"

    @classmethod
    def of(cls, config: ConfigText, program: str, examples: list[dspy.Example], n_values: Iterable[int],
           output_dir: str | Path, router: str | Path | None = None) -> "EvalJob":  # fmt: skip
        output_dir = Path(output_dir).resolve()
        return cls(config, program, tuple((dict(e.toDict()), tuple(e.inputs().keys())) for e in examples),
                   tuple(sorted(set(n_values))), str(output_dir), str(output_dir / "candidates"),
                   None if router is None else str(Path(router).resolve()))  # fmt: skip

    def todo(self, done: set[str]) -> list[tuple[str, list[int]]]:
        """``(example index, the N it lacks)`` for every example with an N not in ``done`` (a results log's)."""
        return missing_rows(len(self.examples), self.n_values, done)

    def evaluation(self) -> PairedEvaluation:
        examples = [dspy.Example(**fields).with_inputs(*keys) for fields, keys in self.examples]
        return PairedEvaluation(self.config.backends(), resolve_task(self.program), examples, self.n_values,
                                self.output_dir, store=CandidateStore(self.store), router=self.router)

    def build(self) -> RowSteps:
        return self.evaluation().row

    def failed(self, item_id: str, todo: list[int], error: Exception) -> Outcome:
        return example_failed(item_id, todo, error)

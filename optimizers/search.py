"""FusionSearch: optuna search over how Fusion-of-N spends N samples, scored by a metric on a dev set.

Searched: N, the sampling temperature, fuse vs select, the fusor instruction and, for teacher pools, which
teachers take part. Candidates come from a ``CandidateStore``, so a trial with N=2 reuses what a trial with N=8
drew and a resumed or repeated study samples nothing again. The study lives in optuna storage (a SQLite file by
default, any RDB URL for many workers, or a journal file: ``optimizers/storage.py``): kill it, rerun the same
command, and it goes on where it stopped.
"""

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from fusion_dspy.backends import Backends
from fusion_dspy.core.best_of_n import BestOfN
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.optimizers.context import check_context_window
from fusion_dspy.optimizers.instructions import builtin_instructions, propose_instructions
from fusion_dspy.optimizers.outages import failing_on_outages, record_outage
from fusion_dspy.optimizers.space import DEFAULTS, STRUCTURES, SearchSpace, teacher_subsets
from fusion_dspy.optimizers.storage import open_storage
from fusion_dspy.optimizers.tuned import save_tuned, tuned_adaptive
from fusion_dspy.workflows.scoring import StageUnavailable, score_examples, score_stage
from fusion_dspy.workflows.task import Task

logger = logging.getLogger(__name__)


class FusionSearch:
    """Tunes N, temperature, fuse-vs-select, the fusor instruction and the teacher pool with optuna.

    Args:
        backends: The config's role LMs (``fusion_dspy.load_config(path)``).
        task: The task: signature, generator module and metric.
        devset: Examples to score each configuration on.
        space: What to search.
        store: Where candidates are kept (default: a ``CandidateStore`` in ``.fusion_dspy_cache/candidates``).
        storage: Optuna storage URL; a SQLite file by default, any RDB URL for many workers, or
            ``journal:PATH`` (a path ending in ``.log`` also works) for optuna's journal file.
        study_name: Name of the study in the storage; the same name resumes it.
        cost_objective: Also minimize tokens per example (a Pareto front of score and cost).
        num_threads: Dev examples evaluated at once.
        sampler: ``"tpe"`` (optuna's default, for large spaces) or ``"grid"`` (every configuration once).
        seed: Seed of the TPE sampler.

    Example:
        >>> search = FusionSearch(backends, task, devset, space=SearchSpace(n=(1, 2), methods=("select",)),
        ...                       storage=f"sqlite:///{tmp_path}/study.db", sampler="grid")
        >>> study = search.optimize(n_trials=2)
        >>> sorted(search.best_params())
        ['instruction', 'method', 'n', 'temperature']
    """

    def __init__(self, backends: Backends, task: Task, devset: list[dspy.Example], space: SearchSpace | None = None,
                 store: CandidateStore | None = None, storage: str = "sqlite:///fusion_study.db",
                 study_name: str | None = None, cost_objective: bool = False, num_threads: int = 4,
                 sampler: str = "tpe", seed: int = 0):
        if not devset:
            raise FusionDSPyError("The dev set is empty: give at least one example to score configurations on.")
        self.backends, self.task, self.devset = backends, task, list(devset)
        self.space = space or SearchSpace()
        self.store = store if store is not None else CandidateStore()  # an empty store is falsy
        self.cost_objective, self.num_threads = cost_objective, num_threads
        unknown = set(self.space.methods) - {"fuse", "select", "auto"}
        if unknown or ("auto" in self.space.methods and not self.space.router):
            raise FusionDSPyError(f"Search methods are 'fuse', 'select' and 'auto' (unknown: {sorted(unknown)}); "
                                  "'auto' needs SearchSpace(router=path), a Router trained on eval's results.jsonl.")
        if tuple(self.space.group_sizes) == (None,):  # no group fusion searched: an unreadable N_max is refused
            check_context_window(backends, max(self.space.n), self.devset[0])
        directions = ["maximize", "minimize"] if cost_objective else ["maximize"]
        self.study = optuna.create_study(
            study_name=study_name or f"fusion-{task.name}",
            storage=open_storage(storage),
            directions=directions,
            load_if_exists=True,
        )
        self.instructions = self._instructions()
        self._check_resumable(len(directions))
        if sampler not in ("tpe", "grid"):
            raise ValueError(f"sampler must be 'tpe' or 'grid', got {sampler!r}.")
        # Set after the instructions are known: the grid needs their number.
        self.study.sampler = (optuna.samplers.GridSampler(self.grid(), seed=seed) if sampler == "grid"
                              else optuna.samplers.TPESampler(seed=seed))  # fmt: skip

    def _instructions(self) -> list[str]:
        """The fusor instructions of this study: fixed when it is created, so resumed runs and workers agree."""
        saved = self.study.user_attrs.get("instructions")
        if saved:
            return saved
        probe = self.backends.program(self.task.generator(), method="fuse")
        compare = "comparison" in probe.fuse.predict.signature.output_fields
        texts = list(builtin_instructions(compare).values())
        if self.space.proposed_instructions:
            texts += propose_instructions(self.backends.judge, self.task.signature, self.space.proposed_instructions,
                                          compare=compare)  # fmt: skip
        self.study.set_user_attr("instructions", texts)
        return texts

    def _check_resumable(self, objectives: int) -> None:
        """An existing study continues only with its objectives and choices: optuna cannot change them, and
        would fail each trial ("number of the values") or the run ("dynamic value space") mid-way."""
        name = self.study.study_name
        if len(self.study.directions) != objectives:
            had = "score and cost (--cost)" if len(self.study.directions) == 2 else "the score alone (no --cost)"
            raise FusionDSPyError(f"The study {name!r} optimizes {had}: run it as it was, or give another "
                                  "--study NAME for a new study.")  # fmt: skip
        grid = self.grid()
        for trial in self.study.get_trials(deepcopy=False):
            for param, distribution in trial.distributions.items():
                choices = list(getattr(distribution, "choices", ()))
                if param in grid and choices != grid[param]:
                    raise FusionDSPyError(f"The study {name!r} was run with {param} in {choices}; this run asks for "
                                          f"{grid[param]}. A study keeps its choices: ask for the same ones, or give "
                                          "another --study NAME for a new study.")  # fmt: skip

    def grid(self) -> dict[str, list]:
        """The whole search space, parameter by parameter."""
        grid = {"n": list(self.space.n), "temperature": list(self.space.temperatures),
                "method": list(self.space.methods), "instruction": list(range(len(self.instructions)))}  # fmt: skip
        if self.space.teachers:
            grid["teachers"] = teacher_subsets(self.space.teachers)
        if self.space.adaptive_thresholds:
            grid["adaptive"] = [0.0, *self.space.adaptive_thresholds]
        for param, field in STRUCTURES.items():
            values = list(getattr(self.space, field))
            if values != [DEFAULTS[param]]:
                grid[param] = values
        return grid

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: trial.suggest_categorical(name, values) for name, values in self.grid().items()}

    def build(self, params: dict[str, Any]) -> FusionOfN | BestOfN:
        """The program a set of trial parameters describes."""
        overrides: dict[str, Any] = {"n": params["n"], "temperature": params["temperature"], "store": self.store}
        if params.get("teachers"):
            overrides.update(self.backends.generator_options(params["teachers"].split("+")))
        if params.get("adaptive"):
            overrides["adaptive"] = tuned_adaptive(self.backends, params["adaptive"])
        if params["method"] in ("fuse", "auto"):
            overrides["instructions"] = self.instructions[params["instruction"]]
            overrides.update({param: params[param] for param in STRUCTURES if param in params})
        if params["method"] == "auto":
            overrides["router"] = self.space.router
        return self.backends.program(self.task.generator(), method=params["method"], **overrides)

    def evaluate(self, params: dict[str, Any]) -> tuple[float, float]:
        """Mean metric and mean tokens per example (every sample's and the fusor's, cached ones at their cost).

        An example whose sampling failed scores 0 and adds no cost. One whose fusor or judge is unavailable
        raises ``StageUnavailable`` (no further example starts): the configuration is not scored at all.
        """
        program = self.build(params)

        def run(index: int) -> tuple[float, int]:
            example = self.devset[index]
            pool = program.sample(**example.inputs())
            scored = score_stage(self.task, program, example, pool, f"dev example {index}")
            return scored.score, pool.tokens + scored.tokens

        results = score_examples(run, self.devset, self.num_threads, stop_on_outage=True)
        scores = [result[0] if result else 0.0 for result in results]
        costs = [result[1] for result in results if result]
        return sum(scores) / len(scores), (sum(costs) / len(costs) if costs else 0.0)

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        # Another worker may have created the study's instruction list first: everyone uses the stored one.
        self.instructions = self.study.user_attrs.get("instructions", self.instructions)
        params = self.suggest(trial)
        try:
            score, cost = self._already_scored(params) or self.evaluate(params)
        except StageUnavailable as outage:  # failed, not a 0 (optimizers/outages.py); the next run retries it
            record_outage(trial, outage)
            raise
        trial.set_user_attr("tokens_per_example", cost)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return (score, cost) if self.cost_objective else score

    def _already_scored(self, params: dict[str, Any]) -> tuple[float, float] | None:
        """TPE may propose a configuration again: reuse its result instead of paying the fusor twice."""
        key = canonical(params)
        for done in completed_trials(self.study):
            if canonical(done.params) == key:
                return done.values[0], done.user_attrs.get("tokens_per_example", 0.0)
        return None

    def optimize(self, n_trials: int, timeout: float | None = None, callbacks: Sequence = ()) -> optuna.Study:
        """Run until the study (all workers together) has ``n_trials`` complete trials.

        A trial a model outage stopped is failed (``outages()`` lists them) and the study goes on; the
        configurations of such trials are run again first, each once, when the study is next optimized.
        """
        stop_at_total = MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))
        ends = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if ends is None else max(0.0, ends - time.monotonic())

        for failed in self.outages():  # one optimize call each: a grid sampler stops a call once it is exhausted
            if len(completed_trials(self.study)) >= n_trials or left() == 0:
                break
            self.study.enqueue_trial(dict(failed.params))
            self.study.optimize(self.objective, n_trials=1, timeout=left(), catch=(StageUnavailable,),
                                callbacks=[stop_at_total, *callbacks])  # fmt: skip
        done = len(completed_trials(self.study))
        if done < n_trials and left() != 0:
            self.study.optimize(self.objective, n_trials=n_trials - done, timeout=left(),
                                catch=(StageUnavailable,), callbacks=[stop_at_total, *callbacks])  # fmt: skip
        return self.study

    def outages(self) -> list[optuna.trial.FrozenTrial]:
        """Trials a model outage stopped whose configuration no trial has scored since (the cause in
        ``user_attrs["outage"]``): what a rerun tries again."""
        return failing_on_outages(self.study, canonical)

    def best_params(self) -> dict[str, Any]:
        """The best trial's parameters: the highest score, then (with a cost objective) the fewest tokens."""
        complete = completed_trials(self.study)
        if not complete:
            raise FusionDSPyError("The study has no complete trial yet: run optimize() first.")
        best = min(complete, key=lambda t: (-t.values[0], t.user_attrs.get("tokens_per_example", 0.0), t.number))
        return dict(best.params)

    def best_program(self) -> FusionOfN | BestOfN:
        return self.build(self.best_params())

    def save_best(self, path: str | Path, program: str | None = None) -> Path:
        """Save the best configuration so that ``load_tuned(path, backends, module)`` rebuilds it.

        ``program`` (the ``--program`` spec of the task) is recorded so that ``fusion-dspy serve --tuned`` can
        rebuild the generator module the state belongs to.
        """
        params = self.best_params()
        settings = {key: params.get(key) for key in ("n", "temperature", "method", "teachers", "adaptive")}
        fusing = params["method"] in ("fuse", "auto")
        settings["instruction"] = self.instructions[params["instruction"]] if fusing else None
        settings.update({param: params.get(param, DEFAULTS[param]) for param in STRUCTURES if fusing})
        if program is not None:
            settings["program"] = program
        return save_tuned(self.best_program(), settings, path)


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials (of every worker), without copying them."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def canonical(params: dict[str, Any]) -> tuple:
    """Parameters that change the result: the instruction and fusion structures do not matter when selecting."""
    fusion_only = {"instruction", *STRUCTURES}
    relevant = {k: v for k, v in params.items() if not (k in fusion_only and params.get("method") == "select")}
    return tuple(sorted(relevant.items()))

"""PairedEvaluation: single sample, Best-of-N, Fusion-of-N and the oracle, scored on the *same* candidates.

For each example the largest N's candidates are drawn once (and kept in a ``CandidateStore``); every smaller N
uses their first N. Per example and N one record goes to ``results.jsonl`` as soon as it is scored, so an
interrupted evaluation picks up where it stopped. ``fusion_dspy.eval_report`` turns the records into a table
with bootstrap confidence intervals, CSV/JSON and plots.
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy

from fusion_dspy.backends import Backends
from fusion_dspy.batch import ResultsLog, progress_bar
from fusion_dspy.concurrency import run_concurrently
from fusion_dspy.meter import total_tokens
from fusion_dspy.select import Select
from fusion_dspy.store import CandidateStore
from fusion_dspy.task import MetricError, Task

logger = logging.getLogger(__name__)

METHODS = ("single", "bon", "fusion", "oracle")


class PairedEvaluation:
    """Compares the ways to spend N samples on one task, on shared candidates, for several N.

    Args:
        backends: The config's role LMs (``fusion_dspy.load_config(path)``); Best-of-N selects as the config's
            ``fusion.select`` says, unless ``reward_fn`` is given.
        task: Signature, generator module and metric.
        examples: The evaluation examples.
        n_values: The N to compare (the largest is drawn, the others reuse its first samples).
        output_dir: Where ``results.jsonl`` (resumable) is written.
        store: Candidate store (default: ``<output_dir>/candidates``).
        reward_fn: A ``reward_fn(inputs, prediction) -> float`` for Best-of-N (e.g. a reward model).
        num_threads: Examples evaluated at once.

    Example:
        >>> evaluation = PairedEvaluation(fd.load_config("configs/vllm.yaml"), task, devset, n_values=(1, 2, 4))
        >>> records = evaluation.run()
        >>> print_report(summarize(records))
    """

    def __init__(self, backends: Backends, task: Task, examples: Sequence[dspy.Example],
                 n_values: Sequence[int] = (1, 2, 4, 8), output_dir: str | Path = "eval",
                 store: CandidateStore | None = None, reward_fn: Callable | None = None, num_threads: int = 4):
        if not examples:
            raise ValueError("There are no examples to evaluate on.")
        self.backends, self.task, self.examples = backends, task, list(examples)
        self.n_values = sorted(set(n_values))
        self.output_dir = Path(output_dir)
        self.store = store if store is not None else CandidateStore(self.output_dir / "candidates")
        self.fusion = backends.program(task.generator(), method="fuse", n=self.n_values[-1], store=self.store)
        self.best = backends.program(task.generator(), method="select", sample=self.fusion.sample)
        if reward_fn is not None:
            self.best.select = Select(self.fusion.task_signature, reward_fn=reward_fn)
        self.num_threads = num_threads

    def _method(self, program: dspy.Module, stage: str, example: dspy.Example, candidates: list, where: str):
        """Score and stage tokens of one combining step; a failure scores 0 and is recorded."""
        try:
            prediction = program(candidates=candidates, **example.inputs())
        except Exception as error:  # noqa: BLE001 - a failed fusion or selection is a miss, and is reported
            return 0.0, 0, f"{type(error).__name__}: {error}"
        return self.task.score(example, prediction, where), prediction.stage_tokens[stage], None

    async def _amethod(self, program: dspy.Module, stage: str, example: dspy.Example, candidates: list, where: str):
        """The async twin of ``_method``."""
        try:
            prediction = await program.acall(candidates=candidates, **example.inputs())
        except Exception as error:  # noqa: BLE001 - a failed fusion or selection is a miss, and is reported
            return 0.0, 0, f"{type(error).__name__}: {error}"
        return self.task.score(example, prediction, where), prediction.stage_tokens[stage], None

    def _scored_pool(self, index: int, example: dspy.Example, pool: dspy.Prediction) -> tuple[dspy.Example, list]:
        """The example (with a baseline when the metric needs one) and every candidate's score."""
        if self.task.needs_baseline and "baseline" not in example:
            # A pairwise judge needs something to compare with: the single sample, as a win rate against it.
            output = next(name for name in self.task.signature.output_fields if name != "reasoning")
            example = example.copy(baseline=str(pool.candidates[0][output]))
        return example, [self.task.score(example, c, f"example {index}") for c in pool.candidates]

    @staticmethod
    def _record(index: int, n: int, pool: dspy.Prediction, scores: list, best: tuple, fused: tuple) -> dict:
        (bon, bon_tokens, bon_error), (fusion, fusion_tokens, fusion_error) = best, fused
        candidates, usage = pool.candidates[:n], pool.usage[:n]
        sample_tokens = sum(total_tokens(u) for u in usage)
        return {
            "id": f"{index}:{n}", "example": index, "n": n, "candidates": len(candidates),
            "scores": {"single": scores[0], "bon": bon, "fusion": fusion, "oracle": max(scores[:n])},
            "tokens": {"single": total_tokens(usage[0]), "bon": sample_tokens + bon_tokens,
                       "fusion": sample_tokens + fusion_tokens, "oracle": sample_tokens},
            "errors": {name: e for name, e in (("bon", bon_error), ("fusion", fusion_error)) if e},
        }  # fmt: skip

    def _evaluate_example(self, index: int, log: ResultsLog) -> int:
        example = self.examples[index]
        todo = [n for n in self.n_values if f"{index}:{n}" not in log.done]
        if not todo:
            return 0
        pool = self.fusion.sample(**example.inputs())
        example, scores = self._scored_pool(index, example, pool)
        for n in todo:
            where = f"example {index}, N={n}"
            bon = self._method(self.best, "select", example, pool.candidates[:n], where)
            fusion = self._method(self.fusion, "fuse", example, pool.candidates[:n], where)
            log.write(self._record(index, n, pool, scores, bon, fusion))
        return len(todo)

    async def aevaluate_example(self, index: int, log: ResultsLog) -> int:
        """Evaluate one example for every N ``log.done`` lacks, writing each record to ``log``; returns how many.

        The async twin of the per-example step of ``run`` (the Ray engine's unit of work): same records.
        """
        example = self.examples[index]
        todo = [n for n in self.n_values if f"{index}:{n}" not in log.done]
        if not todo:
            return 0
        pool = await self.fusion.sample.acall(**example.inputs())
        example, scores = self._scored_pool(index, example, pool)
        for n in todo:
            where = f"example {index}, N={n}"
            bon = await self._amethod(self.best, "select", example, pool.candidates[:n], where)
            fusion = await self._amethod(self.fusion, "fuse", example, pool.candidates[:n], where)
            log.write(self._record(index, n, pool, scores, bon, fusion))
        return len(todo)

    def run(self, show_progress: bool = True) -> list[dict[str, Any]]:
        """Evaluate what ``results.jsonl`` lacks; returns every record (earlier runs' included)."""
        with ResultsLog(self.output_dir / "results.jsonl") as log, progress_bar(not show_progress) as progress:
            bar = progress.add_task("paired evaluation", total=len(self.examples))

            def evaluate(index: int) -> int:
                try:
                    return self._evaluate_example(index, log)
                finally:
                    progress.advance(bar)

            for index, outcome in enumerate(run_concurrently(evaluate, range(len(self.examples)), self.num_threads)):
                if isinstance(outcome, MetricError):
                    raise outcome
                if isinstance(outcome, Exception):  # e.g. every sample failed: the example is left for a rerun
                    logger.warning("Example %d was not evaluated: %s: %s", index, type(outcome).__name__, outcome)
            return log.records()

"""PairedEvaluation: single sample, Best-of-N, Fusion-of-N and the oracle, scored on the *same* candidates.

For each example the largest N's candidates are drawn once (and kept in a ``CandidateStore``); every smaller N
uses their first N. Per example and N one record goes to ``results.jsonl`` as soon as it is scored, so an
interrupted evaluation picks up where it stopped. What could not be scored because a model was unavailable (every
sample failed, the fusor or judge down) goes to ``results.errors.jsonl`` instead, is never averaged as a 0, and
is tried again by the next run. ``fusion_dspy.workflows.reports`` turns the records into a table
with bootstrap confidence intervals, CSV/JSON and plots.
"""

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from fusion_dspy.backends import Backends
from fusion_dspy.backends.secrets import HELD
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.core.votes import normalized, token_f1
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.engine import Built, Outcome
from fusion_dspy.workflows.jsonl import ResultsLog, read_numbered_jsonl
from fusion_dspy.workflows.local_engine import LocalEngine
from fusion_dspy.workflows.runner import run_examples
from fusion_dspy.workflows.scoring import StageUnavailable, scored_stage
from fusion_dspy.workflows.task import MetricError, Task

if TYPE_CHECKING:  # the router's numpy is imported by an evaluation that runs, not by `fusion-dspy run`
    from fusion_dspy.core.router import Router

METHODS = ("single", "bon", "fusion", "oracle")
ROUTE = "route"  # the extra method scored when a trained router is given


def unscored_records(index: int, n_values: Iterable[int], error: BaseException) -> list[dict[str, Any]]:
    """The error records of an example that could not be evaluated: one per N it lacks, each with the id its
    scored record will have (``"<index>:<N>"``), so pruning the errors file after a rerun drops what succeeded.

    Example:
        >>> [r["id"] for r in unscored_records(3, [1, 4], ValueError("every sample failed"))]
        ['3:1', '3:4']
    """
    text = f"{type(error).__name__}: {error}"
    return [{"id": f"{index}:{n}", "example": index, "n": n, "error": text} for n in n_values]


def _recorded(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in inputs.items()}


def check_earlier_results(output_dir: str | Path, task: Task, examples: Sequence[dspy.Example],
                          router: Any = None) -> None:  # fmt: skip
    """Refuse to continue an ``output_dir`` whose ``results.jsonl`` another evaluation wrote: a rerun skips every
    (example, N) already recorded, so another task's, dev set's or router setting's scores would be reported as
    this one's.

    Example:
        >>> qa = Task("qa", "question -> answer", metric=lambda example, pred, trace=None: 1.0)
        >>> check_earlier_results(tmp_path / "fresh", qa, [])      # nothing written there yet: nothing to refuse
    """
    results = Path(output_dir) / "results.jsonl"
    if not results.exists():
        return
    fix = f"give a new --output-dir, or rerun with the options that wrote {results}"
    for number, record in read_numbered_jsonl(results):
        index, where = record.get("example"), f"{results}:{number}"
        if record.get("task", task.name) != task.name:
            raise FusionDSPyError(f"{where} scored the task {record['task']!r}, not {task.name!r}: {fix}.")
        if isinstance(index, int) and index < len(examples) and "inputs" in record \
                and record["inputs"] != HELD.within(_recorded(dict(examples[index].inputs().toDict()))):  # as written
            raise FusionDSPyError(f"{where} scored other inputs as example {index}: the dev set (or --split, "
                                  f"--size, --seed) changed since; {fix}.")  # fmt: skip
        if router is not None and ROUTE not in record.get("scores", {}):
            raise FusionDSPyError(f"{where} was scored without a --router, so its route would never be: {fix}.")


def _position(fused: dspy.Prediction | None, candidates: Pool, fields: list[str]) -> dict[str, Any] | None:
    """Does the fused answer follow the candidate shown first? The candidates closest to it (word-overlap F1 over
    ``fields``), whether the first shown is among them, and the chance of that (ties make it likelier)."""
    order = fused.get("candidate_order") if fused is not None else None
    if not order or len(candidates) < 2:
        return None

    def text(prediction: Any) -> str:
        return " | ".join(normalized(prediction.get(name, "")) for name in fields)

    similarity = [token_f1(text(fused), text(c)) for c in candidates.predictions]
    closest = [i for i, value in enumerate(similarity) if value == max(similarity)]
    return {"shown_first": order[0], "closest": closest, "follows_first": order[0] in closest,
            "chance": len(closest) / len(candidates)}  # fmt: skip


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
        router: A trained ``Router`` (or its saved path): a ``Route`` over the same candidates is scored too, as
            method ``"route"``, choosing among at most N of them at each N.

    Each record has the example's ``inputs``, the task, the candidates' ``agreement`` and, for N >= 2, where the
    fused answer came from (``position``: does it follow the candidate shown first), so ``Router.fit`` can train
    on ``results.jsonl`` and ``reports.position_bias`` can say how much order sways the fusor.

    Example:
        >>> evaluation = PairedEvaluation(backends, task, devset, n_values=(1, 2), output_dir=tmp_path / "eval")
        >>> records = evaluation.run(show_progress=False)
        >>> sorted({r["n"] for r in records}), records[0]["scores"]["fusion"]   # fusion_dspy.workflows.reports
        ([1, 2], 1.0)
    """

    def __init__(self, backends: Backends, task: Task, examples: Sequence[dspy.Example],
                 n_values: Sequence[int] = (1, 2, 4, 8), output_dir: str | Path = "eval",
                 store: CandidateStore | None = None, reward_fn: Callable | None = None, num_threads: int = 4,
                 router: "Router | str | Path | None" = None):
        if not examples:
            raise ValueError("There are no examples to evaluate on.")
        self.backends, self.task, self.examples = backends, task, list(examples)
        self.n_values = sorted(set(n_values))
        self.output_dir = Path(output_dir)
        self.store = store if store is not None else CandidateStore(self.output_dir / "candidates")
        self.fusion = backends.program(task.generator(), method="fuse", n=self.n_values[-1], store=self.store)
        self.best = backends.program(task.generator(), method="select", sample=self.fusion.sample,
                                     reward_fn=reward_fn)  # fmt: skip
        self.route = None if router is None else backends.program(
            task.generator(), method="auto", sample=self.fusion.sample, reward_fn=reward_fn, router=router)
        self.num_threads = num_threads

    def _example(self, index: int, log: ResultsLog, errors: ResultsLog | None = None) -> Steps[int]:
        """One example for every N ``log.done`` lacks, each record written to ``log``; returns how many.

        An N whose fusor or judge was unavailable is skipped (its error in ``errors``): a rerun scores it.
        """
        example = self.examples[index]
        todo = [n for n in self.n_values if f"{index}:{n}" not in log.done]
        if not todo:
            return 0
        pool = yield Call(self.fusion.sample, example.inputs())
        if self.task.needs_baseline and "baseline" not in example:
            # A pairwise judge needs something to compare with: the single sample, as a win rate against it.
            output = next(name for name in self.task.signature.output_fields if name != "reasoning")
            example = example.copy(baseline=str(pool[0].prediction[output]))
        scores = [self.task.score(example, c, f"example {index}") for c in pool.predictions]
        inputs = dict(example.inputs().toDict())
        vote_fields = self.best.select.vote_fields
        for n in todo:
            candidates, where = pool[:n], f"example {index}, N={n}"
            try:
                bon = yield from scored_stage(self.task, self.best, example, candidates, where)
                fusion = yield from scored_stage(self.task, self.fusion, example, candidates, where)
            except StageUnavailable as outage:
                if errors is not None:
                    errors.write({"id": f"{index}:{n}", "example": index, "n": n, "error": str(outage)})
                continue
            record = {
                "id": f"{index}:{n}", "example": index, "n": n, "candidates": len(candidates),
                "scores": {"single": scores[0], "bon": bon.score, "fusion": fusion.score, "oracle": max(scores[:n])},
                "tokens": {"single": candidates[0].tokens, "bon": candidates.tokens + bon.tokens,
                           "fusion": candidates.tokens + fusion.tokens, "oracle": candidates.tokens},
                "samples": {"single": 1, "bon": len(candidates), "fusion": len(candidates),
                            "oracle": len(candidates)},  # fewer than n where adaptive N stopped early
                "stop_reason": pool.stop_reason,
                "errors": {name: step.error for name, step in (("bon", bon), ("fusion", fusion)) if step.error},
                "reports": {name: step.prediction.report.to_dict() for name, step in (("bon", bon), ("fusion", fusion))
                            if step.prediction is not None},
                "inputs": _recorded(inputs),
                "task": self.task.name, "agreement": _agreement(candidates, vote_fields),
                "position": _position(fusion.prediction, candidates, vote_fields),
            }  # fmt: skip
            if self.route is not None:
                routed = yield from scored_stage(self.task, self.route, example, candidates, where)
                used = routed.prediction.report.route["n"] if routed.prediction is not None else n
                record["scores"][ROUTE] = routed.score
                drawn = candidates if self.route.router.use_agreement else candidates[:used]
                record["tokens"][ROUTE] = drawn.tokens + routed.tokens
                record["route"] = routed.prediction.report.route if routed.prediction is not None else None
                if routed.prediction is not None:
                    record["reports"][ROUTE] = routed.prediction.report.to_dict()
                if routed.error:
                    record["errors"][ROUTE] = routed.error
            log.write(record)
        return len(todo)

    def todo(self, done: set[str]) -> list[tuple[str, list[int]]]:
        """The rows left to do: ``(example index, the N it lacks)`` for every example with an N not in ``done``."""
        return missing_rows(len(self.examples), self.n_values, done)

    def row(self, item_id: str, todo: list[int]) -> Steps[Outcome]:
        """One example, for the N it lacks (``todo``), as steps: the unit of work of every engine. Its outcome holds
        its records and an error record per N whose fusor or judge was unavailable; one per N it lacks if it failed
        outright (e.g. every sample failed); ``fatal`` if the metric broke."""
        index = int(item_id)
        records = _Collected({f"{index}:{n}" for n in self.n_values if n not in todo})
        failures = _Collected(set())
        try:
            yield from self._example(index, records, failures)
        except MetricError as error:
            return Outcome(results=records.records, errors=failures.records, fatal=str(error))
        except Exception as error:  # noqa: BLE001 - e.g. every sample failed: left for a rerun
            missing = unscored_records(index, [n for n in todo if f"{index}:{n}" not in records.done], error)
            return Outcome(results=records.records, errors=[*failures.records, *missing],
                           warning=f"Example {index} could not be scored: {type(error).__name__}: {error}")  # fmt: skip
        return Outcome(results=records.records, errors=failures.records)

    def run(self, show_progress: bool = True) -> list[dict[str, Any]]:
        """Evaluate what ``results.jsonl`` lacks, ``num_threads`` examples at once in this process; returns every
        record (earlier runs' included). ``fusion-dspy eval`` does the same on any engine (``jobs.EvalJob``).

        An example that could not be evaluated (e.g. every sample failed) or an N whose fusor or judge was
        unavailable is left for a rerun, with its error in ``results.errors.jsonl``: one line per (example, N),
        its id the one its record will have, so the file holds only what is still missing after each run.
        """
        job = Built(self.row, example_failed, label="paired evaluation")
        return run_examples(job, self.todo, self.output_dir, LocalEngine(self.num_threads), show_progress)


def missing_rows(count: int, n_values: Sequence[int], done: set[str]) -> list[tuple[str, list[int]]]:
    """``(example index, the N it lacks)`` for each of ``count`` examples with an N not in ``done``."""
    return [(str(index), missing) for index in range(count)
            if (missing := [n for n in n_values if f"{index}:{n}" not in done])]  # fmt: skip


def example_failed(item_id: str, todo: list[int], error: Exception) -> Outcome:
    """The outcome of an example the engine lost (e.g. its worker process died): an error record per N it lacks."""
    return Outcome(errors=unscored_records(int(item_id), todo, error),
                   warning=f"Example {item_id} could not be scored: {type(error).__name__}: {error}")  # fmt: skip


class _Collected:
    """Stands in for the results log while an example runs: which records exist, and the new ones."""

    def __init__(self, done: set[str]):
        self.done, self.records = done, []

    def write(self, record: dict[str, Any]) -> None:
        self.done.add(str(record["id"]))
        self.records.append(record)


def _agreement(candidates: Any, vote_fields: Any) -> float:
    from fusion_dspy.core.router import agreement

    return agreement(candidates, vote_fields)

"""Reports of a fusion study: a table of its trials and a PNG of score (and tokens) against N."""

from collections import defaultdict
from pathlib import Path

import optuna
from rich.table import Table

from fusion_dspy.optimizers.search import canonical, completed_trials
from fusion_dspy.workflows.plots import n_axis, two_panels


def trials_table(study: optuna.Study, instructions: list[str], best: dict | None = None, limit: int = 20) -> Table:
    """The best ``limit`` trials, best first: parameters, score and tokens per example."""
    complete = completed_trials(study)
    table = Table("trial", "method", "N", "temp.", "instruction", "teachers", "score", "tokens/example",
                  title=f"study {study.study_name}: {len(complete)} complete trials", title_justify="left")
    ranked = sorted(complete, key=lambda t: (-t.values[0], t.user_attrs.get("tokens_per_example", 0)))
    unique = list({canonical(t.params): t for t in reversed(ranked)}.values())[::-1]  # one row per configuration
    for trial in unique[:limit]:
        p = trial.params
        instruction = "-" if p["method"] == "select" else instructions[p["instruction"]].split("\n")[-1][:40] + "…"
        marker = " *" if best is not None and canonical(p) == canonical(best) else ""
        table.add_row(f"{trial.number}{marker}", p["method"], str(p["n"]), str(p["temperature"]), instruction,
                      p.get("teachers", "all"), f"{trial.values[0]:.3f}",
                      f"{trial.user_attrs.get('tokens_per_example', 0):.0f}")  # fmt: skip
    return table


def plot_study(study: optuna.Study, path: str | Path) -> Path:
    """Best score per N for each method (left) and tokens per example per N (right), saved as a PNG."""
    score: dict[str, dict[int, float]] = defaultdict(dict)
    tokens: dict[str, dict[int, float]] = defaultdict(dict)
    for trial in completed_trials(study):
        method, n = trial.params["method"], trial.params["n"]
        if trial.values[0] >= score[method].get(n, float("-inf")):
            score[method][n] = trial.values[0]
            tokens[method][n] = trial.user_attrs.get("tokens_per_example", 0.0)
    labels = {"fuse": "Fusion-of-N", "select": "Best-of-N"}
    all_n = sorted({n for by_n in score.values() for n in by_n})
    with two_panels(path, f"{study.study_name}: quality and cost against N", figsize=(10, 4)) as (left, right):
        for method in sorted(score):
            ns = sorted(score[method])
            left.plot(ns, [score[method][n] for n in ns], marker="o", label=labels.get(method, method))
            right.plot(ns, [tokens[method][n] for n in ns], marker="o", label=labels.get(method, method))
        for axis, ylabel in ((left, "best score"), (right, "tokens per example")):
            n_axis(axis, all_n)
            axis.set_ylabel(ylabel)
    return Path(path)

"""Summaries of a paired evaluation: means with bootstrap confidence intervals, CSV/JSON, a table and plots."""

import csv
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from fusion_dspy.workflows.evaluation import METHODS, ROUTE
from fusion_dspy.workflows.plots import n_axis, two_panels

LABELS = {"single": "single sample", "bon": "Best-of-N", "fusion": "Fusion-of-N", "oracle": "oracle",
          "fusion-bon": "FusioN - BoN", ROUTE: "Route (auto)"}  # fmt: skip


@dataclass
class Row:
    """One method at one N: mean score over examples, its 95% bootstrap interval, mean tokens per example."""

    method: str
    n: int
    examples: int
    mean: float
    ci_low: float
    ci_high: float
    tokens: float
    errors: int
    samples: float = 0.0  # candidates used per example (fewer than N where adaptive N stopped early)


def bootstrap_ci(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling examples (paired: pass per-example differences)."""
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(records: list[dict[str, Any]]) -> list[Row]:
    """Rows per (method, N), plus the paired difference FusioN - BoN, over the examples evaluated at that N."""
    by_n: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_n[record["n"]].append(record)
    rows = []
    for n in sorted(by_n):
        group = sorted(by_n[n], key=lambda r: r["example"])
        methods = METHODS + ((ROUTE,) if all(ROUTE in r["scores"] for r in group) else ())
        series = {m: np.array([r["scores"][m] for r in group], dtype=float) for m in methods}
        series["fusion-bon"] = series["fusion"] - series["bon"]
        for method, values in series.items():
            tokens = [r["tokens"].get(method, 0) for r in group] if method in methods else [0]
            errors = sum(method in r.get("errors", {}) for r in group)
            low, high = bootstrap_ci(values)
            samples = [r.get("samples", {}).get(method, r.get("candidates", n)) for r in group] if method in METHODS \
                else [0]  # fmt: skip
            rows.append(Row(method, n, len(group), float(values.mean()), low, high, float(np.mean(tokens)), errors,
                            float(np.mean(samples))))  # fmt: skip
    return rows


@dataclass
class PositionRow:
    """At one N: how often the fused answer is closest to the candidate shown first, against chance."""

    n: int
    fusions: int
    follows_first: float
    chance: float


def position_bias(records: list[dict[str, Any]]) -> list[PositionRow]:
    """Per N >= 2, the share of fusions that follow the candidate shown first, and what chance alone would give
    (1/N, more where several candidates tie as closest). Far above chance: the fusor copies by position; try
    ``shuffle`` or ``permutations``.

    Example:
        >>> position_bias([{"n": 2, "position": {"follows_first": True, "chance": 0.5}},
        ...                {"n": 2, "position": {"follows_first": True, "chance": 0.5}}, {"n": 1, "position": None}])
        [PositionRow(n=2, fusions=2, follows_first=1.0, chance=0.5)]
    """
    by_n: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("position"):
            by_n[record["n"]].append(record["position"])
    return [PositionRow(n, len(by_n[n]), float(np.mean([p["follows_first"] for p in by_n[n]])),
                        float(np.mean([p["chance"] for p in by_n[n]]))) for n in sorted(by_n)]  # fmt: skip


def position_table(rows: list[PositionRow]) -> Table:
    table = Table("N", "fusions", "follows the first shown", "by chance", title="position bias of the fusor",
                  title_justify="left")  # fmt: skip
    for row in rows:
        table.add_row(str(row.n), str(row.fusions), f"{row.follows_first:.0%}", f"{row.chance:.0%}")
    return table


def report_table(rows: list[Row], title: str) -> Table:
    table = Table("N", "method", "mean", "95% CI", "tokens/example", "samples/example", "errors", title=title,
                  title_justify="left")  # fmt: skip
    for row in rows:
        own = row.method != "fusion-bon"
        table.add_row(str(row.n), LABELS[row.method], f"{row.mean:.3f}", f"[{row.ci_low:.3f}, {row.ci_high:.3f}]",
                      f"{row.tokens:.0f}" if own else "", f"{row.samples:.1f}" if own else "",
                      str(row.errors or ""))  # fmt: skip
    return table


def write_summary(rows: list[Row], output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / "summary.json", output_dir / "summary.csv"
    json_path.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    return json_path, csv_path


def plot_summary(rows: list[Row], path: str | Path, title: str) -> Path:
    """Quality against N (with 95% intervals) and quality against tokens per example, one line per method."""
    with two_panels(path, title) as (by_n, by_tokens):
        for method in METHODS + ((ROUTE,) if any(r.method == ROUTE for r in rows) else ()):
            mine = sorted((r for r in rows if r.method == method), key=lambda r: r.n)
            ns, means = [r.n for r in mine], [r.mean for r in mine]
            by_n.plot(ns, means, marker="o", label=LABELS[method], linestyle="--" if method == "oracle" else "-")
            by_n.fill_between(ns, [r.ci_low for r in mine], [r.ci_high for r in mine], alpha=0.15)
            if method != "oracle":
                by_tokens.plot([r.tokens for r in mine], means, marker="o", label=LABELS[method])
        n_axis(by_n, sorted({r.n for r in rows}))
        by_tokens.set_xlabel("tokens per example")
        for axis in (by_n, by_tokens):
            axis.set_ylabel("score")
    return Path(path)

"""The figure scaffold of every report: two panels side by side, an N axis on a log-2 scale, saved as a PNG."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def two_panels(path: str | Path, title: str, figsize: tuple[float, float] = (11, 4)) -> Iterator[Any]:
    """Two matplotlib axes to draw on; on exit each gets a grid and a legend and the figure is saved to ``path``.

    Example:
        >>> with two_panels(tmp_path / "plot.png", "demo") as (left, right):
        ...     _ = left.plot([1, 2], [0.5, 0.7], label="a"), right.plot([1, 2], [3, 4], label="b")
        >>> (tmp_path / "plot.png").stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=figsize)
    try:
        yield axes
        for axis in axes:
            axis.grid(alpha=0.3)
            axis.legend()
        figure.suptitle(title)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def n_axis(axis: Any, n_values: Sequence[int]) -> None:
    """An x axis of candidate counts, log-2 spaced, ticked at the N that were run."""
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(n_values), [str(n) for n in n_values])
    axis.set_xlabel("N (candidates)")

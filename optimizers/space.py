"""SearchSpace: what ``FusionSearch`` tries — N, temperatures, methods, teachers, instructions, structures."""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class SearchSpace:
    """The values each trial chooses from. Categorical on purpose: shared values mean shared candidates.

    Args:
        n: Candidate counts to try.
        temperatures: Sampling temperatures to try.
        methods: ``"fuse"`` and/or ``"select"``.
        teachers: Model names of the config's teacher pool whose subsets to try (``None``: always the whole pool).
        proposed_instructions: How many extra fusor instructions to ask the config's judge model for.
        adaptive_thresholds: Agreement thresholds of adaptive N to try (see ``Adaptive``), next to fixed N
            (``0.0``); empty (default): N is fixed. Its trials stop sampling early where candidates agree.
        group_sizes: Group fusion to try: ``None`` (one call, or groups when the fusor's context overflows),
            ``"auto"`` or a group size k >= 2. With anything but ``None`` an N the fusor cannot read in one call
            is searched too (fused in groups) instead of refused.
        layers: Mixture-of-Agents proposer layers to try (1: plain Fusion-of-N).
        permutations: Candidate orders to fuse in (1: one order).
        router: A trained ``Router`` (its JSON path) for the method ``"auto"`` (a ``Route``).

    The fusion structures (``group_sizes``, ``layers``, ``permutations``) apply to ``fuse`` and ``auto``; a
    parameter with only its default value is left out of the study.
    """

    n: Sequence[int] = (1, 2, 4, 8)
    temperatures: Sequence[float] = (0.7,)
    methods: Sequence[str] = ("fuse", "select")
    teachers: Sequence[str] | None = None
    proposed_instructions: int = 0
    adaptive_thresholds: Sequence[float] = ()
    group_sizes: Sequence[int | str | None] = (None,)
    layers: Sequence[int] = (1,)
    permutations: Sequence[int] = (1,)
    router: str | None = None


STRUCTURES = {"group_size": "group_sizes", "layers": "layers", "permutations": "permutations"}  # param: field
DEFAULTS = {"group_size": None, "layers": 1, "permutations": 1}


def teacher_subsets(names: Sequence[str]) -> list[str]:
    """Every non-empty subset of the teachers, as ``"a+b"`` strings (categorical values optuna can store)."""
    return ["+".join(combo) for size in range(1, len(names) + 1) for combo in itertools.combinations(names, size)]

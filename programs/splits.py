"""Train/dev/test splits for the ready programs: a stable hash of each example's key picks its split.

Hashing (not seeded shuffles) keeps the splits disjoint whatever seeds or sizes are asked for, and stable
across versions of the data packages that only add examples.
"""

import hashlib

SPLITS = {"train": range(0, 6), "dev": range(6, 8), "test": range(8, 10)}  # buckets of sha256(key) % 10


def check_split(split: str, program: str) -> None:
    """A ``ValueError`` naming the program and the known splits, for a split it does not have."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} of the {program} program; use one of {list(SPLITS)}.")


def in_split(key: str, split: str) -> bool:
    """Whether the example with this key (question, source text, parent id ...) belongs to ``split``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10 in SPLITS[split]

"""Collects the examples of README.md and docs/ as tests (tests/docs_examples.py runs them, with Sybil)."""

from tests.docs_examples import sybil

pytest_collect_file = sybil.pytest()

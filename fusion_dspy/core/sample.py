"""Sample: N candidate predictions from one module, drawn concurrently from one LM or a pool of teacher LMs."""

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.clients.base_lm import BaseLM
from dspy.signatures.signature import Signature

from fusion_dspy.core.pool import Candidate, Pool
from fusion_dspy.core.steps import Call, Gather, Steps, arun, run
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.errors import SamplingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draw:
    """One planned sample: which LM, and its rollout id (the sample's index within that LM)."""

    index: int
    lm: BaseLM
    rollout_id: int


def as_module(module: dspy.Module | str | type[Signature]) -> dspy.Module:
    """Accept a module, or a signature (string or class) that becomes a ``dspy.Predict``."""
    return module if isinstance(module, dspy.Module) else dspy.Predict(module)


class Sample(dspy.Module):
    """Draws N candidate predictions from one module, concurrently, each a distinct LM request.

    Every candidate calls the *same* wrapped module (so traces point at its predictors and optimizers tune
    them) under an LM copy with its own ``rollout_id`` and the sampling ``temperature``: distinct cache keys,
    distinct samples, and a rerun hits DSPy's cache sample by sample. With ``lms=[...]`` the candidates are
    spread over a pool of teacher LMs (the paper's synthetic-data setting).

    Args:
        module: The module (or signature) to sample from. Its predictors must not carry their own LM: pass the
            generator LM here as ``lm=`` instead, so that each sample can get its own rollout id.
        n: Number of candidates. Defaults to 5, or to one per teacher when ``lms`` is given.
        temperature: Sampling temperature for every candidate; ``None`` keeps the LM's own.
        lm: The generator LM. Defaults to the context LM (``dspy.configure(lm=...)``).
        lms: A pool of teacher LMs; sample ``i`` uses ``lms[i % len(lms)]``. Repeat an LM to weight it.
        max_concurrency: Most samples in flight at once. Defaults to ``n`` (in ``forward``, at most 64 threads).
        min_candidates: Fewest successful samples to go on with; fewer raise ``SamplingError``.
        adapter: The DSPy adapter for the generator's calls (default: the context's), e.g. for a small model.
        store: A ``CandidateStore`` to reuse candidates from and save new ones to, across calls, trials and runs.
            Stored candidates leave no trace, so bootstrap demos without a store.

    Example:
        >>> lm = scripted_lm(lambda call: {"answer": f"draft {call.index}"})
        >>> sample = Sample(dspy.Predict("question -> answer"), n=3, temperature=0.7, lm=lm)
        >>> pool = sample(question="Why is the sky blue?")
        >>> sorted(c.prediction.answer for c in pool), pool[0].model
        (['draft 0', 'draft 1', 'draft 2'], 'scripted/lm')
    """

    def __init__(
        self,
        module: dspy.Module | str | type[Signature],
        n: int | None = None,
        temperature: float | None = 0.7,
        lm: BaseLM | None = None,
        lms: Sequence[BaseLM] | None = None,
        max_concurrency: int | None = None,
        min_candidates: int = 1,
        adapter: dspy.Adapter | None = None,
        store: CandidateStore | None = None,
    ):
        super().__init__()
        if lm is not None and lms:
            raise ValueError("Pass either lm= (one generator) or lms= (a teacher pool), not both.")
        self.module = as_module(module)
        self.n = n if n is not None else (len(lms) if lms else 5)
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if not 1 <= min_candidates <= self.n:
            raise ValueError(f"min_candidates must be between 1 and n={self.n}, got {min_candidates}.")
        self.temperature = temperature
        self.generator_lm = lm
        self.teacher_lms = list(lms or [])
        self.max_concurrency = max_concurrency
        self.min_candidates = min_candidates
        self.adapter = adapter
        self.store = store

    def plan(self) -> list[Draw]:
        """The N draws of one call: LM and rollout id per sample."""
        pool = self.teacher_lms or [self.generator_lm or dspy.settings.lm]
        if pool[0] is None:
            raise ValueError(
                "No LM to sample from: pass lm= (or lms=[...]) to Sample/FusionOfN/BestOfN, or call "
                "dspy.configure(lm=dspy.LM(...)) first."
            )
        pinned = [name for name, predictor in self.module.named_predictors() if predictor.lm is not None]
        if pinned:
            raise ValueError(
                f"Predictor(s) {pinned} of the sampled module carry their own LM (set via set_lm or .lm=). DSPy "
                "prefers that LM over the per-sample copies, so all N candidates would be one cached answer. "
                "Leave the generator's predictors without an LM and pass it as lm= (or lms=[...]) instead."
            )
        # A rollout id counts the samples of one LM configuration, so a teacher listed twice (weighted by count)
        # gets rollouts 0 and 1, not two identical requests, and a teacher's first sample is rollout 0 whatever
        # pool it is in (the CandidateStore reuses it across pools).
        drawn: Counter = Counter()
        draws = []
        for i in range(self.n):
            lm = pool[i % len(pool)]
            settings = dict(getattr(lm, "kwargs", {}) or {})
            if self.temperature is not None:  # what is sent: two LMs that differ only in temperature are one here
                settings["temperature"] = self.temperature
            identity = (lm.model, repr(sorted(settings.items())))
            draws.append(Draw(i, lm, drawn[identity]))
            drawn[identity] += 1
        return draws

    def _draw_context(self, draw: Draw) -> dict[str, Any]:
        overrides: dict[str, Any] = {"rollout_id": draw.rollout_id}
        if self.temperature is not None:
            overrides["temperature"] = self.temperature
        context = {"lm": draw.lm.copy(**overrides)}
        return {**context, "adapter": self.adapter} if self.adapter else context

    def _lookup(self, draws: list[Draw], inputs: dict[str, Any]) -> tuple[list[str | None], dict[int, Any]]:
        """Store keys of the draws, and the (candidate, usage) of those already stored."""
        if self.store is None:
            return [None] * len(draws), {}
        state = self.store.generator_state(self.module)
        keys = [self.store.key(d.lm, self.temperature, state, self.adapter, inputs, d.rollout_id) for d in draws]
        found = {d.index: self.store.get(key) for d, key in zip(draws, keys, strict=True)}
        return keys, {index: hit for index, hit in found.items() if hit is not None}

    def _draw(self, draw: Draw, key: str | None, inputs: dict[str, Any]) -> Steps[tuple]:
        with dspy.context(**self._draw_context(draw)), dspy.track_usage() as tracker:
            prediction = yield Call(self.module, inputs)
        usage = tracker.get_total_tokens()
        if key is not None:
            self.store.put(key, prediction, usage)  # at once: a crash later keeps this sample
        return prediction, usage

    def _sample(self, inputs: dict[str, Any]) -> Steps[Pool]:
        draws = self.plan()
        keys, stored = self._lookup(draws, inputs)
        todo = [draw for draw in draws if draw.index not in stored]
        outcomes = yield Gather([self._draw(d, keys[d.index], inputs) for d in todo], self.max_concurrency)
        return self._collect(draws, stored, dict(zip([d.index for d in todo], outcomes, strict=True)))

    def forward(self, **inputs) -> Pool:
        return run(self._sample(inputs))

    async def aforward(self, **inputs) -> Pool:
        return await arun(self._sample(inputs))

    def _collect(self, draws: list[Draw], stored: dict[int, Any], fresh: dict[int, Any]) -> Pool:
        candidates, failures = [], []
        for draw in draws:
            outcome = stored.get(draw.index, fresh.get(draw.index))
            if isinstance(outcome, Exception):
                failure = f"sample {draw.index} ({draw.lm.model}): {type(outcome).__name__}: {outcome}"
                logger.warning("Dropping a failed candidate: %s", failure)
                failures.append(failure)
                continue
            prediction, usage = outcome
            candidates.append(Candidate(prediction, draw.lm.model, usage, draw.index in stored, draw.index))
        if len(candidates) < self.min_candidates:
            raise SamplingError(
                f"Only {len(candidates)} of {len(draws)} samples succeeded, fewer than min_candidates="
                f"{self.min_candidates}. Check that the generator LM is reachable and answers in the expected "
                "format; the failures were:",
                failures,
            )
        return Pool(candidates, failures)

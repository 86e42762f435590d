"""Sample: N candidate predictions from one module, drawn concurrently from one LM or a pool of teacher LMs."""

import copy
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.clients.base_lm import BaseLM
from dspy.signatures.signature import Signature

import fusion_dspy.tracing as tracing
from fusion_dspy.core import batching, truncation
from fusion_dspy.core.concurrency import Straggler
from fusion_dspy.core.meter import total_tokens
from fusion_dspy.core.options import DEFAULT_N, DEFAULT_TEMPERATURE, SampleOptions, legacy_options, merged
from fusion_dspy.core.pool import Candidate, Pool, truncation_note
from fusion_dspy.core.report import Failure
from fusion_dspy.core.steps import Call, Gather, Steps, adapter_override, arun, run
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
        options: How to draw (``SampleOptions``): concurrency, min_candidates, quorum and straggler grace,
            adaptive N, batching with ``n``, the adapter and the candidate store. The 0.2 keyword arguments
            (``quorum=3`` ...) still work for one release, with a ``DeprecationWarning``.

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
        temperature: float | None = DEFAULT_TEMPERATURE,
        lm: BaseLM | None = None,
        lms: Sequence[BaseLM] | None = None,
        options: SampleOptions | None = None,
        **deprecated: Any,
    ):
        super().__init__()
        if lm is not None and lms:
            raise ValueError("Pass either lm= (one generator) or lms= (a teacher pool), not both.")
        self.module = as_module(module)
        self.n = n if n is not None else (len(lms) if lms else DEFAULT_N)
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        moved = legacy_options("Sample", deprecated, ("sampling",), "options")
        self.options = merged(options, SampleOptions, moved.get("sampling"))
        if self.options.min_candidates > self.n:
            raise ValueError(f"min_candidates must be between 1 and n={self.n}, got {self.options.min_candidates}.")
        quorum = self.options.quorum
        if quorum is not None and not self.options.min_candidates <= quorum <= self.n:
            raise ValueError(f"quorum must be between min_candidates={self.options.min_candidates} and n={self.n}, "
                             f"got {quorum}.")  # fmt: skip
        self.temperature = temperature
        self.generator_lm = lm
        self.teacher_lms = list(lms or [])

    def resized(self, n: int) -> "Sample":
        """The same Sample drawing only its first ``n`` candidates: the same module (same predictors, so traces and
        tuning are shared) and options, min_candidates capped at ``n``."""
        if n == self.n:
            return self
        smaller = copy.copy(self)
        smaller.n = n
        smaller.options = self.options.capped(n)
        return smaller

    # The options, readable where they were in 0.2 (Sample.quorum ...).
    min_candidates = property(lambda self: self.options.min_candidates)
    max_concurrency = property(lambda self: self.options.max_concurrency)
    adapter = property(lambda self: self.options.adapter)
    store = property(lambda self: self.options.store)
    batch_samples = property(lambda self: self.options.batch_samples)
    quorum = property(lambda self: self.options.quorum)
    straggler_grace_s = property(lambda self: self.options.straggler_grace_s)
    adaptive = property(lambda self: self.options.adaptive)

    def plan(self) -> list[Draw]:
        """The N draws of one call: LM and rollout id per sample."""
        pool = self.teacher_lms or [self.generator_lm or dspy.settings.lm]
        if pool[0] is None:
            raise ValueError(
                "No LM to sample from: pass lm= (or lms=[...]) to Sample/FusionOfN/BestOfN, or call "
                "dspy.configure(lm=dspy.LM(...)) first."
            )
        predictors = self.module.named_predictors()  # walked once: it walks each module's call history too
        pinned = [name for name, predictor in predictors if predictor.lm is not None]
        if pinned:
            raise ValueError(
                f"Predictor(s) {pinned} of the sampled module carry their own LM (set via set_lm or .lm=). DSPy "
                "prefers that LM over the per-sample copies, so all N candidates would be one cached answer. "
                "Leave the generator's predictors without an LM and pass it as lm= (or lms=[...]) instead."
            )
        heated = [name for name, predictor in predictors if {"temperature", "n", "rollout_id"} & set(predictor.config)]
        if heated:
            raise ValueError(
                f"Predictor(s) {heated} of the sampled module set their own temperature, n or rollout_id (e.g. "
                "dspy.Predict(..., temperature=0.0)). DSPy prefers those over the per-sample settings, so all N "
                "candidates would be drawn alike. Leave them out and pass temperature= to Sample/FusionOfN/BestOfN."
            )
        # A rollout id counts the samples of one LM configuration, so a teacher listed twice (weighted by count)
        # gets rollouts 0 and 1, not two identical requests, and a teacher's first sample is rollout 0 whatever
        # pool it is in (the CandidateStore reuses it across pools).
        drawn: Counter = Counter()
        draws = []
        for i in range(self.n):
            lm = pool[i % len(pool)]
            # Settings as the store keys them: replicas of one model on two servers are one model, whose
            # samples need distinct rollout ids (else the store and DSPy's cache give one answer for both), and
            # two LMs that differ only in a temperature overridden here are one too.
            identity = (lm.model, repr(sorted(CandidateStore.settings(lm, self.temperature).items())))
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
        """Store keys of the draws, and the (candidate, usage, truncated) of those already stored."""
        if self.store is None:
            return [None] * len(draws), {}
        state = self.store.generator_state(self.module)
        keys = [self.store.key(d.lm, self.temperature, state, self.adapter, inputs, d.rollout_id) for d in draws]
        found = {d.index: self.store.get(key) for d, key in zip(draws, keys, strict=True)}
        return keys, {index: hit for index, hit in found.items() if hit is not None}

    def _draw(self, draw: Draw, key: str | None, inputs: dict[str, Any]) -> Steps[tuple]:
        """One sample: ``(prediction, usage, truncated)``, ``truncated`` when a reply was cut at max_tokens."""
        with (tracing.candidate_span([draw.index], self.temperature, draw.lm.model),
              dspy.context(**self._draw_context(draw)), dspy.track_usage() as tracker, truncation.watch() as cut):
            prediction = yield Call(self.module, inputs)
        usage = tracker.get_total_tokens()
        if key is not None:
            self.store.put(key, prediction, usage, bool(cut))  # at once: a crash later keeps this sample
        return prediction, usage, bool(cut)

    def _draw_batch(self, group: list[Draw], keys: list[str | None], inputs: dict[str, Any]) -> Steps[list]:
        """One request for the group's samples (``n`` choices); N requests when the backend rejects ``n``."""
        lm, k = group[0].lm, len(group)
        batch_lm = batching.batch_lm(lm, group[0].rollout_id, self.temperature, k)
        context = {"lm": batch_lm, **adapter_override(self.adapter)}
        try:
            with (tracing.candidate_span([d.index for d in group], self.temperature, lm.model),
                  dspy.context(**context), dspy.track_usage() as tracker, truncation.watch() as cut):
                prediction = yield Call(self.module, inputs)
            predictions = batching.completions(prediction, k)
        except Exception as error:
            if not batching.rejects_n(error):
                raise
            outcomes = yield Gather([self._draw(d, keys[d.index], inputs) for d in group], self.max_concurrency)
            if any(not isinstance(outcome, Exception) for outcome in outcomes):
                batching.mark_rejected(lm, error)  # the same requests with one choice each went through
            return outcomes
        usages = batching.split_usage(tracker.get_total_tokens(), k)
        # DSPy reports a cut once per request, not per choice: every sample of a batch that had one is marked.
        drawn = [(candidate, usage, bool(cut)) for candidate, usage in zip(predictions, usages, strict=True)]
        for draw, outcome in zip(group, drawn, strict=True):
            if keys[draw.index] is not None:
                self.store.put(keys[draw.index], *outcome)  # sample i of the batch is stored as sample i
        return drawn

    def _group(self, draw: Draw, keys: list[str | None], inputs: dict[str, Any], group: list[Draw]) -> Steps[list]:
        if len(group) > 1:  # a batched LM's draws of this wave (one alone is an ordinary request)
            return (yield from self._draw_batch(group, keys, inputs))
        return [(yield from self._draw(draw, keys[draw.index], inputs))]

    def _groups(self, todo: list[Draw]) -> list[list[Draw]]:
        """The requests of a wave: one per batched LM (all its draws), one per draw otherwise."""
        groups: dict[Any, list[Draw]] = {}
        for draw in todo:
            batched = batching.batches(self.batch_samples, draw.lm, self.module)
            groups.setdefault(id(draw.lm) if batched else ("single", draw.index), []).append(draw)
        return list(groups.values())

    def _waves(self, draws: list[Draw]) -> list[list[Draw]]:
        size = self.adaptive.wave if self.adaptive else len(draws)
        return [draws[start:start + size] for start in range(0, len(draws), size)]

    def _sample(self, inputs: dict[str, Any]) -> Steps[Pool]:
        with tracing.span("fusion_dspy.sample", {"fusion.n": self.n}, tokens=True) as span:
            pool = yield from self._draw_waves(inputs)
            span.set({"fusion.samples_drawn": pool.drawn, "fusion.stop_reason": pool.stop_reason,
                      "fusion.candidates": len(pool), "fusion.stored": sum(c.cached for c in pool),
                      "fusion.failures": len(pool.failures), "fusion.stragglers": len(pool.stragglers)})  # fmt: skip
        return pool

    def _draw_waves(self, inputs: dict[str, Any]) -> Steps[Pool]:
        draws = self.plan()
        keys, stored = self._lookup(draws, inputs)
        outcomes: dict[int, Any] = dict(stored)
        drawn, reason = 0, None
        for wave in self._waves(draws):
            drawn += len(wave)
            groups = self._groups([draw for draw in wave if draw.index not in stored])
            have = sum(1 for outcome in outcomes.values() if not isinstance(outcome, Exception))
            # Candidates already in count toward the quorum, but a wave's own draws get the grace from its first
            # arrival, not from its start: otherwise a grace shorter than one request would cut every new draw.
            cut = {} if self.quorum is None else {"quorum": max(1, self.quorum - have),
                                                  "grace_s": self.straggler_grace_s}  # fmt: skip
            results = yield Gather([self._group(g[0], keys, inputs, g) for g in groups], self.max_concurrency,
                                   weights=[len(g) for g in groups], **cut)  # fmt: skip
            for group, result in zip(groups, results, strict=True):
                spread = [result] * len(group) if isinstance(result, Exception) else result
                outcomes.update({draw.index: outcome for draw, outcome in zip(group, spread, strict=True)})
            if self.adaptive and drawn < len(draws):
                reason = self._stop_reason([outcomes[d.index] for d in draws[:drawn]])
                if reason:
                    break
        return self._collect(draws[:drawn], stored, outcomes, reason)

    def _stop_reason(self, outcomes: list[Any]) -> str | None:
        good = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
        answers = self.adaptive.answers([prediction for prediction, *_ in good], self._signature())
        return self.adaptive.stop_reason(answers, sum(total_tokens(usage) for _, usage, _ in good))

    def _signature(self) -> type[Signature]:
        return self.module.predictors()[-1].signature

    def forward(self, **inputs) -> Pool:
        return run(self._sample(inputs))

    async def aforward(self, **inputs) -> Pool:
        return await arun(self._sample(inputs))

    def _collect(self, draws: list[Draw], stored: dict[int, Any], outcomes: dict[int, Any], reason: str | None
                 ) -> Pool:  # fmt: skip
        candidates, failures, stragglers = [], [], []
        for draw in draws:
            outcome = outcomes[draw.index]
            if isinstance(outcome, Straggler):
                stragglers.append(Failure("sample", "straggler", "Straggler", f"not waited for: {outcome}",
                                          draw.lm.model, draw.index))  # fmt: skip
                continue
            if isinstance(outcome, Exception):
                failure = Failure.of(outcome, "sample", draw.lm.model, draw.index)
                logger.warning("Dropping a failed candidate: %s", failure)
                failures.append(failure)
                continue
            prediction, usage, cut = outcome
            if cut:
                limit = draw.lm.kwargs.get("max_tokens") or draw.lm.kwargs.get("max_completion_tokens")
                logger.warning("Keeping a candidate whose reply was cut short: %s (its last field may be "
                               "incomplete).", truncation_note(draw.index, draw.lm.model, limit))  # fmt: skip
            candidates.append(Candidate(prediction, draw.lm.model, usage, draw.index in stored, draw.index, cut))
        if len(candidates) < self.min_candidates:
            raise SamplingError(
                f"Only {len(candidates)} of {len(draws)} samples succeeded, fewer than min_candidates="
                f"{self.min_candidates}. Check that the generator LM is reachable and answers in the expected "
                "format; the failures were:",
                failures + stragglers,
            )
        reason = reason or ("quorum" if stragglers else "complete")
        return Pool(candidates, failures, stragglers, drawn=len(draws), stop_reason=reason)

"""FusionOfN = Sample -> Fuse: N samples, then a fusor LM writes one answer that combines their strengths."""

import logging
from collections.abc import Sequence
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from fusion_dspy.core.adaptive import Adaptive
from fusion_dspy.core.batching import BatchSamples
from fusion_dspy.core.fuse import Fuse
from fusion_dspy.core.layers import Layers
from fusion_dspy.core.permute import Permutations
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.sample import Sample
from fusion_dspy.core.select import Select
from fusion_dspy.core.steps import Steps
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.core.structured import fuse_structured
from fusion_dspy.core.two_stage import UNSET, SampleThenCombine, build_sample
from fusion_dspy.core.windowed import check_group_size
from fusion_dspy.errors import FusionError

logger = logging.getLogger(__name__)


class FusionOfN(SampleThenCombine):
    """Fusion-of-N: sample N candidates, then have a fusor LM write one answer that combines their strengths.

    Works over any module or signature and keeps the task's own output fields, so it drops into a larger
    program where the module was. Pass ``candidates=`` to fuse a pool you already have (for example the one a
    ``BestOfN`` sharing the same ``Sample`` just drew), skipping the sampling stage.

    Args:
        module: The generator: any DSPy module, or a signature for a ``dspy.Predict``.
        n: Number of candidates (default 5; one per teacher when ``lms`` is given).
        temperature: Sampling temperature of the candidates (default 0.7, the paper's for test-time scaling).
        lm: The generator LM (default: the context LM); also the fusor's when ``fusor_lm`` is not given.
        lms: A pool of teacher LMs to spread the samples over (the paper's synthetic-data setting).
        fusor_lm: The fusor's LM, settable apart from the generators' (good proposers can be bad fusors).
            Defaults to ``lm``, then to the fusor predictor's own LM, then the context LM.
        instructions: Replaces the default, paper-style fusor instruction.
        signature: The module's task signature when it cannot be inferred (multi-predictor modules).
        min_candidates: Fewest successful samples to fuse (default 1); failed samples are dropped with a warning.
        max_concurrency: Most samples in flight at once (default ``n``; at most 64 threads in ``forward``).
        fallback: What to do when fusion fails — the fusor's output cannot be parsed even after DSPy's adapter
            fallback and ``retries``, or the fusor is unreachable, times out or keeps failing after its retries:
            ``"raise"`` a ``FusionError`` naming the cause, or ``"select"`` the majority-vote candidate and say
            why in ``fusion_error`` (the gateways' rule: the panel's answers are never thrown away).
        shuffle: Shuffle the order candidates are shown to the fusor (seeded per input).
        retries: Fresh fusor samples to try when its output cannot be parsed (see ``Fuse``).
        compare: The fusor compares the candidates in a ``comparison`` field before answering (see ``Fuse``).
        context_window: Tokens the fusor reads at once: a pool that does not fit is fused in groups (see
            ``group_size``), and every fusor prompt is counted before it is sent (see ``Fuse``).
        deadline_s: Seconds the whole call (sampling and fusion, retries included) may take; past it the call
            raises ``DeadlineExceeded`` at once and abandons what is still in flight. ``None``: no deadline.
        adapter: The DSPy adapter of the generator's calls (default: the context's).
        fusor_adapter: The DSPy adapter of the fusor's calls (default: the context's), e.g. ``PlainAdapter``.
        store: A ``CandidateStore`` that keeps candidates across calls and runs (see ``Sample``).
        sample: An existing ``Sample`` to draw from, to share one candidate pool with a ``BestOfN``. The
            sampling options (``n``, ``temperature``, ``lm``, ``lms``, ``min_candidates``, ``max_concurrency``,
            ``adapter``, ``store``, ``batch_samples``, ``quorum``, ``straggler_grace_s``, ``adaptive``) then belong
            to that Sample: passing them too is an error.
        batch_samples, quorum, straggler_grace_s, adaptive: see ``Sample``. The result then also has
            ``stragglers`` (beside ``sample_failures``), ``samples_drawn`` and ``stop_reason``.
        group_size: Fuse in groups of this many, then fuse the fused (``fusion_dspy.core.windowed``), or
            ``"auto"``: groups as large as the fusor's ``context_window`` holds. ``None`` (default): automatic
            when ``context_window`` is given, else one fusor call.
        layers: Mixture-of-Agents proposer layers (``fusion_dspy.core.layers``): 1 (default) is plain
            Fusion-of-N; each further layer's proposers read the previous layer's answers; the last is fused.
        permutations: Fuse the candidates in this many orders and keep one fusion (``fusion_dspy.core.permute``);
            the prediction's ``fusion_orders`` lists the orders used.
        permutation_pick: How the fusion is kept: ``"consensus"`` (default), ``"majority"`` or ``"listwise"``
            (an LLM judge, ``judge_lm``).
        judge_lm: The judge of ``permutation_pick="listwise"`` (default: ``lm``, then the context LM).

    Example:
        >>> lm = scripted_lm(lambda call: {"comparison": "All agree.", "answer": "4"} if call.wants("comparison")
        ...                  else {"answer": "4"})
        >>> fused = FusionOfN(dspy.Predict("question -> answer"), n=3, lm=lm)
        >>> p = fused(question="2 + 2?")
        >>> p.answer, len(p.candidates), sorted(p.stage_tokens)
        ('4', 3, ['fuse', 'sample'])
    """

    stage_name = "fuse"

    def __init__(
        self,
        module: dspy.Module | str | type[dspy.Signature] | None = None,
        n: int | None = UNSET,
        temperature: float | None = UNSET,
        lm: dspy.BaseLM | None = None,
        lms: Sequence[dspy.BaseLM] | None = UNSET,
        fusor_lm: dspy.BaseLM | None = None,
        instructions: str | None = None,
        signature: str | type[dspy.Signature] | None = None,
        min_candidates: int = UNSET,
        max_concurrency: int | None = UNSET,
        fallback: Literal["raise", "select"] = "raise",
        shuffle: bool = False,
        retries: int = 1,
        compare: bool = True,
        context_window: int | None = None,
        deadline_s: float | None = None,
        adapter: dspy.Adapter | None = UNSET,
        fusor_adapter: dspy.Adapter | None = None,
        store: CandidateStore | None = UNSET,
        sample: Sample | None = None,
        batch_samples: BatchSamples = UNSET,
        quorum: int | None = UNSET,
        straggler_grace_s: float = UNSET,
        adaptive: Adaptive | bool | None = UNSET,
        group_size: int | Literal["auto"] | None = None,
        layers: int = 1,
        permutations: int = 1,
        permutation_pick: Literal["consensus", "majority", "listwise"] = "consensus",
        judge_lm: dspy.BaseLM | None = None,
    ):
        if fallback not in ("raise", "select"):
            raise ValueError(f"fallback must be 'raise' or 'select', got {fallback!r}.")
        generator_lm = UNSET if lm is None else lm
        super().__init__(build_sample("FusionOfN", module, sample, n=n, temperature=temperature, lm=generator_lm,
                                      lms=lms, min_candidates=min_candidates, max_concurrency=max_concurrency,
                                      adapter=adapter, store=store, batch_samples=batch_samples, quorum=quorum,
                                      straggler_grace_s=straggler_grace_s, adaptive=adaptive),
                         signature, deadline_s)  # fmt: skip
        self.fuse = Fuse(self.task_signature, instructions=instructions, lm=fusor_lm or lm, shuffle=shuffle,
                         adapter=fusor_adapter, retries=retries, compare=compare,
                         context_window=context_window)  # fmt: skip
        self.fallback = fallback
        self.group_size, self.context_window = check_group_size(group_size, context_window), context_window
        self.layers = Layers(self.sample, self.task_signature, layers) if layers != 1 else None
        self.permute = (Permutations(self.task_signature, permutations, permutation_pick, judge_lm or lm)
                        if permutations != 1 else None)  # fmt: skip

    def _combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        try:
            return (yield from fuse_structured(self.fuse, pool, inputs, self.layers, self.group_size,
                                               self.context_window, self.permute))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - unusable output, or a fusor unreachable, timing out, overloaded
            return self._fallback(pool, inputs, error)

    def _fallback(self, pool: Pool, inputs: dict[str, Any], error: Exception) -> dspy.Prediction:
        reason = f"{type(error).__name__}: {error}"
        unusable = isinstance(error, AdapterParseError)
        if self.fallback == "raise":
            if isinstance(error, FusionError):  # already says what to fix (e.g. a pool over the context window)
                raise error
            what = "The fusor's output could not be used" if unusable else "The fusor failed"
            fix = "Use a stronger fusor_lm" if unusable else "Check that the fusor LM is reachable"
            raise FusionError(f"{what} ({reason}). {fix}, or pass fallback='select' to return the majority-vote "
                              "candidate instead: the candidates are not lost.") from error  # fmt: skip
        logger.warning("Fusion failed (%s); falling back to the majority-vote candidate.", reason)
        chosen = Select(self.task_signature)(candidates=pool, **inputs)
        return dspy.Prediction(**chosen.toDict(), fusion_error=reason)

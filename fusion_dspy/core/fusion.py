"""FusionOfN = Sample -> Fuse: N samples, then a fusor LM writes one answer that combines their strengths."""

import logging
from collections.abc import Sequence
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from fusion_dspy.core.fuse import Fuse
from fusion_dspy.core.layers import Layers
from fusion_dspy.core.options import (
    DEFAULT_TEMPERATURE,
    Fallback,
    FuseOptions,
    SampleOptions,
    fallback_selection,
    legacy_options,
    merged,
)
from fusion_dspy.core.permute import Permutations
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.report import Failure, FallbackReport
from fusion_dspy.core.sample import Sample
from fusion_dspy.core.select import Select, select_arguments
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.core.structured import fuse_structured
from fusion_dspy.core.two_stage import SampleThenCombine, build_sample
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
        temperature: Sampling temperature of the candidates (default 0.7, the paper's for test-time scaling;
            ``None`` keeps the LM's own).
        lm: The generator LM (default: the context LM); also the fusor's when ``fusor_lm`` is not given.
        lms: A pool of teacher LMs to spread the samples over (the paper's synthetic-data setting).
        fusor_lm: The fusor's LM, settable apart from the generators' (good proposers can be bad fusors).
            Defaults to ``lm``, then to the fusor predictor's own LM, then the context LM.
        signature: The module's task signature when it cannot be inferred (multi-predictor modules).
        fallback: What to do when fusion fails — the fusor's output cannot be parsed even after DSPy's adapter
            fallback and its retries, or the fusor is unreachable, times out or keeps failing: ``"raise"`` a
            ``FusionError`` naming the cause; ``"select"`` keep the majority-vote candidate; or a
            ``SelectOptions`` to select as it says (``SelectOptions(vote="consensus")``, a judge...). The report's
            ``fallback`` says why (the gateways' rule: the panel's answers are never thrown away).
        deadline_s: Seconds the whole call (sampling and fusion, retries included) may take; past it the call
            raises ``DeadlineExceeded`` at once and abandons what is still in flight. ``None``: no deadline.
        sample: An existing ``Sample`` to draw from, to share one candidate pool with a ``BestOfN``. ``n``,
            ``temperature``, ``lm``/``lms`` (for sampling) and ``sampling`` then belong to that Sample.
        sampling: How the candidates are drawn (``SampleOptions``: quorum, batching, adaptive N, store ...).
        fusing: How the fusor writes and the fusion's structure (``FuseOptions``: instructions, retries,
            context window, groups, layers, permutations ...).
        **deprecated: The 0.2 keyword arguments (``quorum=``, ``instructions=``, ``fusor_adapter=`` ...), moved into
            ``sampling``/``fusing`` with a ``DeprecationWarning``; removed in 0.4.

    Example:
        >>> lm = scripted_lm(lambda call: {"comparison": "All agree.", "answer": "4"} if call.wants("comparison")
        ...                  else {"answer": "4"})
        >>> fused = FusionOfN(dspy.Predict("question -> answer"), n=3, lm=lm)
        >>> p = fused(question="2 + 2?")
        >>> p.answer, len(p.candidates), sorted(p.report.tokens)
        ('4', 3, ['fuse', 'sample'])
    """

    stage_name = "fuse"

    def __init__(
        self,
        module: dspy.Module | str | type[dspy.Signature] | None = None,
        n: int | None = None,
        temperature: float | None = DEFAULT_TEMPERATURE,
        lm: dspy.BaseLM | None = None,
        lms: Sequence[dspy.BaseLM] | None = None,
        fusor_lm: dspy.BaseLM | None = None,
        signature: str | type[dspy.Signature] | None = None,
        fallback: Fallback = "raise",
        deadline_s: float | None = None,
        sample: Sample | None = None,
        sampling: SampleOptions | None = None,
        fusing: FuseOptions | None = None,
        **deprecated: Any,
    ):
        moved = legacy_options("FusionOfN", deprecated, ("sampling", "fusing"))
        sampling = (merged(sampling, SampleOptions, moved["sampling"]) if "sampling" in moved
                    else sampling)  # fmt: skip
        super().__init__(build_sample("FusionOfN", module, sample, n, temperature, lm, lms, sampling), signature,
                         deadline_s)  # fmt: skip
        self.fusing = fusing = merged(fusing, FuseOptions, moved.get("fusing"))
        self.fallback, self.selection = fallback, fallback_selection(fallback)
        self.fuse = Fuse(self.task_signature, instructions=fusing.instructions, lm=fusor_lm or lm,
                         shuffle=fusing.shuffle, adapter=fusing.adapter, retries=fusing.retries, compare=fusing.compare,
                         context_window=fusing.context_window)  # fmt: skip
        self.layers = Layers(self.sample, self.task_signature, fusing.layers) if fusing.layers != 1 else None
        self.permute = (Permutations(self.task_signature, fusing.permutations, fusing.permutation_pick,
                                     fusing.judge_lm or lm) if fusing.permutations != 1 else None)  # fmt: skip
        if self.selection is not None:  # what keeps a candidate when fusion fails
            judge_lm = self.selection.judge_lm or (lm if self.selection.judge else None)
            self.fallback_select = Select(self.task_signature, **select_arguments(self.selection.replace(
                judge_lm=judge_lm)), fallback="select")  # fmt: skip

    group_size = property(lambda self: self.fusing.group_size)
    context_window = property(lambda self: self.fusing.context_window)

    def combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        try:
            return (yield from fuse_structured(self.fuse, pool, inputs, self.layers, self.group_size,
                                               self.context_window, self.permute))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - unusable output, or a fusor unreachable, timing out, overloaded
            return (yield from self._fallback(pool, inputs, error))

    def _fallback(self, pool: Pool, inputs: dict[str, Any], error: Exception) -> Steps[dspy.Prediction]:
        reason = f"{type(error).__name__}: {error}"
        unusable = isinstance(error, AdapterParseError)
        if self.selection is None:
            if isinstance(error, FusionError):  # already says what to fix (e.g. a pool over the context window)
                raise error
            what = "The fusor's output could not be used" if unusable else "The fusor failed"
            fix = "Use a stronger fusor_lm" if unusable else "Check that the fusor LM is reachable"
            raise FusionError(f"{what} ({reason}). {fix}, or pass fallback='select' to return the majority-vote "
                              "candidate instead: the candidates are not lost.") from error  # fmt: skip
        method = self.selection.method
        logger.warning("Fusion failed (%s); falling back to selection by %s.", reason, method)
        chosen = yield Call(self.fallback_select, {"candidates": pool, **inputs})
        fields = {name: value for name, value in chosen.items() if name not in ("fallback", "selection_error")}
        return dspy.Prediction(**fields, fallback=FallbackReport(Failure.of(error, "fuse"), method,
                                                                 chosen.selected_index))  # fmt: skip

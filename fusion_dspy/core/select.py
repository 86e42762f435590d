"""Select: Best-of-N's second stage: keep one candidate, by reward function, LLM judge or majority vote."""

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import dspy

import fusion_dspy.tracing as tracing
from fusion_dspy.core.options import SelectOptions
from fusion_dspy.core.pool import Pool, predictions
from fusion_dspy.core.report import Failure, FallbackReport
from fusion_dspy.core.signatures import (
    listwise_judge_signature,
    pointwise_judge_signature,
    presentation_order,
    render_candidate,
    render_candidates,
)
from fusion_dspy.core.steps import Call, Gather, Steps, adapter_override, arun, run
from fusion_dspy.core.votes import consensus_scores, majority_counts, normalized
from fusion_dspy.errors import SelectionError

logger = logging.getLogger(__name__)

RewardFn = Callable[[dict[str, Any], dspy.Prediction], float]


def select_arguments(options: SelectOptions) -> dict[str, Any]:
    """``Select``'s keyword arguments for a ``SelectOptions`` (all but ``permutations``, which ``BestOfN`` runs)."""
    return {"reward_fn": options.reward_fn, "judge": options.judge, "judge_lm": options.judge_lm, "vote": options.vote,
            "adapter": options.adapter}  # fmt: skip


class Select(dspy.Module):
    """Keeps the best of N candidates: by a reward function, an LLM judge, or majority vote.

    The method follows from the arguments: ``reward_fn`` scores each candidate (``dspy.BestOfN``'s
    ``reward_fn(inputs, prediction) -> float``); ``judge="listwise"`` has an LLM pick the best of all candidates
    shown together, ``judge="pointwise"`` has it score each one 1-10 (concurrently). With neither, a vote over
    the task's output fields except ``reasoning``: ``vote="majority"`` keeps the most frequent answer (exact match
    after normalizing case and spacing: self-consistency, right for short answers), ``vote="consensus"`` the
    answer most similar to all the others (mean word-overlap F1, a minimum-Bayes-risk pick, right for free
    text, where no two answers are equal). Ties go to the earliest candidate.

    Args:
        signature: The task signature of the candidates.
        reward_fn: ``reward_fn(inputs: dict, prediction) -> float``; a candidate whose reward raises is skipped.
        judge: ``"listwise"`` or ``"pointwise"`` for an LLM judge.
        judge_lm: The judge's LM (defaults to the predictor's own, then the context LM).
        shuffle: Shuffle the candidates shown to a listwise judge (seeded per input) against position bias.
        vote: ``"majority"`` or ``"consensus"``, used when there is no reward_fn or judge.
        vote_fields: Output fields compared by the vote (default: all outputs but ``reasoning``).
        adapter: The DSPy adapter for the judge's calls (default: the context's).
        fallback: When the judge fails (unreachable, timing out, or answering something unusable):
            ``"raise"`` a ``SelectionError`` naming the cause, or ``"select"``: pick by ``vote`` instead; the
            prediction's ``fallback`` (a ``FallbackReport``) says why. (``"vote"``, the 0.2 spelling, still works.)

    Example:
        >>> select = Select("question -> answer", reward_fn=lambda inputs, pred: -len(pred.answer))
        >>> best = select(candidates=[{"answer": "Paris, France"}, {"answer": "Paris"}], question="Capital?")
        >>> best.answer, best.selected_index
        ('Paris', 1)
    """

    def __init__(
        self,
        signature: str | type[dspy.Signature],
        reward_fn: RewardFn | None = None,
        judge: Literal["listwise", "pointwise"] | None = None,
        judge_lm: dspy.BaseLM | None = None,
        shuffle: bool = True,
        vote: Literal["majority", "consensus"] = "majority",
        vote_fields: Sequence[str] | None = None,
        adapter: dspy.Adapter | None = None,
        fallback: Literal["raise", "select"] = "raise",
    ):
        super().__init__()
        if reward_fn is not None and judge is not None:
            raise ValueError("Pass either reward_fn= or judge=, not both.")
        if judge not in (None, "listwise", "pointwise"):
            raise ValueError(f"judge must be 'listwise' or 'pointwise', got {judge!r}.")
        if vote not in ("majority", "consensus"):
            raise ValueError(f"vote must be 'majority' or 'consensus', got {vote!r}.")
        if fallback == "vote":
            warnings.warn("Select(fallback='vote') is deprecated: the word is 'select' everywhere (FusionOfN, "
                          "BestOfN, Select).", DeprecationWarning, stacklevel=2)  # fmt: skip
            fallback = "select"
        if fallback not in ("raise", "select"):
            raise ValueError(f"fallback must be 'raise' or 'select', got {fallback!r}.")
        self.task_signature = dspy.ensure_signature(signature)
        self.method = "reward" if reward_fn else (judge or vote)
        # Held behind a lambda so a reward_fn that is itself a dspy.Module is not mistaken for a parameter.
        self.reward_fn = (lambda inputs, pred: reward_fn(inputs, pred)) if reward_fn else None
        if judge == "listwise":
            self.judge = dspy.Predict(listwise_judge_signature(self.task_signature))
        elif judge == "pointwise":
            self.judge = dspy.Predict(pointwise_judge_signature(self.task_signature))
        self.judge_lm = judge_lm
        self.shuffle = shuffle
        self.adapter = adapter
        self.vote, self.fallback = vote, fallback
        outputs = list(self.task_signature.output_fields)
        self.vote_fields = list(vote_fields or [name for name in outputs if name != "reasoning"] or outputs)

    def _select(self, candidates: Pool | Sequence[Any], inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        judged = self.method in ("listwise", "pointwise")
        judge = (self.judge_lm or self.judge.lm or dspy.settings.lm) if judged else None
        with tracing.span("fusion_dspy.select", {"fusion.method": self.method, "fusion.candidates": len(candidates)},
                          model=getattr(judge, "model", None), tokens=True) as span:  # fmt: skip
            chosen = yield from self._selected(candidates, inputs)
            span.set({"fusion.selected_index": chosen.selected_index,
                      "fusion.fallback": chosen.fallback.cause.kind if chosen.get("fallback") else None})  # fmt: skip
        return chosen

    def _selected(self, candidates: Pool | Sequence[Any], inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        pool, task_inputs = predictions(candidates), self._task_inputs(inputs)
        with dspy.context(**adapter_override(self.adapter)):
            if self.method in ("listwise", "pointwise"):
                try:
                    return (yield from self._judged(pool, task_inputs))
                except Exception as error:  # noqa: BLE001 - a judge that is down or answers garbage
                    return self.judge_failed(pool, error)
            scores = [self._reward(task_inputs, c) for c in pool] if self.method == "reward" else self._votes(pool)
        return self._pick(pool, scores)

    def _judged(self, pool: list[Any], task_inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        if self.method == "listwise":
            request, order = self._judge_all(pool, task_inputs)
            return self._pick_listwise(pool, order, (yield Call(self.judge, request)))
        verdicts = yield Gather([Call(self.judge, self._judge_one(c, task_inputs)) for c in pool])
        return self._pick(pool, [v if isinstance(v, Exception) else v.score for v in verdicts])

    def _votes(self, pool: list[Any]) -> list[float]:
        texts = self._vote_texts(pool)
        return consensus_scores(texts) if self.vote == "consensus" else majority_counts(texts)

    def judge_failed(self, pool: list[Any], error: Exception) -> dspy.Prediction:
        """What a failed judge call leads to, by ``fallback``: a ``SelectionError`` naming ``error``, or the pick of
        the vote, with ``fallback`` (a ``FallbackReport``) saying why."""
        reason = f"{type(error).__name__}: {error}"
        if self.fallback == "raise":
            if isinstance(error, SelectionError):
                raise error
            raise SelectionError(f"The {self.method} judge failed ({reason}). Check the judge LM, or pass "
                                 f"fallback='vote' to pick by {self.vote} vote instead.") from error  # fmt: skip
        logger.warning("The %s judge failed (%s); selecting by %s vote instead.", self.method, reason, self.vote)
        voted = self._pick(pool, self._votes(pool))
        voted["fallback"] = FallbackReport(Failure.of(error, "select"), self.vote, voted.selected_index)
        voted["selection_error"] = reason  # for people; the fallback above is the data
        return voted

    def forward(self, candidates: Pool | Sequence[Any], **inputs) -> dspy.Prediction:
        return run(self._select(candidates, inputs))

    async def aforward(self, candidates: Pool | Sequence[Any], **inputs) -> dspy.Prediction:
        return await arun(self._select(candidates, inputs))

    def _reward(self, task_inputs: dict[str, Any], candidate: Any) -> float | Exception:
        """The reward, or the exception it raised: one failing candidate is skipped, not the whole selection."""
        try:
            return self.reward_fn(task_inputs, candidate)
        except Exception as error:  # noqa: BLE001 - reported by _pick, which skips the candidate
            return error

    def _task_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {name: inputs[name] for name in self.task_signature.input_fields if name in inputs}

    def _with_lm(self, request: dict[str, Any]) -> dict[str, Any]:
        return {**request, "lm": self.judge_lm} if self.judge_lm is not None else request

    def _judge_one(self, candidate: Any, task_inputs: dict[str, Any]) -> dict[str, Any]:
        rendered = render_candidate(candidate, list(self.task_signature.output_fields), 1)
        return self._with_lm({**task_inputs, "candidates": rendered})

    def _judge_all(self, pool: list[Any], task_inputs: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        order = presentation_order(len(pool), self.shuffle, task_inputs)
        rendered = render_candidates(pool, list(self.task_signature.output_fields), order)
        return self._with_lm({**task_inputs, "candidates": rendered}), order

    def _vote_texts(self, pool: list[Any]) -> list[str]:
        return [" | ".join(normalized(c.get(field, "")) for field in self.vote_fields) for c in pool]

    def _pick_listwise(self, pool: list[Any], order: list[int], verdict: dspy.Prediction) -> dspy.Prediction:
        label = verdict.best_candidate
        if not isinstance(label, int) or not 1 <= label <= len(pool):
            raise SelectionError(
                f"The judge named candidate {label!r}, but the ids run from 1 to {len(pool)}. Use a stronger judge "
                "LM, or select with reward_fn= or majority vote."
            )
        picked = order[label - 1]
        scores = [1.0 if i == picked else 0.0 for i in range(len(pool))]
        return self._pick(pool, scores, judge_comparison=verdict.comparison)

    def _pick(self, pool: list[Any], scores: list[Any], **extra: Any) -> dspy.Prediction:
        usable = []
        for index, score in enumerate(scores):
            if isinstance(score, Exception) or not isinstance(score, (int, float)) or math.isnan(score):
                logger.warning("Candidate %d could not be scored (%s); it is skipped.", index, score)
                usable.append(-math.inf)
            else:
                usable.append(float(score))
        if all(score == -math.inf for score in usable):
            raise SelectionError(
                f"None of the {len(pool)} candidates could be scored by {self.method}: check the reward function "
                "or judge LM (see the warnings above for each failure)."
            )
        best = max(range(len(pool)), key=lambda i: (usable[i], -i))
        chosen = dict(pool[best]) if isinstance(pool[best], dict) else dict(pool[best].items())  # values as typed
        return dspy.Prediction(**chosen, selected_index=best, scores=usable, **extra)

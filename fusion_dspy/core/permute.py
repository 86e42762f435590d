"""Order-bias control: fuse (or judge) the same candidates in several orders and keep what survives the swaps.

LLM fusors and judges favour candidates by where they are shown (arXiv 2305.17926). ``Permutations`` runs k
fusions of the same candidates in k different orders, concurrently, then keeps one of the k fused answers: the
one closest to all the others (``pick="consensus"``, a minimum-Bayes-risk choice over the fusions, as in
permutation self-consistency, arXiv 2310.07712), the most frequent one (``"majority"``), or the one a listwise
judge picks (``"listwise"``; if that judge fails, the consensus, the judge's failure among the failures).
For a listwise judge selecting among candidates, ``judge_in_orders`` counts only wins that survive the swapped
orders (arXiv 2406.07791). The orders are the shown order, its reverse (so the candidate shown first is also
shown last), then distinct shuffles seeded by the inputs (so a rerun sends the same prompts and hits the
cache). The prediction records the orders used, as indices into the candidates.
"""

import dataclasses
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import dspy

from fusion_dspy.core.pool import predictions
from fusion_dspy.core.report import Failure
from fusion_dspy.core.select import Select
from fusion_dspy.core.signatures import presentation_order, render_candidates
from fusion_dspy.core.steps import Call, Gather, Steps, adapter_override
from fusion_dspy.errors import SelectionError


def permutation_orders(count: int, k: int, inputs: dict[str, Any], seed: int = 0) -> list[list[int]]:
    """k distinct orders of ``count`` candidates: identity, reversed, then seeded shuffles (at most ``count!``).

    Example:
        >>> permutation_orders(3, 3, {"question": "q"})[:2]
        [[0, 1, 2], [2, 1, 0]]
        >>> len(permutation_orders(2, 5, {"question": "q"}))   # only 2! orders exist
        2
    """
    wanted = min(k, math.factorial(count))
    orders = [list(range(count)), list(range(count))[::-1]][:wanted]
    rng = random.Random(json.dumps([seed, inputs], sort_keys=True, default=str))
    if count <= 6:  # at most 720 orders: draw the rest from them all, without repeats
        rest = [list(p) for p in itertools.permutations(range(count)) if list(p) not in orders]
        return orders + rng.sample(rest, wanted - len(orders))
    while len(orders) < wanted:  # so many orders that a repeat is rare: shuffle until a new one comes
        order = list(range(count))
        rng.shuffle(order)
        if order not in orders:
            orders.append(order)
    return orders


class Permutations(dspy.Module):
    """Runs a fusor over the same candidates in k orders and keeps one fused answer.

    Args:
        signature: The task signature.
        k: How many orders (fusions); at most ``N!`` are distinct, and only those are used.
        pick: How to keep one fusion: ``"consensus"`` (closest to the other fusions), ``"majority"`` or
            ``"listwise"`` (an LLM judge, ``judge_lm``).
        judge_lm: The listwise judge's LM (default: the context's).
        seed: Seed of the shuffled orders beyond the first two.

    Example:
        >>> fusor = scripted_lm(lambda call: {"comparison": "ok", "answer": call.inputs["candidates"].split()[2]})
        >>> fuse = fd.Fuse("question -> answer", lm=fusor)
        >>> permuted = Permutations("question -> answer", k=3)
        >>> from fusion_dspy.core.steps import run      # FusionOfN(permutations=3) drives it for you
        >>> p = run(permuted.steps(fuse, [{"answer": "Paris"}, {"answer": "Lyon."}, {"answer": "Paris"}],
        ...                        {"question": "Capital?"}))
        >>> p.answer, p.fusion_orders
        ('Paris', [[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    """

    def __init__(self, signature: str | type[dspy.Signature], k: int = 2,
                 pick: Literal["consensus", "majority", "listwise"] = "consensus", judge_lm: dspy.BaseLM | None = None,
                 seed: int = 0):  # fmt: skip
        super().__init__()
        if k < 2:
            raise ValueError(f"permutations must be at least 2 to compare orders, got {k}.")
        if pick not in ("consensus", "majority", "listwise"):
            raise ValueError(f"pick must be 'consensus', 'majority' or 'listwise', got {pick!r}.")
        self.k, self.seed = k, seed
        judged = pick == "listwise"  # a judge that fails falls back to the consensus of the fusions, saying why
        self.pick = Select(signature, judge="listwise" if judged else None, judge_lm=judge_lm,
                           vote="consensus" if judged else pick, fallback="select")  # fmt: skip

    def steps(self, fuse: Any, candidates: Sequence[Any], inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        """Fuse ``candidates`` in k orders with ``fuse`` (a ``Fuse``), then keep one fusion."""
        pool = predictions(candidates)
        task_inputs = {name: inputs[name] for name in fuse.task_signature.input_fields if name in inputs}
        orders = permutation_orders(len(pool), self.k, task_inputs, self.seed)
        fused = yield Gather([Call(fuse, {**inputs, "candidates": [pool[i] for i in order]}) for order in orders])
        usable = [i for i, result in enumerate(fused) if not isinstance(result, Exception)]
        if not usable:
            raise fused[0]
        # What the fusor saw: Fuse may shuffle again (shuffle=True), deterministically, on top of our order.
        shown = [[order[j] for j in presentation_order(len(order), fuse.shuffle, task_inputs)] for order in orders]
        failures = [Failure.of(fused[i], "permutation", index=i) for i in range(len(fused)) if i not in usable]
        if len(usable) == 1:
            chosen, scores = fused[usable[0]], [1.0]
            index = usable[0]
        else:
            picked = yield Call(self.pick, {**inputs, "candidates": [fused[i] for i in usable]})
            index, scores = usable[picked.selected_index], picked.scores
            chosen = fused[index]
            if picked.get("fallback") is not None:  # the listwise judge failed: the consensus kept instead
                failures.append(dataclasses.replace(picked.fallback.cause, stage="judge"))
        fields = {name: value for name, value in chosen.items() if name != "candidate_order"}
        return dspy.Prediction(**fields, fusion_orders=shown, permutation_index=index, permutation_scores=scores,
                               permutation_failures=failures)  # fmt: skip


def judge_in_orders(select: Select, candidates: Sequence[Any], inputs: dict[str, Any], k: int = 2,
                    seed: int = 0) -> Steps[dspy.Prediction]:
    """A listwise judge's pick that must survive k orders (identity, reversed, shuffles): swap-proof wins only.

    Each order is judged concurrently. The winner is the candidate picked under every order; when no candidate
    is, the one picked most often (then the earliest), and ``judge_consistent`` is False. The prediction keeps
    ``judge_orders`` (the orders shown), ``judge_wins`` (wins per candidate) and ``judge_failures`` (a ``Failure`` per
    order whose judge call failed). When no order gave a valid pick, ``select``'s ``fallback`` applies: a
    ``SelectionError`` naming the judge's failure, or its vote.

    Example:
        >>> always_first = scripted_lm(lambda call: {"comparison": "the first", "best_candidate": 1})
        >>> select = fd.Select("question -> answer", judge="listwise", judge_lm=always_first)
        >>> from fusion_dspy.core.steps import run
        >>> p = run(judge_in_orders(select, [{"answer": "Lyon"}, {"answer": "Paris"}], {"question": "Capital?"}))
        >>> p.judge_orders, p.judge_wins, p.judge_consistent
        ([[0, 1], [1, 0]], [1, 1], False)
    """
    if select.method != "listwise":
        raise ValueError("Judging in several orders needs a listwise judge: Select(..., judge='listwise').")
    pool = predictions(candidates)
    task_inputs = {name: inputs[name] for name in select.task_signature.input_fields if name in inputs}
    orders = permutation_orders(len(pool), k, task_inputs, seed)
    outputs = list(select.task_signature.output_fields)
    lm = {"lm": select.judge_lm} if select.judge_lm is not None else {}
    with dspy.context(**adapter_override(select.adapter)):
        verdicts = yield Gather([Call(select.judge, {**task_inputs, "candidates": render_candidates(pool, outputs, o),
                                                     **lm}) for o in orders])  # fmt: skip
    wins: Counter = Counter()
    for order, verdict in zip(orders, verdicts, strict=True):
        label = getattr(verdict, "best_candidate", None)
        if isinstance(label, int) and 1 <= label <= len(pool):
            wins[order[label - 1]] += 1
    failures = [Failure.of(v, "judge", index=i) for i, v in enumerate(verdicts) if isinstance(v, Exception)]
    judged = {"judge_orders": orders, "judge_wins": [wins[i] for i in range(len(pool))], "judge_failures": failures}
    if not wins:  # the select's fallback decides: raise, or vote (a judge that is down is named, not hidden)
        failed = next((v for v in verdicts if isinstance(v, Exception)), None)
        voted = select.judge_failed(pool, failed or SelectionError(
            f"The judge named no valid candidate in any of the {len(orders)} orders: use a stronger judge LM, or "
            "select with reward_fn= or majority vote."))  # fmt: skip
        return dspy.Prediction(**voted.toDict(), **judged, judge_consistent=False)
    best = max(range(len(pool)), key=lambda i: (wins[i], -i))
    chosen = dict(pool[best]) if isinstance(pool[best], dict) else pool[best].toDict()
    return dspy.Prediction(**chosen, selected_index=best, scores=[float(wins[i]) for i in range(len(pool))],
                           **judged, judge_consistent=wins[best] == len(orders))  # fmt: skip

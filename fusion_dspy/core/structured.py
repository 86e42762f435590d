"""Fusion beyond one fusor call: layers, then group fusion, then the final fusion in one or several orders.

``FusionOfN`` hands its pool here. The three structures compose in a fixed order:

1. **layers** (``layers=L``, ``fusion_dspy.core.layers``): L-1 more rounds of proposers, each reading the answers
   of the round before; the last round's answers go on;
2. **groups** (``group_size=k`` or from ``context_window``, ``fusion_dspy.core.windowed``): while they do not fit
   one fusor call, they are fused in groups, and the fused answers go on;
3. **the final fusion**: one ``Fuse`` call, or k calls in k orders with one kept (``permutations=k``,
   ``fusion_dspy.core.permute``).

With none of them set this is exactly one ``Fuse`` call. The prediction gains what was done:
``layer_candidates`` (every layer's answers), ``layer_failures`` (the failed and straggling samples of layers
2..L, as ``Failure``s of stage ``layer_<i>``), ``fusion_groups`` (the groups fused at each level) and
``fusion_orders`` (the orders of the final fusion), each only when that structure was used.
"""

import dataclasses
from typing import Any

import dspy

from fusion_dspy.core.layers import Layers
from fusion_dspy.core.permute import Permutations
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.steps import Call, Steps
from fusion_dspy.core.windowed import reduce_in_groups


def fuse_structured(fuse: Any, pool: Pool, inputs: dict[str, Any], layers: Layers | None = None,
                    group_size: int | str | None = None, context_window: int | None = None,
                    permute: Permutations | None = None, limit: int | None = None) -> Steps[dspy.Prediction]:
    """Layers, groups and the final (possibly permuted) fusion of ``pool`` with ``fuse``; see the module doc.

    Example:
        >>> fusor = scripted_lm(lambda call: {"comparison": "ok", "answer": str(call.inputs["candidates"].count("<c"))})
        >>> from fusion_dspy.core.steps import run
        >>> pool = fd.Pool.of([{"answer": str(i)} for i in range(5)])
        >>> p = run(fuse_structured(fd.Fuse("question -> answer", lm=fusor), pool, {"question": "q"}, group_size=2))
        >>> p.fusion_groups, p.answer       # 5 -> 3 -> 2 answers, then the final fusion of 2
        ([[[0, 1], [2, 3], [4]], [[0, 1], [2]]], '2')
    """
    extra: dict[str, Any] = {}
    if layers is not None:
        pools = yield from layers.steps(pool, inputs)
        extra["layer_candidates"] = [p.predictions for p in pools]
        extra["layer_failures"] = [dataclasses.replace(failure, stage=f"layer_{number}") for number, drawn in
                                   enumerate(pools[1:], 2) for failure in (*drawn.failures, *drawn.stragglers)]
        pool = pools[-1].require()
    finalists, levels = yield from reduce_in_groups(fuse, pool, inputs, group_size, context_window, limit)
    if levels:
        extra["fusion_groups"] = levels
    if permute is not None and len(finalists) > 1:
        fused = yield from permute.steps(fuse, finalists, inputs)
    else:
        fused = yield Call(fuse, {**inputs, "candidates": finalists})
    if not extra:
        return fused
    fields = fused.toDict()
    if levels:  # the final fusion's order is over the finalists, not over the pool
        fields.pop("candidate_order", None)
    return dspy.Prediction(**fields, **extra)

"""Group fusion: a pool too large for the fusor's context is fused in groups, then the fused answers are fused.

The scheme is **groups, then fuse the fused** (a tree), not Self-MoA-Seq's sliding window (arXiv 2502.00674),
which folds a few new candidates at a time into one running synthesis. The tree was chosen because

- the groups of a level are independent, so they are fused *concurrently*: latency grows with the depth,
  ``ceil(log_k N)`` fusor calls, where the sliding window makes ``ceil((N - 1) / (k - 1))`` calls one after
  another;
- every candidate weighs the same at its level, where the window rewrites the earliest candidates through
  every later step and puts each new group next to a synthesis that already looks like a consensus;
- each call is an ordinary ``Fuse`` call (same predictor, same signature), so DSPy's optimizers tune one fusor
  whatever the pool size, and the cache reuses every group's fusion across reruns.

Group sizes are either given (``group_size=k``) or computed from the fusor's context window: the largest k such
that the k longest candidates of a level, the task inputs, the instruction and the fusor's answer fit. Tokens
are estimated at ``CHARS_PER_TOKEN`` characters each (deliberately generous for English). A pool whose largest
candidate alone cannot fit with a second one is an error that says so, never a silent truncation.
"""

import math
from collections.abc import Sequence
from typing import Any

import dspy

from fusion_dspy.core.context import ContextOverflowError
from fusion_dspy.core.pool import predictions
from fusion_dspy.core.signatures import render_candidate
from fusion_dspy.core.steps import Call, Gather, Steps

CHARS_PER_TOKEN = 4  # a rough, deliberately generous rule for English text
PROMPT_OVERHEAD = 150  # field markers, tags and the adapter's own words, in tokens
DEFAULT_ANSWER_TOKENS = 1000  # the fusor's answer, when its LM sets no max_tokens and no candidate is longer


def estimate_tokens(text: str) -> int:
    """Tokens a text is taken to need in a prompt (``CHARS_PER_TOKEN`` characters each, rounded up).

    Example:
        >>> estimate_tokens("four score and seven")
        5
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _candidate_tokens(candidates: Sequence[Any], output_fields: Sequence[str]) -> list[int]:
    """The estimated prompt tokens of each candidate as the fusor sees it (tags included)."""
    return [estimate_tokens(render_candidate(c, output_fields, i + 1)) for i, c in enumerate(candidates)]


def _fusor_budget(fuse: Any, inputs: dict[str, Any], context_window: int, longest: int) -> int:
    """Tokens left for candidates in one fusor call: the window minus instruction, inputs, overhead and answer."""
    lm = fuse.fusor_lm or fuse.predict.lm or dspy.settings.lm
    answer = (getattr(lm, "kwargs", None) or {}).get("max_tokens") or max(longest, DEFAULT_ANSWER_TOKENS)
    task_inputs = sum(estimate_tokens(str(inputs[name])) for name in fuse.task_signature.input_fields if name in inputs)
    instructions = estimate_tokens(fuse.predict.signature.instructions)
    return context_window - instructions - task_inputs - PROMPT_OVERHEAD - answer


def fitting_group_size(sizes: Sequence[int], budget: int, context_window: int) -> int:
    """The largest k such that any k of these candidates fit the budget (the k longest do): all of them, or >= 2.

    Example:
        >>> fitting_group_size([300, 100, 200, 100], budget=520, context_window=2000)
        2
    """
    longest_first, total, k = sorted(sizes, reverse=True), 0, 0
    for size in longest_first:
        if total + size > budget:
            break
        total, k = total + size, k + 1
    if k < min(2, len(sizes)) or k == 0:
        wanted = "two" if len(sizes) > 1 else "one"
        raise ContextOverflowError(
            f"The fusor's context window of {context_window} tokens cannot hold {wanted} of these candidates (the "
            f"longest are about {longest_first[:2]} tokens, and {max(budget, 0)} tokens are left for candidates after "
            "the instruction, inputs and answer): nothing is fused in part. Use a fusor with a longer context_window, "
            "lower the generators' max_tokens, or select instead of fusing (BestOfN, or fallback='select')."
        )
    return k


def split_groups(count: int, group_size: int) -> list[list[int]]:
    """``0..count-1`` in ``ceil(count / group_size)`` consecutive groups whose sizes differ by one at most.

    Example:
        >>> split_groups(7, 3)
        [[0, 1, 2], [3, 4], [5, 6]]
    """
    groups = math.ceil(count / group_size)
    base, extra = divmod(count, groups)
    bounds, start = [], 0
    for g in range(groups):
        end = start + base + (1 if g < extra else 0)
        bounds.append(list(range(start, end)))
        start = end
    return bounds


def check_group_size(group_size: int | str | None, context_window: int | None = None) -> int | str | None:
    """A valid ``group_size``: ``None`` (one call), ``"auto"`` (needs the context window) or ``k >= 2``.

    Example:
        >>> check_group_size(4), check_group_size("auto", context_window=8192)
        (4, 'auto')
    """
    if group_size == "auto" and not context_window:
        raise ValueError("group_size='auto' sizes groups from the fusor's context window: pass context_window=.")
    if group_size is None or group_size == "auto" or (isinstance(group_size, int) and group_size >= 2):
        return group_size
    raise ValueError(f"group_size must be None, 'auto' or an integer of at least 2, got {group_size!r}.")


def reduce_in_groups(fuse: Any, candidates: Sequence[Any], inputs: dict[str, Any], group_size: int | str | None,
                     context_window: int | None = None, limit: int | None = None) -> Steps[tuple[list, list]]:
    """Fuse groups level by level until the rest fits one fusor call; returns ``(finalists, levels)``.

    ``levels[i]`` lists the groups fused at level ``i`` (indices into that level's answers). A group of one is
    passed on as it is. With ``group_size="auto"`` (or ``None`` and a ``context_window``) the size is computed
    per level; without either, nothing is grouped. The first failed group fusion is raised.

    Example:
        >>> fuse = fd.Fuse("question -> answer", lm=scripted_lm(lambda call: {"comparison": "c", "answer": "f"}))
        >>> from fusion_dspy.core.steps import run
        >>> pool = [{"answer": str(i)} for i in range(6)]
        >>> finalists, levels = run(reduce_in_groups(fuse, pool, {"question": "q"}, group_size=3))
        >>> [f["answer"] for f in finalists], levels
        (['f', 'f'], [[[0, 1, 2], [3, 4, 5]]])
    """
    current, levels = list(predictions(candidates)), []
    outputs = list(fuse.task_signature.output_fields)
    while True:
        if isinstance(group_size, int):
            k = group_size
        elif context_window:
            sizes = _candidate_tokens(current, outputs)
            k = fitting_group_size(sizes, _fusor_budget(fuse, inputs, context_window, max(sizes)), context_window)
        else:
            k = len(current)
        if len(current) <= k:
            return current, levels
        groups = split_groups(len(current), k)
        fused = yield Gather([Call(fuse, {**inputs, "candidates": [current[i] for i in g]}) for g in groups
                              if len(g) > 1], limit)  # fmt: skip
        failed = [result for result in fused if isinstance(result, Exception)]
        if failed:
            raise failed[0]
        answers = iter(fused)
        current = [next(answers) if len(g) > 1 else current[g[0]] for g in groups]
        levels.append(groups)

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
that the k longest candidates of a level, the rest of the fusor's prompt (instruction, task inputs, demos, the
adapter's own words) and its answer fit. Tokens are counted by the counter that checks every fusor call
(``fusion_dspy.core.context.count_tokens``: the fusor model's tokenizer, else a GPT tokenizer), so a group sized
here passes that check, in any language. A pool whose largest candidate alone cannot fit with a second one is an
error that says so, never a silent truncation.
"""

import math
from collections.abc import Sequence
from typing import Any

import dspy

from fusion_dspy.core.context import ContextOverflowError, count_tokens, most_tokens, prompt_messages
from fusion_dspy.core.pool import predictions
from fusion_dspy.core.signatures import presentation_order, render_candidate, render_candidates
from fusion_dspy.core.steps import Call, Gather, Steps

DEFAULT_ANSWER_TOKENS = 1000  # the fusor's answer, when its LM sets no max_tokens and no candidate is longer
# Rough rules read only by optimizers/context.py's config-time guess of N_max; groups are sized by real counts.
CHARS_PER_TOKEN = 4
PROMPT_OVERHEAD = 150


def _candidate_tokens(lm: Any, candidates: Sequence[Any], output_fields: Sequence[str]) -> list[int]:
    """The prompt tokens of each candidate as the fusor sees it: its tags and the blank line after it included."""
    return [count_tokens(lm, text=render_candidate(c, output_fields, i + 1) + "\n\n") for i, c in enumerate(candidates)]


def _prompt(fuse: Any, candidates: Sequence[Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The fusor's prompt for these candidates, rendered as ``Fuse`` renders it."""
    task_inputs = {name: inputs[name] for name in fuse.task_signature.input_fields if name in inputs}
    order = presentation_order(len(candidates), fuse.shuffle, task_inputs)
    shown = render_candidates(candidates, list(fuse.task_signature.output_fields), order)
    return prompt_messages(fuse.predict, {**task_inputs, "candidates": shown}, fuse.adapter)


def _prompt_tokens(fuse: Any, lm: Any, candidates: Sequence[Any], inputs: dict[str, Any]) -> int:
    """The fusor's prompt for these candidates, counted as its check counts."""
    return count_tokens(lm, messages=_prompt(fuse, candidates, inputs))


def _answer_room(lm: Any, longest: int) -> int:
    """Tokens kept for the fused answer: the fusor's ``max_tokens``, else as long as the longest candidate."""
    return (getattr(lm, "kwargs", None) or {}).get("max_tokens") or max(longest, DEFAULT_ANSWER_TOKENS)


def _all_fit(fuse: Any, lm: Any, candidates: Sequence[Any], inputs: dict[str, Any], context_window: int) -> bool:
    """All of them fit one call, answer included, by ``most_tokens``'s bound: nothing to count."""
    prompt = most_tokens(_prompt(fuse, candidates, inputs))
    output_fields = list(fuse.task_signature.output_fields)
    longest = max(len(render_candidate(c, output_fields, i + 1).encode("utf-8")) + 4 for i, c in enumerate(candidates))
    return prompt is not None and prompt + _answer_room(lm, longest) <= context_window


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
        raise _cannot_hold(sizes, budget, context_window)
    return k


def _cannot_hold(sizes: Sequence[int], budget: int, context_window: int) -> ContextOverflowError:
    wanted = "two" if len(sizes) > 1 else "one"
    return ContextOverflowError(
        f"The fusor's context window of {context_window} tokens cannot hold {wanted} of these candidates (the "
        f"longest are about {sorted(sizes, reverse=True)[:2]} tokens, and {max(budget, 0)} tokens are left for "
        "candidates after the instruction, inputs and answer): nothing is fused in part. Use a fusor with a longer "
        "context_window, lower the generators' max_tokens, or select instead of fusing (BestOfN, or "
        "fallback='select')."
    )


def auto_group_size(fuse: Any, candidates: Sequence[Any], inputs: dict[str, Any], context_window: int) -> int:
    """The largest k whose groups of ``candidates`` each fit ``fuse``'s window with its answer, as its check counts.

    All of them when a bound clears the window without counting (``_all_fit``, as most pools do). Else k comes
    from each candidate's tokens and the rest of the prompt's (``fitting_group_size``). Counts of pieces
    do not quite add up to the count of their whole (a tokenizer merges across the joins, litellm counts long
    text in slices), so the groups are then counted as they will be sent, and k lowered until each one fits.

    Example:
        >>> fuse = fd.Fuse("question -> answer", lm=dspy.LM("openai/gpt-4o", max_tokens=100))
        >>> pool = [{"answer": "巴黎" * 40}] * 5  # 50 tokens each; the rest of the prompt is 357
        >>> auto_group_size(fuse, pool, {"question": "Capital?"}, context_window=600)
        2
        >>> auto_group_size(fuse, pool, {"question": "Capital?"}, context_window=700)
        4
    """
    lm = fuse.fusor_lm or fuse.predict.lm or dspy.settings.lm
    if candidates and _all_fit(fuse, lm, candidates, inputs, context_window):
        return len(candidates)
    sizes = _candidate_tokens(lm, candidates, list(fuse.task_signature.output_fields))
    answer = _answer_room(lm, max(sizes))
    room = context_window - answer
    budget = room - _prompt_tokens(fuse, lm, [], inputs)
    k = fitting_group_size(sizes, budget, context_window)
    while True:
        groups = split_groups(len(candidates), k)
        sent = [g for g in groups if len(g) > 1 or len(groups) == 1]  # a group of one is passed on, not fused
        if all(_prompt_tokens(fuse, lm, [candidates[i] for i in g], inputs) <= room for g in sent):
            return k
        k -= 1
        if k < min(2, len(candidates)):
            raise _cannot_hold(sizes, budget, context_window)


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
    while True:
        if isinstance(group_size, int):
            k = group_size
        elif context_window:
            k = auto_group_size(fuse, current, inputs, context_window)
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

"""Will the fusor's prompt fit? Count it before sending, instead of learning it from whatever the server says.

The prompt is formatted exactly as DSPy will send it (the fusor's adapter, signature and demos) and counted by
``count_tokens``: litellm's token counter, with the model's own tokenizer where litellm has it, else a GPT tokenizer
(an estimate, e.g. for a local server's model). It is the one counter of the library: group fusion sizes its
groups with it too (``fusion_dspy.core.windowed``), so a group it forms passes this check. The window is the one
given (the config's ``context_window``), else litellm's model info, else unknown: no check.

Most prompts are far inside their window, and counting them would import litellm (seconds of start-up, on an
engine that does not otherwise need it) and run a tokenizer on every fusion. So ``check_fits`` first bounds the
count from above without a tokenizer (``most_tokens``) and counts only a prompt that bound does not clear.
"""

from typing import Any

import dspy

from fusion_dspy.errors import FusionError


class ContextOverflowError(FusionError):
    """The fusor's prompt (N candidates and the task) and its answer do not fit the fusor's context window."""


def known_context_window(model: str) -> int | None:
    """Input tokens litellm knows the model to read, or ``None`` for a model it does not know (a local server)."""
    from fusion_dspy._litellm import model_cost

    # Looked up in litellm's cost map directly: get_model_info prints a banner for every model it does not know.
    # The map is read without importing litellm (fusion_dspy._litellm): a native-engine process never imports it.
    known = model_cost()
    info = known.get(model) or known.get(model.split("/", 1)[-1]) or {}
    return info.get("max_input_tokens")


def count_tokens(lm: Any, text: str | None = None, messages: list[dict[str, Any]] | None = None) -> int:
    """Tokens ``lm``'s model reads for a prompt's ``messages`` (with the chat format's own), or for a ``text`` in one.

    Counted by litellm with the model's tokenizer where it has one, else with a GPT tokenizer (an estimate), for
    a model it does not know or no ``lm`` at all. The GPT tokenizers ship with litellm and count offline; for a
    few families (Llama, Cohere) litellm fetches the model's tokenizer, falling back to a GPT one if it cannot.

    Args:
        lm: The LM whose model's tokenizer counts (its ``model`` name), or ``None``.
        text: A piece of a prompt, such as one candidate.
        messages: A whole prompt, as the adapter formats it.

    Example:
        >>> count_tokens(dspy.LM("openai/gpt-4o"), text="four score and seven"), count_tokens(None, text="八十七年前")
        (4, 7)
    """
    from fusion_dspy._litellm import import_litellm

    return import_litellm().token_counter(model=getattr(lm, "model", None) or "", text=text, messages=messages)


def prompt_messages(predict: dspy.Predict, inputs: dict[str, Any], adapter: Any = None) -> list[dict[str, Any]]:
    """The messages ``predict`` would send for ``inputs``, formatted by ``adapter`` (else the context's)."""
    adapter = adapter or dspy.settings.adapter or dspy.ChatAdapter()
    return adapter.format(predict.signature, predict.demos, inputs)


def most_tokens(messages: list[dict[str, Any]]) -> int | None:
    """At most how many tokens ``count_tokens`` finds in ``messages``, known without a tokenizer; ``None`` when a
    message holds more than text (an image's tokens are not bounded by its bytes).

    The tokenizers litellm counts with (tiktoken's byte-level BPE, or a model's Hugging Face tokenizer) never make
    more tokens of a text than it has UTF-8 bytes, and add at most two special tokens; litellm adds one token for a
    name, up to 4 a message for the chat format and 3 to prime the reply. (It counts a text exactly up to its
    ``TOKEN_COUNTER_MAX_EXACT_CHARS``, 4 million characters by default, and extrapolates from samples beyond.)
    ``tests/test_context.py`` holds the bound to litellm's counts.

    Example:
        >>> messages = [{"role": "user", "content": "四 score and seven"}]
        >>> most_tokens(messages), count_tokens(dspy.LM("openai/gpt-4o"), messages=messages)
        (36, 11)
    """
    total = 3
    for message in messages:
        values = [value for value in message.values() if value is not None]
        if not all(isinstance(value, str) for value in values):
            return None
        total += 4 + sum(len(value.encode("utf-8")) + 3 for value in values)
    return total


def check_fits(lm: Any, predict: dspy.Predict, inputs: dict[str, Any], candidates: int, window: int | None,
               adapter: Any = None) -> None:
    """Raise ``ContextOverflowError`` naming N, the sizes and the fixes when the prompt and answer do not fit.

    Example:
        >>> fusor = dspy.Predict("question, candidates -> answer")
        >>> check_fits(lm, fusor, {"question": "Why?", "candidates": "because " * 300}, candidates=3, window=100)
        Traceback (most recent call last):
        ...
        fusion_dspy.core.context.ContextOverflowError: The fusor's prompt for these 3 candidates is about ...
    """
    window = window or known_context_window(getattr(lm, "model", "") or "")
    if not window:
        return
    answer = int((getattr(lm, "kwargs", {}) or {}).get("max_tokens") or 0)
    messages = prompt_messages(predict, inputs, adapter)
    bound = most_tokens(messages)
    if bound is not None and bound + answer <= window:
        return  # fits, whatever the tokenizer: no need to count
    needed = count_tokens(lm, messages=messages)
    if needed + answer > window:
        raise ContextOverflowError(
            f"The fusor's prompt for these {candidates} candidates is about {needed} tokens, plus up to {answer} for "
            f"its answer, but {getattr(lm, 'model', 'the fusor')} reads {window}. Fuse fewer candidates (a smaller "
            "n), shorten them (the generators' max_tokens), use a fusor with a longer context_window, or pass "
            "fallback='select' to select one instead."
        )

"""Will the fusor's prompt fit? Count it before sending, instead of learning it from whatever the server says.

The prompt is formatted exactly as DSPy will send it (the fusor's adapter, signature and demos) and counted by
``count_tokens``: litellm's token counter, with the model's own tokenizer where litellm has it, else a GPT tokenizer
(an estimate, e.g. for a local server's model). It is the one counter of the library: group fusion sizes its
groups with it too (``fusion_dspy.core.windowed``), so a group it forms passes this check. The window is the one
given (the config's ``context_window``), else litellm's model info, else unknown: no check.
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


def prompt_tokens(lm: Any, predict: dspy.Predict, inputs: dict[str, Any], adapter: Any = None) -> int:
    """Tokens of the prompt ``predict`` would send ``lm`` for ``inputs``."""
    adapter = adapter or dspy.settings.adapter or dspy.ChatAdapter()
    return count_tokens(lm, messages=adapter.format(predict.signature, predict.demos, inputs))


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
    needed = prompt_tokens(lm, predict, inputs, adapter)
    if needed + answer > window:
        raise ContextOverflowError(
            f"The fusor's prompt for these {candidates} candidates is about {needed} tokens, plus up to {answer} for "
            f"its answer, but {getattr(lm, 'model', 'the fusor')} reads {window}. Fuse fewer candidates (a smaller "
            "n), shorten them (the generators' max_tokens), use a fusor with a longer context_window, or pass "
            "fallback='select' to select one instead."
        )

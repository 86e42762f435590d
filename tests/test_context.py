"""The fusor's prompt is counted only when a bound found without a tokenizer does not clear its window."""

import dspy
import litellm
import pytest

import fusion_dspy as fd
import fusion_dspy.core.context as context
import fusion_dspy.core.windowed as windowed
from fusion_dspy.core.context import ContextOverflowError, check_fits, most_tokens
from fusion_dspy.testing import scripted_lm

TEXTS = ["Paris is the capital of France. " * 40, "巴黎是法国的首都，也是欧洲最著名的城市之一。" * 30,
         "emoji 🎉🚀👩‍👩‍👧‍👦 and accents: déjà vu, naïve, Ελληνικά, русский " * 20, "    \n\t  " * 200,
         "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}\n" * 25, "a" * 5000, "", "<|endoftext|> " * 50]
# Models whose tokenizer litellm has offline (o200k, cl100k), and one it does not know (a GPT tokenizer stands in).
MODELS = ["openai/gpt-4o", "openai/gpt-3.5-turbo", "hosted_vllm/some-local-model"]


@pytest.mark.parametrize("model", MODELS)
def test_the_bound_is_never_below_litellms_count(model):
    for text in TEXTS:
        for messages in ([{"role": "user", "content": text}],
                         [{"role": "system", "content": text[: len(text) // 2]}, {"role": "user", "content": text},
                          {"role": "assistant", "content": text[::-1], "name": "fusor"}]):  # fmt: skip
            assert most_tokens(messages) >= litellm.token_counter(model=model, messages=messages), (model, text[:30])


def test_no_bound_for_a_message_with_more_than_text():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert most_tokens([{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]) is None


def predictor_and_inputs(words: int):
    return dspy.Predict("question, candidates -> answer"), {"question": "Why?", "candidates": "because " * words}


def test_a_prompt_the_bound_clears_is_not_counted(monkeypatch):
    monkeypatch.setattr(context, "count_tokens", lambda *args, **kwargs: pytest.fail("counted"))
    predict, inputs = predictor_and_inputs(300)
    check_fits(dspy.LM("openai/gpt-4o", max_tokens=500), predict, inputs, candidates=3, window=128_000)


def test_a_prompt_the_bound_does_not_clear_is_counted_and_held_to_the_window():
    predict, inputs = predictor_and_inputs(300)  # ~3,100 bytes of prompt, ~470 tokens
    lm = dspy.LM("openai/gpt-4o", max_tokens=100)
    check_fits(lm, predict, inputs, candidates=3, window=1_000)  # over the bound, within the count: fits
    with pytest.raises(ContextOverflowError, match=r"about \d+ tokens, plus up to 100"):
        check_fits(lm, predict, inputs, candidates=3, window=500)


def test_a_pool_the_bound_clears_is_fused_in_one_call_without_counting(monkeypatch):
    monkeypatch.setattr(windowed, "count_tokens", lambda *args, **kwargs: pytest.fail("counted"))
    fuse = fd.Fuse("question -> answer", lm=scripted_lm(lambda call: {"comparison": "c", "answer": "f"},
                                                        model="openai/gpt-4o", max_tokens=200))  # fmt: skip
    pool = [{"answer": f"answer {i} " * 20} for i in range(8)]
    assert windowed.auto_group_size(fuse, pool, {"question": "Capital?"}, context_window=128_000) == 8

"""Group fusion sizes its groups with the token counter that checks every fusor call, in any language."""

import re

import litellm
import pytest

import fusion_dspy as fd
from fusion_dspy.core.context import ContextOverflowError
from fusion_dspy.testing import scripted_lm

FUSOR = "openai/gpt-4o"  # litellm ships this model's tokenizer (o200k): counted offline, not estimated
SHOWN = re.compile(r'<candidate id="\d+">\n(.*?)\n</candidate>', re.DOTALL)
CHINESE = "巴黎是法国的首都，也是欧洲最著名的城市之一。"
ENGLISH = "Paris is the capital of France and one of the best known cities in Europe. "


def tokens(text: str) -> int:
    """The test's own ruler: litellm's counter for the fusor's model, called directly."""
    return litellm.token_counter(model=FUSOR, text=text)


def text_of(sentence: str, wanted: int) -> str:
    """``sentence`` repeated, then cut to the longest prefix of at most ``wanted`` tokens."""
    text = sentence * (wanted // max(tokens(sentence) - 1, 1) + 2)
    while tokens(text) > wanted:
        text = text[:-1]
    return text


def run(answer: str, n: int, window: int | None, max_tokens: int = 200, **options):
    """FusionOfN over ``n`` generated copies of ``answer`` (numbered) with a window: the prediction and the fusor."""

    def respond(call):
        if call.wants("comparison"):
            return {"comparison": "compared", "answer": f"fused {len(SHOWN.findall(call.inputs['candidates']))}"}
        return {"answer": f"{call.index:02d} {answer}"}

    generator = scripted_lm(respond, model="scripted/generator")
    fusor = scripted_lm(respond, model=FUSOR, max_tokens=max_tokens)
    fusion = fd.FusionOfN("question -> answer", n=n, lm=generator, fusor_lm=fusor, context_window=window, **options)
    return fusion(question="Which city is the capital of France?"), fusor


def sent_tokens(fusor) -> list[int]:
    """The tokens of every prompt the fusor was sent, counted as litellm counts the messages."""
    return [litellm.token_counter(model=FUSOR, messages=entry["messages"]) for entry in fusor.history]


def test_a_chinese_pool_over_the_window_is_grouped_and_fused_not_refused():
    p, fusor = run(text_of(CHINESE, 190), n=12, window=2000)
    assert p.fusion_groups and all(len(g) > 1 for g in p.fusion_groups[0]), "the pool was fused in groups"
    assert len(p.candidates) == 12 and p.answer.startswith("fused")
    assert len(fusor.history) == len(p.fusion_groups[0]) + 1, "each group fused, then the fused answers"
    assert max(sent_tokens(fusor)) + 200 <= 2000, "every prompt sent fits the window with the answer"
    assert sum(len(g) for g in p.fusion_groups[0]) == 12


def test_english_and_chinese_pools_of_the_same_token_count_get_the_same_group_size():
    english, chinese = text_of(ENGLISH, 190), text_of(CHINESE, 190)
    assert tokens(english) == tokens(chinese) and len(english) > 3 * len(chinese)  # same tokens, unlike characters
    english_p, _ = run(english, n=12, window=2000)
    chinese_p, _ = run(chinese, n=12, window=2000)
    assert english_p.fusion_groups == chinese_p.fusion_groups
    assert 2 <= len(english_p.fusion_groups[0]) < 12


@pytest.mark.parametrize("window", range(800, 2600, 97))
@pytest.mark.parametrize("sentence", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_a_group_sized_for_the_window_always_passes_the_fusor_check(sentence, window):
    """Either grouping refuses the pool up front, or every fusor call it leads to is sent: never the check's error."""
    try:
        p, fusor = run(text_of(sentence, 190), n=9, window=window)
    except ContextOverflowError as error:
        assert "cannot hold two of these candidates" in str(error), "refused by the grouping, not by the check"
        return
    assert max(sent_tokens(fusor)) + 200 <= window and p.answer.startswith("fused")


@pytest.mark.parametrize("sentence", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_groups_are_counted_as_sent_where_the_counts_of_the_parts_do_not_add_up(sentence):
    """litellm counts long text in slices, so a prompt can count a few tokens more than its parts: at the window
    the parts' counts just admit, the groups themselves are counted and made smaller, before the check fires."""
    answer = text_of(sentence, 190)
    _, measured = run(answer, n=9, window=None, group_size=5)
    five = max(sent_tokens(measured))  # the prompt of the group of five (the largest), as the check counts it
    p, fusor = run(answer, n=9, window=five + 200)
    assert p.fusion_groups == [[[0, 1, 2, 3, 4], [5, 6, 7, 8]]], "five fit exactly: not made smaller"
    p, fusor = run(answer, n=9, window=five + 200 - 1)
    assert p.fusion_groups == [[[0, 1, 2], [3, 4, 5], [6, 7, 8]]], "five miss by one token: four at most"
    assert max(sent_tokens(fusor)) + 200 < five + 200


def test_a_candidate_too_long_to_fit_with_another_still_raises_naming_the_fix():
    # About 700 tokens each: one fits the 1400-token window next to the prompt and answer, two do not.
    with pytest.raises(ContextOverflowError, match="cannot hold two of these candidates.*longer context_window"):
        run(text_of(CHINESE, 700), n=4, window=1400)
    p, fusor = run(text_of(CHINESE, 700), n=1, window=1400)
    assert p.answer == "fused 1" and max(sent_tokens(fusor)) + 200 <= 1400, "one candidate that fits is fused"

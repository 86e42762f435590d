"""What the demo says fusion did: a fused answer that copies a candidate, answers from DSPy's cache, panel titles
that never end mid-word. Against a loopback stub (no embedded model)."""

import io
import re

import dspy
import pytest
import yaml
from rich.console import Console
from rich.text import Text

from fusion_dspy.backends.config import read_config
from fusion_dspy.core.report import FusionReport, StageReport
from fusion_dspy.testing import StubOpenAIServer
from fusion_dspy.workflows.demo import run_demo
from fusion_dspy.workflows.demo_notes import copied_candidate, fit, fusor_cached, panel_title, words

CANDIDATE = "Red, yellow and blue."


def config_for(tmp_path, fused: str):
    """A stub whose candidates all say CANDIDATE and whose fusor says ``fused``."""

    def respond(call):
        return {"comparison": "c", "answer": fused} if call.wants("comparison") else {"answer": CANDIDATE}

    server = StubOpenAIServer(respond=respond)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"stub": {"model": "openai/stub", "api_base": server.api_base}},
                                    "roles": {"generators": "stub"}, "fusion": {"n": 2}}))  # fmt: skip
    return server, path


def demo_text(path, prompts, width=120) -> tuple[list, str]:
    out = io.StringIO()
    rows = run_demo(read_config(path), n=2, prompts=prompts, console=Console(file=out, width=width))
    return rows, out.getvalue()


def test_words_ignore_case_spacing_and_punctuation_only():
    assert words("  Red, YELLOW and\nblue. ") == words("red yellow and blue") == ("red", "yellow", "and", "blue")
    assert words("red, yellow, blue") != words("red, yellow and blue")  # a word more or less is no copy
    assert words("Ｒｅｄ") == words("red")  # NFKC: full-width letters are the same word


def test_copied_candidate_reads_the_prediction_not_the_display():
    pool = [dspy.Prediction(answer="Hot."), dspy.Prediction(answer="cold")]
    assert copied_candidate(dspy.Prediction(answer="COLD!", candidates=pool)) == 1
    assert copied_candidate(dspy.Prediction(answer="cold or cool", candidates=pool)) is None
    two = [dspy.Prediction(reasoning="x", answer="cold"), dspy.Prediction(reasoning="y", answer="cold")]
    assert copied_candidate(dspy.Prediction(reasoning="y", answer="Cold", candidates=two)) == 1  # every field
    assert copied_candidate(dspy.Prediction(reasoning="z", answer="cold", candidates=two)) is None


def test_the_demo_marks_a_fused_answer_that_copies_a_candidate(tmp_path):
    server, path = config_for(tmp_path, fused="red, Yellow and blue")
    with server:
        rows, text = demo_text(path, ["Name the primary colors."])
    assert rows[0].copied == 0 and rows[0].best_index == 0
    assert "Fusion-of-N kept candidate 1 as it was (Best-of-N's pick too): the fusor repeated it word for word" in text
    assert "writes a new answer" not in text
    assert "Fusion-of-N wrote a new answer for 0 of 1 prompts and kept a candidate word for word for 1 (1 of them " \
           "Best-of-N's pick)." in text


def test_a_new_fused_answer_is_not_marked(tmp_path):
    server, path = config_for(tmp_path, fused="Red, yellow and blue: the three primaries.")
    with server:
        rows, text = demo_text(path, ["Name the primary colors."])
    assert rows[0].copied is None and "Fusion-of-N writes a new answer from all of them" in text
    assert "kept candidate" not in text and "wrote a new answer for 1 of 1 prompts" in text


def test_a_rerun_from_dspys_cache_says_so(tmp_path, memory_cache):
    server, path = config_for(tmp_path, fused="Red, yellow and blue: the three primaries.")
    with server:
        first, fresh = demo_text(path, ["Name the primary colors."])
        asked = len(server.requests)
        again, rerun = demo_text(path, ["Name the primary colors."])
    assert len(server.requests) == asked, "the rerun sent nothing: DSPy's cache answered"
    assert first[0].cached == [] and "cached" not in fresh and first[0].tokens["sample"] > 0
    assert again[0].cached == ["sample", "fuse"] and again[0].tokens == {"sample": 0, "select": 0, "fuse": 0}
    assert "cached: 0 tokens spent" in rerun
    assert "the candidates and the fused answer were read from DSPy's cache" in rerun
    assert "Every answer above came from DSPy's cache: 0 tokens spent" in rerun
    assert re.search(r"sample\s+│\s+0 \(cached\)", rerun) and re.search(r"fuse \(FusioN\)\s+│\s+0 \(cached\)", rerun)


def test_the_fusor_counts_as_cached_only_when_it_answered_without_usage():
    fresh = FusionReport("fuse", stages={"fuse": StageReport(0.4, {"m": {"total_tokens": 50}})})
    assert not fusor_cached(dspy.Prediction(report=fresh))
    assert fusor_cached(dspy.Prediction(report=fresh.replace(stages={"fuse": StageReport(0.0, {})})))
    assert not fusor_cached(dspy.Prediction(report=FusionReport("select", stages={"select": StageReport(0.0, {})})))


@pytest.mark.parametrize("width", [8, 13, 20, 27, 40])
def test_fit_cuts_at_a_word_with_an_ellipsis(width):
    text = "Who wrote Romeo and Juliet? (short question with a known answer: Shakespeare)"
    fitted = fit(Text(text), width).plain
    assert len(fitted) <= width and fitted.endswith("…")
    kept = fitted.removesuffix("…")
    assert text.startswith(kept) and (text[len(kept)] == " " or " " not in kept), f"cut mid-word: {fitted!r}"


def test_panel_title_keeps_every_word_in_the_body_when_it_must_cut():
    parts = [Text("Who wrote Romeo and Juliet?"), Text("(short question with a known answer: Shakespeare)")]
    title, lead = panel_title(parts, 200)
    assert title.plain == "Who wrote Romeo and Juliet?  (short question with a known answer: Shakespeare)"
    assert lead == []
    title, lead = panel_title(parts, 30)
    assert title.plain == "Who wrote Romeo and…" and [line.plain for line in lead] == [
        "Who wrote Romeo and Juliet?  (short question with a known answer: Shakespeare)"]


def test_demo_panel_titles_never_end_mid_word(tmp_path):
    server, path = config_for(tmp_path, fused="red")
    with server:
        _, text = demo_text(path, ["Who wrote the play Romeo and Juliet, and in which century?"], width=50)
    [top] = [line for line in text.splitlines() if line.startswith("╭")]
    prompt = "Who wrote the play Romeo and Juliet, and in which century?"
    title = top.strip("╭╮─ ")
    kept = title.removesuffix("…")
    assert title.endswith("…") and prompt.startswith(kept) and prompt[len(kept)] == " ", top
    body = " ".join(line.strip("│ ") for line in text.splitlines() if line.startswith("│"))
    assert prompt in body  # whole in the body, wrapped at words


def test_a_list_prompt_is_right_only_with_every_item():
    from fusion_dspy.workflows.demo import DEMO_PROMPTS

    seasons, colors = DEMO_PROMPTS[0], DEMO_PROMPTS[1]
    assert seasons.right("Spring, summer,\nfall and winter.") and not seasons.right("Spring, summer and winter.")
    assert colors.right("Blue, red and yellow") and not colors.right("Red, blue and green")

"""What the demo says about a result beyond its text: a fused answer that copies a candidate, answers that came
from DSPy's cache, and a panel title fitted to the screen. Every note is read from data (the prediction's
``candidates`` and ``report``, the usage DSPy tracked), never from displayed text.

**Copies.** A fused answer *copies* candidate ``k`` when every output field of the task holds the same words in
the same order in both, where a word is a run of letters or digits (``\\w+``) after Unicode NFKC normalisation and
case folding: whitespace, case and punctuation are ignored ("Cold." copies "cold"), any other change is not
("cold weather", "seven" for "7").

**Cache hits.** DSPy 3.4 counts no tokens for a request its cache answers (``dspy.track_usage`` records nothing, and
the LM history's ``usage`` of the call is empty). So a stage that got its answers from a model yet tracked no usage
was answered from the cache. A provider that reports no usage at all would look the same; the embedded model,
vLLM and the OpenAI-compatible APIs report it.
"""

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import dspy
from rich.cells import cell_len
from rich.text import Text

from fusion_dspy.core.meter import Usage
from fusion_dspy.core.pool import Pool

_WORD = re.compile(r"\w+")
# Cells a full-width rich Panel keeps around its title: the corners, one rule cell each side, one space each side.
TITLE_FRAME = 6
ELLIPSIS = "…"


def words(text: Any) -> tuple[str, ...]:
    """The words of ``text`` as the copy check compares them: NFKC, case-folded, punctuation and spacing dropped.

    Example:
        >>> words("  Cold.  "), words("It's 7 days!")
        (('cold',), ('it', 's', '7', 'days'))
    """
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", str(text)).casefold()))


def output_fields(prediction: dspy.Prediction) -> list[str]:
    """The task's output fields of a FusionOfN / BestOfN prediction: all but ``candidates`` and ``report``."""
    return [name for name in prediction.keys() if name not in ("candidates", "report")]  # noqa: SIM118 - no dspy_*


def copied_candidate(prediction: dspy.Prediction) -> int | None:
    """The position in ``prediction.candidates`` of the first candidate the answer repeats word for word, if any.

    Args:
        prediction: A FusionOfN (or BestOfN) prediction: its output fields, ``candidates`` and ``report``.

    Example:
        >>> pool = [dspy.Prediction(answer="hot"), dspy.Prediction(answer="Cold!")]
        >>> copied_candidate(dspy.Prediction(answer="cold", candidates=pool))
        1
        >>> copied_candidate(dspy.Prediction(answer="cold, not hot", candidates=pool)) is None
        True
    """
    fields = output_fields(prediction)
    mine = [words(prediction[name]) for name in fields]
    for position, candidate in enumerate(prediction.get("candidates") or ()):
        if all(name in candidate and words(candidate[name]) == own for name, own in zip(fields, mine, strict=True)):
            return position
    return None


def cached_samples(pool: Pool) -> list[int]:
    """Positions of the pool's candidates that a model wrote but that cost no tokens: DSPy's cache answered them.

    Candidates from a ``CandidateStore`` (``cached=True``) are not counted: the store kept their original cost.

    Example:
        >>> from fusion_dspy.core.pool import Candidate
        >>> pool = Pool([Candidate(dspy.Prediction(answer="a"), "m", {"m": {"total_tokens": 9}}),
        ...              Candidate(dspy.Prediction(answer="b"), "m", {}, index=1)])
        >>> cached_samples(pool)
        [1]
    """
    return [position for position, candidate in enumerate(pool)
            if candidate.model is not None and not candidate.cached and no_usage(candidate.usage)]  # fmt: skip


def fusor_cached(prediction: dspy.Prediction) -> bool:
    """Whether the fusor's reply came from DSPy's cache: it answered (no fallback) and its stage tracked no usage.

    Example:
        >>> from fusion_dspy.core.report import FusionReport, StageReport
        >>> fresh = FusionReport("fuse", stages={"fuse": StageReport(0.4, {"m": {"total_tokens": 50}})})
        >>> fusor_cached(dspy.Prediction(report=fresh)), fusor_cached(dspy.Prediction(report=fresh.replace(
        ...     stages={"fuse": StageReport(0.01, {})})))
        (False, True)
    """
    report = prediction.report
    stage = report.stages.get("fuse")
    return report.fallback is None and stage is not None and no_usage(stage.usage)


def no_usage(usage: Usage | None) -> bool:
    """Whether DSPy tracked no tokens at all (``{}``, or models with no counters)."""
    return not any(counters for counters in (usage or {}).values())


def fit(text: Text, width: int) -> Text:
    """``text`` whole when it fits in ``width`` cells, else cut after its last whole word that leaves room for "…".

    Args:
        text: Styled text (a panel title).
        width: Cells available.

    Example:
        >>> fit(Text("Who wrote Romeo and Juliet?"), 20).plain
        'Who wrote Romeo and…'
        >>> fit(Text("Supercalifragilistic"), 8).plain
        'Superca…'
    """
    if cell_len(text.plain) <= width:
        return text
    plain, cut = text.plain, 0
    for match in re.finditer(r"\S+", plain):  # the end of each word, while the word and "…" still fit
        if cell_len(plain[: match.end()]) + cell_len(ELLIPSIS) > width:
            break
        cut = match.end()
    if cut == 0:  # not even the first word fits: cut inside it rather than show nothing
        while cut < len(plain) and cell_len(plain[: cut + 1]) + cell_len(ELLIPSIS) <= width:
            cut += 1
    fitted = text[:cut]
    fitted.rstrip()
    fitted.append(ELLIPSIS)
    return fitted


def panel_title(parts: Sequence[Text], width: int) -> tuple[Text, list[Text]]:
    """A panel title of ``parts`` joined by two spaces when they fit in a panel ``width`` cells wide; else the first
    part, fitted at a word, as the title, and every part whole as lines for the panel's body (nothing is lost).

    Example:
        >>> title, lead = panel_title([Text("Why is the sky blue?"), Text("(open-ended)")], 30)
        >>> title.plain, [line.plain for line in lead]
        ('Why is the sky blue?', ['Why is the sky blue?  (open-ended)'])
    """
    whole = Text("  ").join(parts)
    room = max(1, width - TITLE_FRAME)
    if cell_len(whole.plain) <= room:
        return whole, []
    return fit(parts[0], room), [whole]

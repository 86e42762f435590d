"""Translation from English: human translations of Django's user interface messages, scored with chrF.

Django (BSD-3-Clause) ships the ``.po`` catalogs of its core and contrib apps for about 100 languages, all
translated by people. We parse them with ``polib``, drop untranslated, fuzzy, obsolete and plural entries,
format strings with no words of their own, copies of the source and single words, and prefer sentence-length
messages (four words or more) to short labels. Splits are a fixed partition by a hash of the English source
text (train 60 %, dev 20 %, test 20 %), the same for every language.
"""

import functools
import glob
import importlib.util
import random
import re
from pathlib import Path

import dspy

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.programs.splits import check_split, in_split
from fusion_dspy.workflows.task import Task

SENTENCE_WORDS = 4  # messages with at least this many words come first; shorter ones (2-3 words) after them
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGc%]|\{[^{}]*\}")


class Translate(dspy.Signature):
    """Translate the English user-interface text into the target language. Keep placeholders such as %(name)s
    or {obj}, HTML tags and punctuation marks as they are."""

    source: str = dspy.InputField(desc="English text")
    target_language: str = dspy.InputField()
    translation: str = dspy.OutputField(desc="the translation only")


def chrf(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    """The task metric: sentence-level chrF (sacrebleu's defaults) of the translation, on a 0..1 scale.

    Args:
        example: Has the gold ``translation``.
        prediction: Has the predicted ``translation``.
        trace: Unused (DSPy metric protocol).

    Example:
        >>> chrf(dspy.Example(translation="Passwort ändern"), dspy.Prediction(translation="Passwort ändern"))
        1.0
    """
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise FusionDSPyError("The translation metric needs sacrebleu: pip install sacrebleu") from None
    hypothesis = str(getattr(prediction, "translation", None) or "").strip()
    if not hypothesis:
        return 0.0
    return CHRF().sentence_score(hypothesis, [str(example.translation)]).score / 100


def _words(text: str) -> int:
    return len(re.findall(r"[^\W\d_]{2,}", _PLACEHOLDER.sub(" ", text)))


@functools.lru_cache(maxsize=1)
def _django_root() -> Path:
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        raise FusionDSPyError("The translation program needs Django's locale files: pip install django")
    return Path(next(iter(spec.submodule_search_locations)))


def language_name(language: str) -> str:
    """The English name of a Django locale code (``"de"`` -> ``"German"``, ``"pt_BR"`` -> ``"Brazilian
    Portuguese"``); the code itself when Django does not name it.

    Args:
        language: A locale code as in ``django/conf/locale`` (case and ``-``/``_`` do not matter).

    Example:
        >>> language_name("zh_Hans")
        'Simplified Chinese'
    """
    _django_root()
    from django.conf.locale import LANG_INFO

    return LANG_INFO.get(language.lower().replace("_", "-"), {}).get("name", language)


def _catalogs(language: str) -> list[str]:
    """The ``.po`` files of Django's core and contrib apps for one language (core first)."""
    root, wanted = _django_root(), language.lower().replace("-", "_")
    files = [path for pattern in ("conf/locale/*/LC_MESSAGES/*.po", "contrib/*/locale/*/LC_MESSAGES/*.po")
             for path in sorted(glob.glob(str(root / pattern)))]  # fmt: skip
    chosen = [path for path in files if Path(path).parent.parent.name.lower() == wanted]
    if not chosen or wanted == "en":
        codes = sorted({Path(path).parent.parent.name for path in files} - {"en"})
        raise ValueError(f"Django has no translations into {language!r}; choose one of {codes}.")
    return chosen


@functools.lru_cache(maxsize=8)
def _pairs(language: str) -> tuple[tuple[str, str], ...]:
    """``(English, translation)`` of every usable message of one language, each English text once, sorted."""
    try:
        import polib
    except ImportError:
        raise FusionDSPyError("The translation program needs polib: pip install polib") from None
    pairs: dict[str, str] = {}
    for path in _catalogs(language):
        for entry in polib.pofile(path):
            source, target = entry.msgid.strip(), entry.msgstr.strip()
            if (entry.obsolete or entry.fuzzy or entry.msgid_plural or not target or target == source
                    or source in pairs or _words(source) < 2):  # fmt: skip
                continue
            pairs[source] = target
    return tuple(sorted(pairs.items()))


def load_translations(split: str = "dev", size: int = 20, seed: int = 0, language: str = "de") -> list[dspy.Example]:
    """English -> ``language`` message pairs, a seeded sample of one split, sentence-length messages first.

    A larger ``size`` with the same seed extends the smaller list (it is a prefix).

    Args:
        split: ``"train"``, ``"dev"`` or ``"test"``; disjoint by English source text.
        size: Number of pairs; at most the size of the split.
        seed: Seed of the sample.
        language: Django locale code of the target language, e.g. ``"de"``, ``"fr"``, ``"pt_BR"``, ``"ja"``.

    Example:
        >>> devset = load_translations("dev", 10, seed=0, language="fr")
        >>> len(devset), devset[0].target_language
        (10, 'French')
    """
    check_split(split, "translation")
    pool = [pair for pair in _pairs(language) if in_split(pair[0], split)]
    if not 0 <= size <= len(pool):
        raise ValueError(f"The {split} split of translation into {language!r} has {len(pool)} messages; "
                         f"size {size} is out of range.")  # fmt: skip
    rng = random.Random(seed)
    sentences = [pair for pair in pool if _words(pair[0]) >= SENTENCE_WORDS]
    phrases = [pair for pair in pool if _words(pair[0]) < SENTENCE_WORDS]
    rng.shuffle(sentences)
    rng.shuffle(phrases)
    name = language_name(language)
    return [dspy.Example(source=source, target_language=name, translation=target).with_inputs("source",
            "target_language") for source, target in (sentences + phrases)[:size]]  # fmt: skip


def translation_task(language: str = "de") -> Task:
    """The translation task into one language (its examples, signature and chrF metric).

    Args:
        language: Django locale code of the target language.

    Example:
        >>> french = translation_task("fr")  # in your module; then --program yourmodule:french
        >>> french.name
        'translation-fr'
    """
    return Task(name=f"translation-{language}", signature=Translate, metric=chrf,
                load=functools.partial(load_translations, language=language))  # fmt: skip


translation = translation_task("de")
"""English -> German: ``fusion-dspy eval --program translation``."""

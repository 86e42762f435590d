"""The typed pool, complete constructors, the one-body step driver and the 0.1 import paths."""

import importlib
import sys
import warnings

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.core.steps import Call, Gather, arun, run
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.testing import scripted_lm


def test_sample_returns_a_typed_pool(lm):
    pool = fd.Sample("question -> answer", n=4, lm=lm)(question="q")
    assert isinstance(pool, fd.Pool) and isinstance(pool, dspy.Prediction) and len(pool) == 4
    assert [c.index for c in pool] == [0, 1, 2, 3] and all(isinstance(c, fd.Candidate) for c in pool)
    assert pool.models == ["scripted/generator"] * 4 and not any(c.cached for c in pool)
    assert pool.tokens == sum(c.usage["scripted/generator"]["total_tokens"] for c in pool) > 0
    head = pool[:2]
    assert isinstance(head, fd.Pool) and [c.index for c in head] == [0, 1] and head.predictions == pool.predictions[:2]
    assert pool[3].prediction.answer == pool.predictions[3].answer


def test_every_stage_takes_a_pool_candidates_or_plain_predictions(lm):
    pool = fd.Sample("question -> answer", n=3, lm=lm)(question="q")
    fuse = fd.Fuse("question -> answer", lm=lm)
    select = fd.Select("question -> answer", reward_fn=lambda inputs, pred: -int(pred.answer.split()[-1]))
    # the best reward: the lowest call number (which sample got which number depends on its thread's start)
    best = min((c.prediction.answer for c in pool), key=lambda answer: int(answer.split()[-1]))
    for given in (pool, list(pool), pool.predictions, [p.toDict() for p in pool.predictions]):
        assert fuse(candidates=given, question="q").answer == "fused"
        assert select(candidates=given, question="q").answer == best
    with pytest.raises(FusionDSPyError, match="no candidates"):
        fuse(candidates=fd.Pool(), question="q")
    with pytest.raises(FusionDSPyError, match="must be a Candidate"):
        fd.Pool.of([42])


def test_a_shared_sample_with_sampling_options_is_an_error_naming_them(lm):
    sample = fd.Sample("question -> answer", n=3, lm=lm)
    with pytest.raises(ValueError, match=r"sample= and also the sampling option\(s\) \['n', 'temperature'\]"):
        fd.FusionOfN(sample=sample, n=99, temperature=0.2)
    with pytest.raises(ValueError, match=r"\['lm'\]"):
        fd.BestOfN(sample=sample, lm=lm)
    assert fd.FusionOfN(sample=sample, fusor_lm=lm).sample is sample


def test_constructors_take_every_role_adapter(lm):
    plain, chat = fd.backends.PlainAdapter(), dspy.ChatAdapter()
    fused = fd.FusionOfN("question -> answer", n=2, lm=lm, adapter=chat, fusor_adapter=plain, compare=False)
    best = fd.BestOfN("question -> answer", n=2, lm=lm, judge="listwise", judge_adapter=plain)
    assert fused.sample.adapter is chat and fused.fuse.adapter is plain and best.select.adapter is plain


def steps(question, predict, fail_first):
    """A retry loop with fan-out, written once for both drivers."""
    try:
        if fail_first:
            yield Call(lambda **kw: 1 / 0)
    except ZeroDivisionError:
        pass  # raised at the yield, handled here like any exception
    first = yield Call(predict, {"question": question})
    rest = yield Gather([Call(predict, {"question": question}) for _ in range(3)], limit=2)
    return [first.answer] + [p.answer for p in rest]


async def test_one_step_body_runs_the_same_sync_and_async():
    lm = scripted_lm(lambda call: {"answer": "4"})
    predict = dspy.Predict("question -> answer")
    predict.lm = lm
    with pytest.raises(ZeroDivisionError):
        run(Call(lambda: 1 / 0))
    assert run(steps("2+2?", predict, fail_first=True)) == ["4"] * 4
    assert await arun(steps("2+2?", predict, fail_first=False)) == ["4"] * 4
    assert len(lm.engine.calls) == 8 and lm.engine.peak_in_flight <= 2


@pytest.mark.parametrize(("old", "new", "name"), [
    ("fusion_dspy.sample", "fusion_dspy.core.sample", "Sample"),
    ("fusion_dspy.config", "fusion_dspy.backends.config", "FusionConfig"),
    ("fusion_dspy.batch", "fusion_dspy.workflows.batch", "run_batch"),
    ("fusion_dspy.eval_report", "fusion_dspy.workflows.reports", "summarize"),
])  # fmt: skip
def test_old_import_paths_still_work_with_a_deprecation_warning(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new) and hasattr(module, name)
    assert module.__spec__.name == new, "the real module keeps its own spec"


def test_old_top_level_names_warn_and_resolve():
    with pytest.warns(DeprecationWarning, match="fusion_dspy.Backends moved to fusion_dspy.backends.Backends"):
        assert fd.Backends is fd.backends.Backends
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fd.FusionOfN and fd.load_config  # the current surface does not warn
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        fd.nonsense  # noqa: B018


def test_public_surface_is_small():
    assert set(fd.__all__) == {
        "BestOfN", "Candidate", "CandidateStore", "ConfigError", "DeadlineExceeded", "Fuse", "FusionDSPyError",
        "FusionError", "FusionOfN", "Pool", "Route", "Sample", "SamplingError", "Select", "SelectionError",
        "backends", "load_config", "optimizers", "testing", "workflows",
        # the typed vocabulary: the stages' options, what a call did, what failed
        "SampleOptions", "FuseOptions", "SelectOptions", "FusionReport", "Failure",
    }  # fmt: skip
    for name in fd.__all__:
        assert getattr(fd, name) is not None


def test_ready_tasks_are_found_by_entry_point_and_errors_name_no_cli_flag():
    from fusion_dspy.workflows import resolve_task

    assert resolve_task("math").name == "math" and resolve_task("factual_qa").name == "factual_qa"
    with pytest.raises(FusionDSPyError, match=r"no ready task is named 'nope'.*'math'") as raised:
        resolve_task("nope")
    assert "--program" not in str(raised.value)

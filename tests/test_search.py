"""The optuna search over N, temperature, fuse vs select, fusor instruction and teacher pool (scripted backends)."""

import json

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import ConfigError, FusionConfig
from fusion_dspy.core.router import Router
from fusion_dspy.core.store import CandidateStore
from fusion_dspy.optimizers.instructions import builtin_instructions, propose_instructions
from fusion_dspy.optimizers.search import FusionSearch, SearchSpace, canonical, completed_trials, teacher_subsets
from fusion_dspy.optimizers.tuned import load_tuned
from fusion_dspy.testing import scripted_lm
from fusion_dspy.workflows.task import MetricError, Task
from tests.scripted_search import DEVSET, TASK, generator_calls, make_backends

SPACE = SearchSpace(n=(1, 2, 4, 8), methods=("fuse", "select"))


def search(tmp_path, backends, space=SPACE, study="toy", **options):
    return FusionSearch(backends, TASK, DEVSET, space=space, store=CandidateStore(tmp_path / "store"),
                        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name=study, sampler="grid", **options)


def test_grid_search_finds_the_known_best_and_samples_each_candidate_once(tmp_path):
    backends = make_backends()
    first = search(tmp_path, backends)
    grid_size = 4 * 2 * len(first.instructions)
    first.optimize(n_trials=grid_size)
    assert first.best_params()["method"] == "select" and first.best_params()["n"] == 4
    assert first.study.best_trials[0].values[0] == 1.0
    assert generator_calls(backends) == 8 * len(DEVSET), "a sweep over N in {1,2,4,8} costs 8 samples, not 15"
    again = search(tmp_path, backends)  # the same command again: the study is complete, nothing is redone
    again.optimize(n_trials=grid_size)
    other_study = search(tmp_path, backends, study="toy-2")  # a new study over the same candidates
    other_study.optimize(n_trials=4)
    assert generator_calls(backends) == 8 * len(DEVSET), "reruns sample nothing new"


def test_fusion_only_space_finds_the_consensus_instruction(tmp_path):
    found = search(tmp_path, make_backends(), space=SearchSpace(n=(2, 4), methods=("fuse",)))
    found.optimize(n_trials=2 * len(found.instructions))
    best = found.best_params()
    assert best["n"] == 4 and found.instructions[best["instruction"]] == builtin_instructions(True)["consensus"]


def test_cost_objective_gives_a_pareto_front(tmp_path):
    found = search(tmp_path, make_backends(), cost_objective=True)
    found.optimize(n_trials=8 * len(found.instructions))
    front = found.study.best_trials
    assert len(found.study.directions) == 2 and front
    assert all(trial.values[1] > 0 for trial in front)
    assert found.best_params()["method"] == "select" and found.best_params()["n"] == 4


def test_teacher_subsets_are_searched(tmp_path):
    assert teacher_subsets(["a", "b"]) == ["a", "b", "a+b"]
    backends = make_backends(teachers=True)
    found = search(tmp_path, backends, space=SearchSpace(n=(4,), methods=("select",), teachers=("gen", "bad")))
    found.optimize(n_trials=3 * len(found.instructions))
    assert found.best_params()["teachers"] == "gen"


def test_best_configuration_is_saved_and_loads_back(tmp_path):
    backends = make_backends()
    found = search(tmp_path, backends, space=SearchSpace(n=(4,), methods=("fuse",)))
    found.optimize(n_trials=len(found.instructions))
    path = found.save_best(tmp_path / "tuned.json")
    loaded = load_tuned(path, backends, dspy.Predict("question -> answer"))
    assert loaded.sample.n == 4
    assert loaded.fuse.predict.signature.instructions == builtin_instructions(True)["consensus"]
    assert loaded(question="question 0").answer == "42"


def test_proposed_instructions_join_the_study_and_survive_a_resume(tmp_path):
    backends = make_backends()
    backends._lms["judge"] = scripted_lm(lambda call: {"proposed_instruction": "Fuse boldly."})
    backends.config.roles.judge = "judge"
    space = SearchSpace(n=(1,), methods=("fuse",), proposed_instructions=2)
    first = search(tmp_path, backends, space=space)
    assert first.instructions[-1] == "Fuse boldly." and len(first.instructions) == 4  # duplicates dropped
    backends._lms["judge"] = scripted_lm(lambda call: {"proposed_instruction": "Something else."})
    assert search(tmp_path, backends, space=space).instructions == first.instructions
    assert propose_instructions(scripted_lm(lambda call: "garbage"), TASK.signature, 1) == []


def test_clear_errors(tmp_path):
    backends = make_backends()
    with pytest.raises(Exception, match="dev set is empty"):
        FusionSearch(backends, TASK, [], storage=f"sqlite:///{tmp_path / 's.db'}")
    raising = Task("bad", "question -> answer", metric=lambda example, pred, trace=None: 1 / 0)
    with pytest.raises(MetricError, match=r"raised ZeroDivisionError.*dev example 0"):
        FusionSearch(backends, raising, DEVSET, store=CandidateStore(tmp_path / "s1"),
                     storage=f"sqlite:///{tmp_path / 's1.db'}").optimize(n_trials=1)
    wordy = Task("wordy", "question -> answer", metric=lambda example, pred, trace=None: "yes")
    with pytest.raises(MetricError, match=r"returned 'yes' \(str\)"):
        FusionSearch(backends, wordy, DEVSET, store=CandidateStore(tmp_path / "s2"),
                     storage=f"sqlite:///{tmp_path / 's2.db'}").optimize(n_trials=1)


def test_n_max_the_fusor_cannot_read_is_refused():
    config = FusionConfig.model_validate({
        "models": {"gen": {"model": "openai/gen", "max_tokens": 400},
                   "fusor": {"model": "openai/fusor", "context_window": 2048, "max_tokens": 300}},
        "roles": {"generators": "gen", "fusor": "fusor"},
    })  # fmt: skip
    backends = Backends(config, lms={"gen": scripted_lm(lambda c: {}), "fusor": scripted_lm(lambda c: {})})
    with pytest.raises(ConfigError, match=r"N_max=8 .*reads 2048\. Lower the largest N to 3 or less"):
        FusionSearch(backends, TASK, DEVSET, space=SearchSpace(n=(2, 8)), storage="sqlite:///:memory:")


def test_the_new_fusion_knobs_are_searched_and_saved(tmp_path):
    from tests.test_route import synthetic_results

    router = tmp_path / "router.json"
    Router.fit(synthetic_results(tmp_path / "results.jsonl")).save(router)
    space = SearchSpace(n=(4,), methods=("fuse", "select", "auto"), group_sizes=(None, 2), layers=(1, 2),
                        permutations=(1, 3), router=str(router))  # fmt: skip
    backends = make_backends()
    found = search(tmp_path, backends, space=space)
    grid = found.grid()
    assert grid["group_size"] == [None, 2] and grid["layers"] == [1, 2] and grid["permutations"] == [1, 3]
    assert grid["method"] == ["fuse", "select", "auto"]
    params = {"n": 4, "temperature": 0.7, "instruction": 0, "group_size": 2, "layers": 2, "permutations": 3}
    fused = found.build({**params, "method": "fuse"})
    assert fused.group_size == 2 and fused.layers.count == 2 and fused.permute.k == 3
    routed = found.build({**params, "method": "auto"})
    assert isinstance(routed, fd.Route) and routed.router.arms and routed.fusion.group_size == 2
    assert canonical({**params, "method": "select"}) == canonical({**params, "method": "select", "layers": 1})
    found.optimize(n_trials=12)
    tried = completed_trials(found.study)
    assert len(tried) == 12 and all({"group_size", "layers", "permutations"} <= set(t.params) for t in tried)
    assert {t.params["method"] for t in tried} == {"fuse", "select", "auto"}
    best = found.best_params()
    assert found.study.best_trials[0].values[0] == 1.0 and best["method"] in ("select", "auto")
    path = found.save_best(tmp_path / "tuned.json")
    settings = json.loads(path.read_text())["settings"]
    loaded = load_tuned(path, backends, dspy.Predict("question -> answer"))
    if best["method"] == "auto":
        assert settings["layers"] == best["layers"] and loaded.router.arms == routed.router.arms
    assert loaded(question="question 0").answer == "42"
    with pytest.raises(Exception, match="'auto' needs SearchSpace\\(router=path\\)"):
        search(tmp_path, backends, space=SearchSpace(methods=("auto",)), study="no-router")


def test_a_study_resumed_with_other_choices_or_objectives_is_refused_up_front(tmp_path):
    """Optuna cannot change a study's choices or objectives: it failed every trial or the run mid-way."""
    backends = make_backends()
    search(tmp_path, backends).optimize(n_trials=2)
    with pytest.raises(fd.FusionDSPyError, match=r"was run with n in \[1, 2, 4, 8\]; this run asks for \[1, 16\]"):
        search(tmp_path, backends, space=SearchSpace(n=(1, 16), methods=("fuse", "select")))
    with pytest.raises(fd.FusionDSPyError, match=r"optimizes the score alone \(no --cost\).*--study NAME"):
        search(tmp_path, backends, cost_objective=True)
    search(tmp_path, backends).optimize(n_trials=1)  # the same choices resume

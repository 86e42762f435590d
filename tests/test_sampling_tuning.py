"""Adaptive N in optimize (a tuned threshold, saved and loaded) and in eval's report (samples per method)."""

from fusion_dspy.core.store import CandidateStore
from fusion_dspy.optimizers.search import FusionSearch, SearchSpace
from fusion_dspy.optimizers.tuned import load_tuned
from fusion_dspy.workflows.reports import summarize
from tests.scripted_search import DEVSET, TASK, make_backends


def test_optimize_tunes_the_adaptive_threshold_and_saves_it(tmp_path):
    backends = make_backends()
    space = SearchSpace(n=(8,), methods=("select",), adaptive_thresholds=(0.9,))
    search = FusionSearch(backends, TASK, DEVSET, space=space, store=CandidateStore(tmp_path / "store"),
                          storage=f"sqlite:///{tmp_path / 'study.db'}", sampler="grid")  # fmt: skip
    assert search.grid()["adaptive"] == [0.0, 0.9]
    params = {"n": 8, "temperature": 0.7, "method": "select", "instruction": 0}
    fixed, adaptive = (search.build({**params, "adaptive": threshold}) for threshold in (0.0, 0.9))
    assert fixed.sample.adaptive is None and adaptive.sample.adaptive.threshold == 0.9
    search.optimize(n_trials=2 * len(search.instructions))
    assert "adaptive" in search.best_params()
    path = search.save_best(tmp_path / "tuned.json")
    tuned = load_tuned(path, backends, TASK.generator())
    saved = search.best_params()["adaptive"]
    assert (tuned.sample.adaptive.threshold if saved else tuned.sample.adaptive) == (saved or None)


def test_the_report_says_how_many_samples_each_method_used():
    records = [{"example": i, "n": 8, "candidates": 4, "scores": dict.fromkeys(("single", "bon", "fusion", "oracle"),
                1.0), "tokens": {}, "samples": {"single": 1, "bon": 4, "fusion": 4, "oracle": 4}} for i in range(2)]
    rows = {row.method: row.samples for row in summarize(records)}
    assert rows["single"] == 1 and rows["fusion"] == rows["bon"] == 4

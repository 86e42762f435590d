"""optuna's journal file as the study storage of ``FusionSearch`` (``--storage journal:PATH`` or ``PATH.log``)."""

import threading

import optuna
from optuna.trial import TrialState

from fusion_dspy.core.store import CandidateStore
from fusion_dspy.optimizers.search import FusionSearch, SearchSpace
from tests.scripted_search import DEVSET, TASK, make_backends

SPACE = SearchSpace(n=(1, 2, 4), methods=("fuse", "select"))


def complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def test_two_workers_share_one_journal_file_and_a_rerun_resumes_it(tmp_path):
    journal = tmp_path / "study.log"
    store = CandidateStore(tmp_path / "store")
    workers = [FusionSearch(make_backends(), TASK, DEVSET, space=SPACE, store=store, storage=str(journal),
                            study_name="toy", sampler="tpe", seed=seed) for seed in (1, 2)]  # fmt: skip
    threads = [threading.Thread(target=worker.optimize, args=(6,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert journal.stat().st_size > 0
    assert complete(workers[0].study) >= 6 and complete(workers[0].study) == complete(workers[1].study)
    resumed = FusionSearch(make_backends(), TASK, DEVSET, space=SPACE, store=store, storage=f"journal:{journal}",
                           study_name="toy")  # fmt: skip
    before = complete(resumed.study)
    assert before >= 6, "the journal holds both workers' trials"
    resumed.optimize(before + 2)
    reread = optuna.load_study(study_name="toy",
                               storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                                   str(journal))))  # fmt: skip
    assert complete(reread) == before + 2

"""Trials an outage stopped: failed, not scored 0, and tried again by the next run of the study.

A trial whose fusor or judge is unavailable on a dev example (server down, timing out, rate limited, refused
key: ``fusion_dspy.workflows.scoring.StageUnavailable``) cannot say how good its configuration is; scored as
0 it would lose to worse configurations, and the study's best would be chosen on outage-deflated scores. So
the trial is marked FAIL with the cause in its ``outage`` user attribute, the study goes on with the next
trial, and ``FusionSearch.optimize`` runs each such configuration again first when the study is resumed.
"""

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from fusion_dspy.backends.secrets import HELD
from fusion_dspy.workflows.scoring import StageUnavailable

OUTAGE = "outage"  # the user attribute holding the cause


def failing_on_outages(study: optuna.Study, canonical: Callable[[dict[str, Any]], tuple]
                       ) -> list[optuna.trial.FrozenTrial]:  # fmt: skip
    """The latest failed trial of each configuration an outage stopped and that no trial has scored since.

    Args:
        study: The study.
        canonical: Maps a trial's parameters to what makes configurations the same (``search.canonical``).

    Example:
        >>> study = optuna.create_study()
        >>> study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"n": 2},
        ...     distributions={"n": optuna.distributions.CategoricalDistribution([2, 4])},
        ...     user_attrs={OUTAGE: "the fuse stage's model is unavailable"}))
        >>> [t.params for t in failing_on_outages(study, lambda params: tuple(sorted(params.items())))]
        [{'n': 2}]
    """
    trials = study.get_trials(deepcopy=False)
    scored = {canonical(t.params) for t in trials if t.state == TrialState.COMPLETE}
    latest = {canonical(t.params): t for t in trials if t.state == TrialState.FAIL and OUTAGE in t.user_attrs}
    return [trial for key, trial in latest.items() if key not in scored]


def record_outage(trial: optuna.Trial, outage: StageUnavailable) -> None:
    """Keep the cause on the trial (shown by ``optimize`` and in the study), before it is failed; no model's key
    in it, whatever the upstream error echoed."""
    trial.set_user_attr(OUTAGE, HELD(str(outage)))


def summary(failing: Sequence[optuna.trial.FrozenTrial]) -> str:
    """One sentence for the user: how many trials could not be scored, the first cause, and what to do."""
    count = len(failing)
    cause = failing[0].user_attrs[OUTAGE] if failing else ""
    return (f"{count} trial{'' if count == 1 else 's'} could not be scored because a model was unavailable "
            f"(first: {cause}); they are not counted as scores of 0: rerun the same command to retry them.")

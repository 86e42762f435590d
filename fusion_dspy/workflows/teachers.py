"""A teacher pool that starts with the teachers it can reach: one server down shrinks the pool, as at run time.

``Backends.check()`` fails when any used model is unreachable, which is right for one generator and a fusor,
but a teacher pool is meant to survive a member being down (its samples are dropped). ``reachable_pool`` checks
each teacher on its own, drops the unreachable ones with a warning, and fails only when none is left or when the
fusor cannot be reached.
"""

from collections.abc import Callable, Collection

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import ConfigError, FusionConfig


def reachable_pool(backends: Backends, warn: Callable[[str], object] = print) -> Backends:
    """``backends``, or a copy whose teacher pool lacks the teachers that cannot be reached.

    Args:
        backends: The config's backends (``fusion_dspy.load_config(path)``).
        warn: Called with one line per dropped teacher.

    Example:
        >>> reachable_pool(backends, warn=print) is backends     # every teacher answers: nothing changes
        True
    """
    config = backends.config
    teachers = config.roles.teachers()
    fixed = {"fusor": config.fusor, "judge": config.judge}
    _check(backends, config, {**fixed, "generators": [fixed["fusor"]]})  # the fusor: no pool without it
    if len(teachers) < 2:
        backends.check()
        return backends
    reachable, problems = [], []
    for teacher in teachers:
        try:
            _check(backends, config, {**fixed, "generators": [teacher], "fusor": teacher.model, "judge": teacher.model})
            reachable.append(teacher)
        except ConfigError as error:
            problems.append((teacher.model, error))
    if not reachable:
        raise ConfigError("No teacher of the pool can be reached:\n" + "\n".join(f"  - {e}" for _, e in problems))
    if not problems:
        backends.check()  # the judge, fallbacks and the rest, as always
        return backends
    for name, error in problems:
        warn(f"warning: teacher {name!r} dropped from the pool ({error}); the pool is now "
             f"{[t.model for t in reachable]}.")  # fmt: skip
    shrunk = keep_teachers(backends, [teacher.model for teacher in reachable])
    shrunk.check()
    return shrunk


def keep_teachers(backends: Backends, models: Collection[str]) -> Backends:
    """A copy of ``backends`` whose teacher pool holds only the teachers of these models; fusor and judge stay.

    How a worker process (``--workers``, ``--engine ray``) builds the pool ``reachable_pool`` left in the parent.

    Example:
        >>> [t.model for t in keep_teachers(backends, ["lm"]).config.roles.teachers()]
        ['lm']
    """
    config = backends.config
    kept = [teacher for teacher in config.roles.teachers() if teacher.model in models]
    if not kept:
        raise ConfigError(f"None of the teachers {sorted(models)} is in the pool "
                          f"{[t.model for t in config.roles.teachers()]}.")  # fmt: skip
    roles = config.roles.model_copy(update={"generators": kept, "fusor": config.fusor, "judge": config.judge})
    return Backends(config.model_copy(update={"roles": roles}), lms=backends.lms)


def _check(backends: Backends, config: FusionConfig, roles: dict) -> None:
    """``Backends.check()`` of the config with only these roles' models."""
    narrowed = config.model_copy(update={"roles": config.roles.model_copy(update=roles)})
    Backends(narrowed, lms=backends.lms).check()

"""One body for ``forward`` and ``aforward``: the logic yields the LM calls it needs, a driver makes them.

DSPy's ``Predict`` shares its pre- and post-processing between the two and differs only in the awaited call.
Modules with loops, retries or fan-out (a retry loop around the fusor, N concurrent samples, a judge scoring
each candidate) cannot share code that way, so they are written once as a *step generator*: it yields a
``Call`` (one module call) or a ``Gather`` (several steps at once) and receives the result, or has the call's
exception raised at the ``yield``, where an ordinary ``try`` handles it. ``run`` makes the calls synchronously
(``Gather`` in threads), ``arun`` awaits them (``Gather`` as tasks); everything else is the same code.

Example:
    >>> import dspy
    >>> from fusion_dspy.testing import scripted_lm
    >>> predict = dspy.Predict("question -> answer")
    >>> predict.lm = scripted_lm(lambda call: {"answer": "4"})
    >>> def twice(question):
    ...     first = yield Call(predict, {"question": question})
    ...     both = yield Gather([Call(predict, {"question": question})] * 2)
    ...     return [first.answer] + [p.answer for p in both]
    >>> run(twice("2+2?"))
    ['4', '4', '4']
"""

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fusion_dspy.core.concurrency import arun_concurrently, run_concurrently

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """Call ``module(**kwargs)``, or ``await module.acall(**kwargs)`` under ``arun``."""

    module: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Gather:
    """Run several steps at once (at most ``limit`` in flight); the result is a list of results or exceptions.

    With ``quorum``: once steps worth ``quorum`` (``weights``, default 1 each) have succeeded, the others get
    ``grace_s`` seconds more; those still running then are a ``Straggler`` in the result (see ``concurrency``).
    """

    steps: Sequence["Step"]
    limit: int | None = None
    quorum: int | None = None
    grace_s: float = 0.0
    weights: Sequence[int] | None = None

    def options(self) -> dict[str, Any]:
        return {"quorum": self.quorum, "grace_s": self.grace_s, "weights": self.weights}


Steps = Generator["Step", Any, T]
Step = Call | Gather | Generator


def run(steps: Step) -> Any:
    """Drive a step (a ``Call``, a ``Gather`` or a step generator) synchronously; return its result."""
    if isinstance(steps, Call):
        return steps.module(**steps.kwargs)
    if isinstance(steps, Gather):
        return run_concurrently(run, list(steps.steps), steps.limit, **steps.options())
    finished, value = _advance(steps, None, None)
    try:
        while not finished:
            try:
                result, error = run(value), None
            except Exception as raised:  # noqa: BLE001 - raised inside the generator, at its yield
                result, error = None, raised
            finished, value = _advance(steps, result, error)
    except BaseException:  # interrupted (Ctrl-C, a cancelled straggler): unwind its `with` blocks here and now
        steps.close()
        raise
    return value


async def arun(steps: Step) -> Any:
    """The async driver: the same steps, with every call awaited and every ``Gather`` run as tasks."""
    if isinstance(steps, Call):
        return await steps.module.acall(**steps.kwargs)
    if isinstance(steps, Gather):
        return await arun_concurrently(arun, list(steps.steps), steps.limit, **steps.options())
    finished, value = _advance(steps, None, None)
    try:
        while not finished:
            try:
                result, error = await arun(value), None
            except Exception as raised:  # noqa: BLE001 - raised inside the generator, at its yield
                result, error = None, raised
            finished, value = _advance(steps, result, error)
    except BaseException:  # cancelled (a straggler cut off): unwind its `with` blocks in this task's context
        steps.close()
        raise
    return value


def adapter_override(adapter: Any) -> dict[str, Any]:
    """``dspy.context`` arguments that set a role's adapter, or change nothing (keeping the user's) when unset."""
    return {"adapter": adapter} if adapter is not None else {}


def _advance(steps: Generator, result: Any, error: Exception | None) -> tuple[bool, Any]:
    """Send a result into the generator (or raise an error at its yield): ``(False, next step)`` or
    ``(True, its return value)``."""
    try:
        return False, (steps.throw(error) if error is not None else steps.send(result))
    except StopIteration as done:
        return True, done.value

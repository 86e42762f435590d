"""Recipes to run DSPy's own optimizers (MIPROv2, GEPA, COPRO) on a program containing FusionOfN, on the fusor.

Three recipes, one call each; ``metric(example, pred, trace=None)`` is an ordinary DSPy metric (2 or 3 args):

    tuned = tune_fusor(program, trainset, metric, optimizer="mipro")  # instructions + demos, optuna TPE search
    tuned = tune_fusor(program, trainset, metric, optimizer="gepa", reflection_lm=strong_lm)  # reflective
    tuned = tune_fusor(program, trainset, metric, optimizer="copro")  # instruction (and output prefix) only

By default only the fusor predictors (``...fuse.predict``) are exposed to the optimizer: the program is wrapped
in a view whose ``named_parameters()`` lists just them, and every DSPy optimizer picks its predictors through
that method (``predictors()`` / ``named_predictors()``). The generators keep their instructions and demos,
and no budget is spent on them. The optimizer still runs the whole program, so the fusor is scored on real
candidates. Budgets default to a laptop-sized run; pass any optimizer argument to override it.
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.teleprompt import COPRO, GEPA, MIPROv2

from fusion_dspy.core.fuse import Fuse
from fusion_dspy.errors import FusionDSPyError

OPTIMIZERS: dict[str, type] = {"mipro": MIPROv2, "gepa": GEPA, "copro": COPRO}
_VIEW_PREFIX = "program."


def fusor_predictors(program: dspy.Module) -> list[tuple[str, dspy.Predict]]:
    """The fusor predictors of every ``Fuse`` (inside FusionOfN or alone) anywhere in ``program``.

    Args:
        program: Any DSPy module; fusors in nested and pre-compiled sub-modules are found too.

    Returns:
        ``(name, predictor)`` pairs, named as ``program.named_predictors()`` would, e.g. ``"answer.fuse.predict"``.

    Example:
        >>> [name for name, _ in fusor_predictors(fd.FusionOfN("question -> answer", n=3))]
        ['fuse.predict']
    """
    found = []
    for path, fuse in program.named_sub_modules(type_=Fuse):
        path = path.removeprefix("self").lstrip(".")
        found.append((f"{path}.predict" if path else "predict", fuse.predict))
    return found


class _FusorView(dspy.Module):
    """Runs ``program`` but shows optimizers only its fusor predictors (as ``program.<path>.fuse.predict``).

    ``named_parameters`` is computed from the wrapped program on every call, so it stays right on any copy the
    optimizer makes (even DSPy's attribute-by-attribute fallback copy).
    """

    def __init__(self, program: dspy.Module):
        super().__init__()
        self.program = program

    def named_parameters(self):
        return [(_VIEW_PREFIX + name, predictor) for name, predictor in fusor_predictors(self.program)]

    def forward(self, **inputs):
        return self.program(**inputs)

    async def aforward(self, **inputs):
        return await self.program.acall(**inputs)


def _accepts(function: Callable, count: int) -> bool:
    try:
        inspect.signature(function).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:  # no introspectable signature (some builtins): assume it does
        return True
    return True


def _adapt_metric(metric: Callable, for_gepa: bool) -> Callable:
    """A 3-arg DSPy metric, or for GEPA a 5-arg one, over the user's 2-, 3- or 5-arg metric."""
    takes_trace, takes_five = _accepts(metric, 3), _accepts(metric, 5)

    def score(gold, pred, trace=None):
        result = metric(gold, pred, trace) if takes_trace else metric(gold, pred)
        return result if for_gepa else getattr(result, "score", result)

    if not for_gepa:
        return score

    def gepa_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        if takes_five:  # already a GEPA metric: give it the predictor's name in the user's program
            name = pred_name.removeprefix(_VIEW_PREFIX) if pred_name else pred_name
            return metric(gold, pred, trace, name, pred_trace)
        result = score(gold, pred, trace)
        if pred_name is None or hasattr(result, "feedback"):
            return result
        expected = {key: gold[key] for key in gold.labels()}
        feedback = f"This trajectory got a score of {result}. The expected output was: {expected}."
        return dspy.Prediction(score=float(result), feedback=feedback)

    return gepa_metric


def _split(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route each keyword to the optimizer's constructor or to its ``compile``; reject unknown ones."""
    init = {n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is not p.VAR_KEYWORD}
    compile_ = set(inspect.signature(cls.compile).parameters) - {"self", "student", "trainset", "valset"}
    unknown = set(kwargs) - init - compile_
    if unknown:
        raise TypeError(f"{cls.__name__} takes no argument(s) {sorted(unknown)}; see help({cls.__name__}).")
    return ({k: v for k, v in kwargs.items() if k in init}, {k: v for k, v in kwargs.items() if k not in init})


def _defaults(name: str, kwargs: dict[str, Any], val_size: int) -> dict[str, Any]:
    """Laptop-sized budgets, each dropped when the user sets it or a budget knob it would clash with."""
    if name == "mipro":
        small = {"max_bootstrapped_demos": 2, "max_labeled_demos": 2, "verbose": False}
        if kwargs.get("auto") is None:  # MIPROv2 refuses num_candidates/num_trials next to auto=
            minibatch = val_size > kwargs.get("minibatch_size", 35)  # MIPROv2 refuses minibatches above the valset
            small.update(auto=None, num_candidates=3, num_trials=6, minibatch=minibatch)
    elif name == "gepa":
        budgets = ("auto", "max_full_evals", "max_metric_calls")
        small = {} if any(kwargs.get(k) is not None for k in budgets) else {"max_metric_calls": 3 * val_size + 12}
    else:
        small = {"breadth": 2, "depth": 1, "eval_kwargs": {"display_progress": False}}
    return {**small, **kwargs}


def tune_fusor(
    program: dspy.Module,
    trainset: Sequence[dspy.Example],
    metric: Callable,
    optimizer: str = "mipro",
    valset: Sequence[dspy.Example] | None = None,
    prompt_lm: dspy.LM | None = None,
    reflection_lm: dspy.LM | None = None,
    only_fusor: bool = True,
    **optimizer_kwargs: Any,
) -> dspy.Module:
    """Compile ``program`` with DSPy's MIPROv2, GEPA or COPRO, tuning its fusor(s) and by default nothing else.

    Defaults: MIPROv2 with 3 instruction/demo candidates, 6 trials, up to 2 bootstrapped + 2 labeled demos;
    GEPA with ``max_metric_calls = 3 * len(valset) + 12`` (about two full valset evaluations and two
    reflection rounds); COPRO with ``breadth=2, depth=1``. The user's program is never modified.

    Args:
        program: A DSPy program containing at least one ``FusionOfN`` (or bare ``Fuse``), at any depth.
        trainset: Examples with inputs marked (``.with_inputs(...)``); must not be empty.
        metric: ``metric(example, pred, trace=None) -> float | bool``; 2-arg metrics and GEPA's 5-arg
            feedback metrics work too. For GEPA a plain metric is wrapped, its feedback naming the expected
            output (the example's labels).
        optimizer: ``"mipro"`` (``dspy.MIPROv2``), ``"gepa"`` (``dspy.GEPA``) or ``"copro"`` (``dspy.COPRO``).
        valset: Examples to score candidates on. MIPROv2 otherwise holds out 80% of ``trainset``, GEPA reuses
            ``trainset``; COPRO has no valset and scores on ``trainset + valset``.
        prompt_lm: The LM that writes instructions for MIPROv2 / COPRO (default: ``reflection_lm``, then the
            context LM). The program itself runs on its own / the context LM.
        reflection_lm: GEPA's reflection LM (default: ``prompt_lm``, then the context LM).
        only_fusor: Expose only the fusor predictors to the optimizer (generators keep their instructions and
            demos). ``False`` lets it tune every predictor of the program.
        **optimizer_kwargs: Any argument of the optimizer's constructor or ``compile`` (e.g. ``auto="light"``,
            ``num_threads=4``, ``max_metric_calls=200``, ``breadth=4``); they override the defaults.

    Returns:
        The compiled program (a copy), with the optimizer's extra results (``score``, ``detailed_results``,
        ...) attached as it attached them.

    Example:
        >>> program = fd.FusionOfN("question -> answer", n=2, lm=lm)   # lm: the generators' and the fusor's
        >>> metric = lambda example, pred, trace=None: example.answer == pred.answer
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()):   # COPRO prints the prompts it sends
        ...     tuned = tune_fusor(program, devset, metric, optimizer="copro", prompt_lm=lm)  # or "mipro", "gepa"
        >>> tuned is not program, fusor_predictors(tuned)[0][0]
        (True, 'fuse.predict')
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}: choose one of {sorted(OPTIMIZERS)}.")
    if not trainset:
        raise ValueError("trainset is empty: pass at least one dspy.Example (with .with_inputs(...)).")
    if not fusor_predictors(program):
        raise FusionDSPyError(
            f"No FusionOfN or Fuse found inside {type(program).__name__}: tune_fusor tunes a fusor. "
            "Use the DSPy optimizer directly for programs without one."
        )
    cls = OPTIMIZERS[optimizer]
    trainset, valset = list(trainset), list(valset) if valset else None
    held_out = int(len(trainset) * 0.8) if optimizer == "mipro" else len(trainset)  # MIPROv2's own split
    kwargs = _defaults(optimizer, optimizer_kwargs, len(valset) if valset else held_out)
    init, compile_kwargs = _split(cls, kwargs)
    writer = (reflection_lm or prompt_lm or dspy.settings.lm) if optimizer == "gepa" else (prompt_lm or reflection_lm)
    key = "reflection_lm" if optimizer == "gepa" else "prompt_model"
    init[key] = init.get(key) or writer
    if optimizer == "gepa" and init[key] is None and init.get("instruction_proposer") is None:
        raise ValueError("GEPA needs a reflection LM: pass reflection_lm= or call dspy.configure(lm=...) first.")
    if optimizer == "copro":
        trainset, valset = trainset + (valset or []), None
    else:
        compile_kwargs["valset"] = valset

    student = _FusorView(program) if only_fusor else program
    compiled = cls(metric=_adapt_metric(metric, for_gepa=optimizer == "gepa"), **init).compile(
        student, trainset=trainset, **compile_kwargs
    )
    if not only_fusor:
        return compiled
    result = compiled.program
    for name, value in vars(compiled).items():  # results the optimizer attached (score, detailed_results, ...)
        if name not in vars(student) and name not in vars(result):
            setattr(result, name, value)
    return result

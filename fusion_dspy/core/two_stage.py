"""What FusionOfN and BestOfN share: build their ``Sample`` (or take one), then draw and combine in two metered
stages, within an optional deadline, into the same prediction (the task's fields, ``candidates``, ``report``)."""

from collections.abc import Sequence
from typing import Any

import dspy

import fusion_dspy.tracing as tracing
from fusion_dspy.core.concurrency import awithin, within
from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.options import DEFAULT_TEMPERATURE, SampleOptions
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.prediction import fused_prediction
from fusion_dspy.core.sample import Sample, as_module
from fusion_dspy.core.signatures import check_reserved_fields, task_signature
from fusion_dspy.core.steps import Call, Steps, arun, run


def build_sample(owner: str, module: Any, sample: Sample | None, n: int | None, temperature: float | None,
                 lm: dspy.BaseLM | None, lms: Sequence[dspy.BaseLM] | None, options: SampleOptions | None) -> Sample:
    """The ``Sample`` a FusionOfN/BestOfN draws from: the one given, or one built from the sampling arguments."""
    if sample is not None:
        given = [name for name, value, default in (("n", n, None), ("temperature", temperature, DEFAULT_TEMPERATURE),
                                                   ("lm", lm, None), ("lms", lms, None), ("sampling", options, None))
                 if value is not default and value != default]  # fmt: skip
        if given:
            raise ValueError(f"{owner} got sample= and also the sampling option(s) {given}, which only a new Sample "
                             "would use. Set them on the Sample you pass, or drop sample=.")  # fmt: skip
        return sample
    if module is None:
        raise ValueError(f"{owner} needs the module (or signature) to sample from, or an existing sample=Sample(...).")
    return Sample(as_module(module), n=n, temperature=temperature, lm=lm, lms=lms, options=options)


class Deadlined(dspy.Module):
    """A module written as one step generator (``_steps``), run sync or async within an optional deadline."""

    def __init__(self, deadline_s: float | None):
        super().__init__()
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}.")
        self.deadline_s = deadline_s

    def _steps(self, candidates: Pool | Sequence[Any] | None, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        raise NotImplementedError

    def forward(self, candidates: Pool | Sequence[Any] | None = None, **inputs) -> dspy.Prediction:
        if self.deadline_s is None:
            return run(self._steps(candidates, inputs))
        return within(lambda: run(self._steps(candidates, inputs)), self.deadline_s, type(self).__name__)

    async def aforward(self, candidates: Pool | Sequence[Any] | None = None, **inputs) -> dspy.Prediction:
        if self.deadline_s is None:
            return await arun(self._steps(candidates, inputs))
        return await awithin(arun(self._steps(candidates, inputs)), self.deadline_s, type(self).__name__)


class SampleThenCombine(Deadlined):
    """Shared by FusionOfN and BestOfN: sample N candidates (or take given ones), then one combining stage."""

    stage_name = "combine"

    def __init__(self, sample: Sample, signature: str | type[dspy.Signature] | None, deadline_s: float | None):
        super().__init__(deadline_s)
        self.sample = sample
        self.task_signature = task_signature(self.sample.module, signature)
        check_reserved_fields(self.task_signature)

    def combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        """The combining stage on a pool, as steps (``fusion_dspy.core.steps``): what a ``Route`` composes."""
        raise NotImplementedError

    def _steps(self, candidates: Pool | Sequence[Any] | None, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        attributes = {"gen_ai.operation.name": "invoke_workflow", "fusion.method": self.stage_name,
                      "fusion.n": self.sample.n}  # fmt: skip
        with tracing.span(f"fusion_dspy.{type(self).__name__}", attributes, tokens=True) as span:
            prediction = yield from self._stages(candidates, inputs)
            report = prediction.report
            span.set({"fusion.candidates": len(report.candidates), "fusion.selected_index": report.selected_index,
                      "fusion.fallback": report.fallback.cause.kind if report.fallback else None})  # fmt: skip
        return prediction

    def _stages(self, candidates: Pool | Sequence[Any] | None, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        meter = StageMeter()
        with meter.stage("sample"):
            pool = (yield Call(self.sample, inputs)) if candidates is None else Pool.of(candidates)
        with meter.stage(self.stage_name):
            combined = yield from self.combine(pool.require(), inputs)
        return fused_prediction(self.stage_name, combined, pool, meter)

"""What FusionOfN and BestOfN share: build their ``Sample`` (or take one), then draw and combine in two metered
stages, within an optional deadline, with the same result fields (candidates, where they came from, usage)."""

from collections.abc import Sequence
from typing import Any

import dspy

from fusion_dspy.core.concurrency import awithin, within
from fusion_dspy.core.meter import StageMeter
from fusion_dspy.core.pool import Pool
from fusion_dspy.core.sample import Sample, as_module
from fusion_dspy.core.signatures import check_reserved_fields, task_signature
from fusion_dspy.core.steps import Call, Steps, arun, run


class _Unset:
    def __repr__(self) -> str:
        return "<Sample's default>"


UNSET: Any = _Unset()  # a sampling option not given: Sample's own default applies


def build_sample(owner: str, module: Any, sample: Sample | None, **options: Any) -> Sample:
    """The ``Sample`` a FusionOfN/BestOfN draws from: the one given, or one built from the sampling options."""
    given = {name: value for name, value in options.items() if value is not UNSET}
    if sample is not None:
        if given:
            raise ValueError(f"{owner} got sample= and also the sampling option(s) {sorted(given)}, which only a new "
                             "Sample would use. Set them on the Sample you pass, or drop sample=.")  # fmt: skip
        return sample
    if module is None:
        raise ValueError(f"{owner} needs the module (or signature) to sample from, or an existing sample=Sample(...).")
    return Sample(as_module(module), **given)


class SampleThenCombine(dspy.Module):
    """Shared by FusionOfN and BestOfN: sample N candidates (or take given ones), then one combining stage."""

    stage_name = "combine"

    def __init__(self, sample: Sample, signature: str | type[dspy.Signature] | None, deadline_s: float | None):
        super().__init__()
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}.")
        self.deadline_s = deadline_s
        self.sample = sample
        self.task_signature = task_signature(self.sample.module, signature)
        check_reserved_fields(self.task_signature)

    def _combine(self, pool: Pool, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        raise NotImplementedError

    def _steps(self, candidates: Pool | Sequence[Any] | None, inputs: dict[str, Any]) -> Steps[dspy.Prediction]:
        meter = StageMeter()
        with meter.stage("sample"):
            pool = (yield Call(self.sample, inputs)) if candidates is None else Pool.of(candidates)
        with meter.stage(self.stage_name):
            combined = yield from self._combine(pool.require(), inputs)
        return self._result(combined, pool, meter)

    def forward(self, candidates: Pool | Sequence[Any] | None = None, **inputs) -> dspy.Prediction:
        if self.deadline_s is None:
            return run(self._steps(candidates, inputs))
        return within(lambda: run(self._steps(candidates, inputs)), self.deadline_s, type(self).__name__)

    async def aforward(self, candidates: Pool | Sequence[Any] | None = None, **inputs) -> dspy.Prediction:
        if self.deadline_s is None:
            return await arun(self._steps(candidates, inputs))
        return await awithin(arun(self._steps(candidates, inputs)), self.deadline_s, type(self).__name__)

    def _result(self, combined: dspy.Prediction, pool: Pool, meter: StageMeter) -> dspy.Prediction:
        fields = combined.toDict()
        fields["candidates"] = pool.predictions
        if any(model is not None for model in pool.models):  # drawn by a Sample: say where from
            fields["candidate_models"], fields["sample_failures"] = pool.models, pool.failures
            fields["truncated"] = pool.truncated  # candidates kept although their reply was cut at max_tokens
            fields["stragglers"], fields["samples_drawn"], fields["stop_reason"] = (pool.stragglers, pool.drawn,
                                                                                   pool.stop_reason)  # fmt: skip
        fields["stage_usage"] = meter.usage
        fields["stage_seconds"] = meter.seconds
        fields["stage_tokens"] = meter.tokens()
        return dspy.Prediction(**fields)

"""The library's typed fusion: a pydantic output field fuses to a valid instance; dspy.ToolCalls outputs fuse too."""

import json

import dspy
import pydantic
import pytest

import fusion_dspy as fd
from fusion_dspy.core.checked import CheckedAdapter
from fusion_dspy.core.json_output import json_type
from fusion_dspy.errors import FusionError
from fusion_dspy.testing import scripted_lm


class City(pydantic.BaseModel):
    name: str
    population: int = pydantic.Field(ge=0)


class CityFacts(dspy.Signature):
    """Name the city and its population."""

    question: str = dspy.InputField()
    city: City = dspy.OutputField()


def _city_lm(fused: dict, fusions: list | None = None):
    def respond(call):
        if call.wants("comparison"):
            (fusions if fusions is not None else []).append(call)
            return {"comparison": "all agree on Paris", "city": json.dumps(fused)}
        return {"city": json.dumps({"name": "Paris", "population": 2_100_000 + call.index})}

    return scripted_lm(respond)


def test_a_pydantic_output_field_fuses_to_a_valid_instance():
    fused = fd.FusionOfN(CityFacts, n=3, lm=_city_lm({"name": "Paris, France", "population": 2_102_650}))
    result = fused(question="Largest city of France?")
    assert isinstance(result.city, City) and result.city == City(name="Paris, France", population=2_102_650)
    assert all(isinstance(candidate.city, City) for candidate in result.candidates)


def test_an_invalid_typed_fusion_is_retried_then_falls_back_to_a_valid_candidate():
    fusions = []
    lm = _city_lm({"name": "Paris", "population": -5}, fusions)  # breaks the model's ge=0 on every try
    result = fd.FusionOfN(CityFacts, n=3, lm=lm, fallback="select")(question="Largest city of France?")
    assert isinstance(result.city, City) and result.city.name == "Paris" and result.city.population >= 2_100_000
    assert result.report.fallback.cause.kind == "unparsable"
    assert len({call.temperature for call in fusions}) == 2, "the fusion and its retry (at another temperature)"
    with pytest.raises(FusionError, match="could not be used"):
        fd.FusionOfN(CityFacts, n=2, lm=_city_lm({"name": "Paris"}))(question="Largest city of France?")


def test_a_json_schema_output_type_fuses_to_valid_json():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    task = dspy.Signature("question -> city").with_updated_fields("city", type_=json_type(schema, "CityJSON"))
    lm = scripted_lm(lambda call: {**({"comparison": "ok"} if call.wants("comparison") else {}),
                                   "city": json.dumps({"name": "Paris"})})  # fmt: skip
    result = fd.FusionOfN(task, n=2, lm=lm)(question="Capital of France?")
    assert result.city.root == {"name": "Paris"}


class Agentic(dspy.Signature):
    """Answer the question, or call a tool to find out."""

    question: str = dspy.InputField()
    tools: list[dspy.Tool] = dspy.InputField()
    answer: str = dspy.OutputField()
    tool_calls: dspy.ToolCalls = dspy.OutputField()


def get_weather(city: str) -> str:
    """Current weather of a city."""
    return "18 C"


def test_a_module_with_tool_call_outputs_fuses_to_one_decision():
    def respond(call):
        calls = {"tool_calls": [{"name": "get_weather", "args": {"city": "Paris" if call.index else "paris"}}]}
        extra = {"comparison": "both call get_weather"} if call.wants("comparison") else {}
        return {**extra, "answer": "", "tool_calls": json.dumps(calls)}

    result = fd.FusionOfN(dspy.Predict(Agentic), n=2, lm=scripted_lm(respond))(
        question="Weather in Paris?", tools=[dspy.Tool(get_weather)])  # fmt: skip
    assert isinstance(result.tool_calls, dspy.ToolCalls)
    assert [(call.name, call.args) for call in result.tool_calls.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert "get_weather" in str(result.candidates[0].tool_calls)


def test_checked_adapter_drops_invalid_candidates_and_reports_them():
    class PositiveOnly:
        def lm_kwargs(self):
            return {}

        def review(self, output, signature):
            return [] if output["city"].population > 0 else ["population must be positive"]

    def respond(call):
        if call.wants("comparison"):
            return {"comparison": "ok", "city": json.dumps({"name": "Paris", "population": 7})}
        return {"city": json.dumps({"name": "Paris", "population": call.index % 2})}  # 0 on even requests

    sampling = fd.SampleOptions(adapter=CheckedAdapter(dspy.ChatAdapter(), PositiveOnly()))
    result = fd.FusionOfN(CityFacts, n=4, lm=scripted_lm(respond), sampling=sampling)(question="?")
    assert result.city.population == 7 and len(result.candidates) == 2
    assert [failure.kind for failure in result.report.failures] == ["invalid", "invalid"]

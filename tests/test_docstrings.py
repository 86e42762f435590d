"""Every docstring ``Example:`` runs, offline: scripted LMs stand in for the models it names."""

import doctest
import importlib
import warnings
from pathlib import Path

import dspy
import pytest

import fusion_dspy as fd
from fusion_dspy.backends import Backends, FusionConfig, PlainAdapter
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from fusion_dspy.workflows import Task
from tests.test_layers import MODULES

SLOW = {"fusion_dspy.backends.embedded"}  # really starts the embedded model
# One model, `lm`, plays every role with DSPy's default adapter; the tests hand in its scripted dspy.LM.
SCRIPTED_CONFIG = FusionConfig.model_validate({"models": {"lm": {"model": "scripted/lm"}},
                                               "roles": {"generators": "lm"}})  # fmt: skip


def answers(call):
    """Any request answered in kind: '4' for answers, a comparison for the fusor, candidate 1 for judges."""
    values = {"answer": "4", "comparison": "They agree.", "best_candidate": 1, "score": 7, "reasoning": "2 + 2 = 4",
              "response": "Hello!"}
    return {name: values.get(name, f"a {name}") for name in call.output_fields}


def namespace(tmp_path: Path, upstream: StubOpenAIServer) -> dict:
    lm = scripted_lm(answers)
    task = Task("qa", "question -> answer", metric=lambda example, pred, trace=None: example.answer == pred.answer)
    devset = [dspy.Example(question=f"{i} + 4 - {i}?", answer="4").with_inputs("question") for i in range(3)]
    return {"dspy": dspy, "fd": fd, "PlainAdapter": PlainAdapter, "scripted_lm": scripted_lm,
            "StubOpenAIServer": StubOpenAIServer, "tmp_path": tmp_path,
            "stub_config": stub_config(tmp_path, upstream), "lm": lm, "task": task, "devset": devset,
            "backends": Backends(SCRIPTED_CONFIG, lms={"lm": lm})}  # fmt: skip


def stub_config(tmp_path: Path, upstream: StubOpenAIServer) -> Path:
    """A config file whose one model is a loopback OpenAI-compatible server answering every field in kind."""
    path = tmp_path / "stub.yaml"
    path.write_text(f"{{models: {{stub: {{model: openai/stub, api_base: '{upstream.api_base}', cache: false}}}}, "
                    "roles: {generators: stub}, fusion: {n: 2}}")
    return path


def examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name, _ in MODULES:
        if name == "fusion_dspy.cli":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples and test.name.startswith(name):  # defined here, not imported
                marks = [pytest.mark.embedded] if name in SLOW else []
                yield pytest.param(test, id=test.name, marks=marks)


@pytest.mark.parametrize("test", list(examples()))
def test_example_runs(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    output: list[str] = []
    with StubOpenAIServer(respond=answers) as upstream:
        test.globs = {**test.globs, **namespace(tmp_path, upstream)}
        runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)


def test_every_public_module_has_an_example():
    names = {param.values[0].name.rsplit(".", 1)[0] for param in examples()} | {p.values[0].name for p in examples()}
    assert {"fusion_dspy.core.fusion.FusionOfN", "fusion_dspy.core.sample.Sample", "fusion_dspy.core.fuse.Fuse",
            "fusion_dspy.core.select.Select", "fusion_dspy.core.pool.Pool"} <= names  # fmt: skip

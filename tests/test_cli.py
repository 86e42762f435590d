"""The fusion-dspy command and the batch runner, against a loopback stub server."""

import io
import json

import pytest
import yaml
from rich.console import Console

from fusion_dspy.backends.config import read_config
from fusion_dspy.cli import main
from fusion_dspy.testing import StubOpenAIServer, scripted_lm
from fusion_dspy.workflows.batch import run_batch
from fusion_dspy.workflows.demo import NEXT_STEPS, DemoPrompt, run_demo
from fusion_dspy.workflows.jsonl import done_ids
from tests.conftest import qa_responder, short_embedded_config


def respond(call):
    if call.wants("comparison"):
        return {"comparison": "c", "answer": "fused answer"}
    if "poison" in call.user:
        return "I refuse to follow the format."
    return {"answer": "a candidate"}


@pytest.fixture
def config_file(tmp_path):
    with StubOpenAIServer(respond=respond) as server:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"models": {"stub": {"model": "openai/stub", "api_base": server.api_base}},
                                        "roles": {"generators": "stub"}, "fusion": {"n": 2}}))  # fmt: skip
        yield path


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_one_line_per_input_and_resumes(tmp_path, config_file):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"question": "one"}\n{"id": "b", "question": "poison two"}\n{"question": "three"}\n')
    output = tmp_path / "out.jsonl"
    args = ["run", "--config", str(config_file), "--inputs", str(inputs), "--output", str(output), "--quiet"]
    assert main(args) == 0
    records = {r["id"]: r for r in lines(output)}
    assert set(records) == {"0", "2"}
    assert records["0"]["answer"] == "fused answer" and len(records["0"]["candidates"]) == 2
    assert records["0"]["report"]["tokens"]["sample"] > 0 and records["0"]["error"] is None
    [failed] = lines(tmp_path / "out.errors.jsonl")  # a broken item is recorded, the batch goes on
    assert failed["id"] == "b" and failed["error"].startswith("SamplingError")
    (tmp_path / "out.errors.jsonl").write_text(json.dumps({**failed, "error": "an earlier failure"}) + "\n")
    assert main(args) == 0
    assert len(lines(output)) == 2, "a rerun must not redo finished items"
    [again] = lines(tmp_path / "out.errors.jsonl")  # tried again, failed again: only its latest failure is kept
    assert again["id"] == "b" and again["error"].startswith("SamplingError")


def test_run_one_input_and_select_method(tmp_path, config_file):
    output = tmp_path / "one.jsonl"
    assert main(["run", "--config", str(config_file), "--input", "hi", "--method", "select", "--n", "3",
                 "--output", str(output), "--quiet"]) == 0  # fmt: skip
    [record] = lines(output)
    assert record["answer"] == "a candidate" and record["report"]["selected_index"] == 0
    assert len(record["candidates"]) == 3


def test_an_interrupted_last_line_is_repaired(tmp_path):
    output = tmp_path / "out.jsonl"
    output.write_text('{"id": "0", "answer": "x"}\n{"id": "1", "ans')
    assert done_ids(output) == {"0"}
    assert output.read_text() == '{"id": "0", "answer": "x"}\n'
    import fusion_dspy as fd

    program = fd.FusionOfN("question -> answer", n=2, lm=scripted_lm(qa_responder))
    counts = run_batch(program, [{"question": "a"}, {"question": "b"}], output, ["question"], show_progress=False)
    assert counts == {"done": 1, "failed": 0, "skipped": 1}
    assert [r["id"] for r in lines(output)] == ["0", "1"]


def test_clear_errors_and_exit_codes(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml"), "--input", "x"]) == 2
    assert "no such config file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    assert main(["run", "--inputs", str(bad), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert f"{bad}:2: not a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["demo"], ["run"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0 and "usage: fusion-dspy" in capsys.readouterr().out


def test_demo_shows_candidates_selection_fusion_and_costs(config_file):
    out = io.StringIO()
    rows = run_demo(read_config(config_file), n=2, prompts=["Why?", "poison"], console=Console(file=out, width=120))
    text = out.getvalue()
    assert "a candidate" in text and "Best-of-N (consensus: the candidate closest to all the others) keeps" in text
    assert "Fusion-of-N writes a new answer from all of them" in text and "fused answer" in text
    assert "cost of this prompt" in text
    assert rows[0].error is None and rows[0].tokens["sample"] > 0 and rows[0].tokens["fuse"] > 0
    assert rows[1].error.startswith("SamplingError") and "'poison' failed" in text  # reported, demo went on


def test_demo_says_which_prompts_are_checkable_checks_them_and_ends_with_what_to_run_next(config_file):
    out = io.StringIO()
    prompts = [DemoPrompt("Capital?", "fused", r"\bfused\b"), DemoPrompt("Number?", "42", r"\b42\b"), "Why?"]
    rows = run_demo(read_config(config_file), n=2, prompts=prompts, console=Console(file=out, width=200))
    text = out.getvalue()
    assert "Capital?  (short question with a known answer: fused)" in text and "Why?  (your prompt)" in text
    # the stub's candidates say "a candidate" and its fusor "fused answer": right on the first, wrong on the second
    assert rows[0].right == {"one candidate": [False, False], "Best-of-N": [False], "Fusion-of-N": [True]}
    assert rows[1].right["Fusion-of-N"] == [False] and rows[2].right == {}
    assert "Fusion-of-N writes a new answer from all of them: ✓ says fused" in text and "✗ no 42" in text
    assert ("Answers that contain the known answer, on the short questions: one candidate 0/4, Best-of-N 0/2, "
            "Fusion-of-N 1/2") in text  # fmt: skip
    assert text.rstrip().endswith(NEXT_STEPS.split("·")[-1].strip())
    assert all(command in NEXT_STEPS for command in ("--config", "fusion-dspy serve", "fusion-dspy eval"))


@pytest.mark.embedded
def test_demo_on_the_embedded_model():
    out = io.StringIO()
    rows = run_demo(short_embedded_config(), n=2, prompts=["Name a primary color."],
                    console=Console(file=out, width=120))  # fmt: skip
    assert rows[0].error is None, rows[0].error
    assert rows[0].tokens["sample"] > 0 and rows[0].tokens["fuse"] > 0
    assert "smollm2-135m-instruct-q4_1" in out.getvalue() and "tiny model" in out.getvalue()

"""A command's process-wide set-up (``fusion_dspy.process.CommandProcess``): made on entering, put back on leaving,
so a command run in-process leaves nothing behind; a key is masked while it is held."""

import gc
import json
import logging

import dspy
import pytest
import yaml

from fusion_dspy.backends.secrets import HELD, Redactor, hold
from fusion_dspy.cli import main
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.process import CommandProcess, ProcessState
from fusion_dspy.testing import StubOpenAIServer

KEY = "sk-process-0123456789abcdef"
OTHER = "sk-other-0123456789abcdef"


def state() -> dict:
    """Everything a command may change process-wide, comparable."""
    root = logging.getLogger()
    return {"record factory": logging.getLogRecordFactory(), "root handlers": list(root.handlers),
            "root level": root.level, "dspy handler levels": [h.level for h in logging.getLogger("dspy").handlers],
            "gc enabled": gc.isenabled(), "gc frozen": gc.get_freeze_count() > 0, "gc threshold": gc.get_threshold(),
            "disable_history": dspy.settings.disable_history, "trace": id(dspy.settings.trace),
            "held": list(HELD.secrets), "commands": list(CommandProcess.active)}  # fmt: skip


def masked_in_logs(text: str, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("fusion_dspy.test").warning("upstream said: %s", text)
    return caplog.records[-1].getMessage()


def test_entering_changes_the_process_and_leaving_puts_every_change_back(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh interpreter: logging.basicConfig adds its handler
    assert logging.getLogger("dspy").handlers, "DSPy logs through handlers of its own, which a command quiets"
    before = state()
    with CommandProcess(verbose=False) as command:
        command.keep_no_history()
        hold(KEY)
        inside = state()
    assert inside["record factory"].masks is HELD, "log records mask the keys held"
    assert len(inside["root handlers"]) == 1 and inside["root level"] == logging.ERROR
    assert set(inside["dspy handler levels"]) == {logging.ERROR}, "DSPy's warnings off the console"
    assert inside["gc enabled"] and inside["gc frozen"], "imports frozen, the collector on"
    assert inside["disable_history"] and dspy.settings.trace is not None and inside["held"] == [KEY]
    assert inside["commands"] == [command]
    assert state() == before


def test_a_key_is_masked_while_held_and_released_after(caplog, tmp_path):
    from fusion_dspy.workflows.jsonl import ResultsLog

    with CommandProcess() as command:
        hold(KEY)
        assert masked_in_logs(f"bad key {KEY}", caplog) == "upstream said: bad key ***"
        assert command.mask(f"error: {KEY}") == "error: ***"
        with ResultsLog(tmp_path / "out.jsonl") as log:
            log.write({"id": "a", "error": f"401: key {KEY}"})
    assert json.loads((tmp_path / "out.jsonl").read_text())["error"] == "401: key ***"
    assert KEY not in HELD.secrets, "released with the command"
    assert masked_in_logs(f"bad key {KEY}", caplog) == f"upstream said: bad key {KEY}", "the log mask is gone"


def test_nested_and_reentered_each_put_back_what_they_found(caplog):
    before = state()
    outer = CommandProcess()
    with outer:
        outer.keep_no_history()
        hold(KEY)
        outer_state = state()
        made = [[] for _ in range(100_000)]  # alive, made while the outer one is entered
        frozen = gc.get_freeze_count()
        with CommandProcess(verbose=True) as inner:
            hold(OTHER)
            inner.keep_no_history()
            assert masked_in_logs(f"{KEY} {OTHER}", caplog) == "upstream said: *** ***"
            assert CommandProcess.current() is inner
        assert state() == outer_state, "the inner one released its key, kept the outer one's freeze and history"
        assert gc.get_freeze_count() < frozen + len(made) // 2, "it froze no more: it could not unfreeze that alone"
        with outer:  # the same one again, inside itself
            hold(OTHER)
            assert CommandProcess.current() is outer
        assert state() == outer_state
        assert masked_in_logs(KEY, caplog) == "upstream said: ***"
    assert state() == before
    with outer:  # and again after leaving
        assert outer.mask(KEY) == KEY and gc.get_freeze_count() > 0
    assert state() == before


def test_what_the_start_up_built_is_frozen_until_left():
    before = state()
    with CommandProcess() as command:
        built = [[] for _ in range(10_000)]  # a server's backends, programs and app, made after entering
        assert any(alive is built for alive in gc.get_objects())
        command.freeze_start_up()
        assert not any(alive is built for alive in gc.get_objects()), "no collection walks it any more"
    assert state() == before and any(alive is built for alive in gc.get_objects())


def test_a_server_collects_young_objects_less_often_until_left():
    before = state()
    with CommandProcess() as command:
        command.collect_young_less_often(5_000)
        assert gc.get_threshold() == (5_000, *before["gc threshold"][1:])
    assert state() == before


def test_a_set_up_that_fails_leaves_nothing_changed(monkeypatch):
    import fusion_dspy.process as process

    def broken():
        raise RuntimeError("no litellm")

    before = state()
    monkeypatch.setattr(process, "_freeze_imports", broken)
    with pytest.raises(RuntimeError, match="no litellm"), CommandProcess():
        pass
    assert state() == before


def test_entered_for_good_until_a_saved_state_is_restored():
    """A worker's or a server's process is the job's (never left); a test puts it back from what it saved."""
    before = state()
    found = ProcessState.now()
    CommandProcess(verbose=True).enter().keep_no_history()
    hold(KEY)
    assert dspy.settings.disable_history and gc.get_freeze_count() > 0 and KEY in HELD.secrets
    found.restore()
    assert state() == before


def test_a_command_that_ends_the_process_leaves_its_imports_frozen():
    """The interpreter's exit then does not walk what the imports built (~1 s); everything else is put back."""
    before = state()
    with CommandProcess(ends_process=True):
        pass
    assert gc.get_freeze_count() > 0
    assert {name: value for name, value in state().items() if name != "gc frozen"} == \
        {name: value for name, value in before.items() if name != "gc frozen"}  # fmt: skip


def test_keep_no_history_of_a_command_outside_one_says_so():
    from fusion_dspy import _commands

    with pytest.raises(FusionDSPyError, match="No command process is active"):
        _commands.keep_no_history()
    assert not dspy.settings.disable_history


def test_a_cli_command_in_process_masks_the_key_and_leaves_nothing_behind(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("PROCESS_TEST_KEY", KEY)
    before = state()
    with StubOpenAIServer(respond=lambda call: {}, status=401, echo_authorization=True) as server:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "models": {"m": {"model": "openai/m", "api_base": server.api_base, "api_key_env": "PROCESS_TEST_KEY",
                             "cache": False, "num_retries": 0, "batch_samples": False}},
            "roles": {"generators": "m"}, "fusion": {"n": 2}}))  # fmt: skip
        output = tmp_path / "o.jsonl"
        with caplog.at_level(logging.WARNING):
            assert main(["-v", "run", "--config", str(config), "--input", "q", "--output", str(output),
                         "--quiet"]) == 1  # fmt: skip
            assert main(["run", "--config", str(config), "--inputs", str(tmp_path / "missing.jsonl"), "--output",
                         str(output)]) == 2  # fmt: skip
    errors = (tmp_path / "o.errors.jsonl").read_text()
    assert KEY in server.authorizations[0] and "(sent Bearer ***)" in errors and KEY not in errors
    assert "(sent Bearer ***)" in caplog.text and KEY not in caplog.text and KEY not in capsys.readouterr().err
    assert state() == before, "no log mask, freeze, DSPy setting or held key left behind"


def test_the_old_names_still_work_and_say_what_replaces_them(caplog):
    from fusion_dspy.backends.secrets import redact_logs
    from fusion_dspy.workflows.batch import freeze_imports, keep_no_history, quiet_dspy_logs

    with pytest.deprecated_call(match="CommandProcess"):
        freeze_imports()
    with pytest.deprecated_call(match="CommandProcess"):
        keep_no_history()
    with pytest.deprecated_call(match="CommandProcess"):
        quiet_dspy_logs()
    with pytest.deprecated_call(match="CommandProcess"):
        redact_logs(Redactor([KEY]))
    assert gc.get_freeze_count() > 0 and dspy.settings.disable_history and dspy.settings.trace is None
    assert set(h.level for h in logging.getLogger("dspy").handlers) == {logging.ERROR}
    assert masked_in_logs(KEY, caplog) == "upstream said: ***"

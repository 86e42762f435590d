"""Runs every example of the README and of docs/ verbatim, with Sybil (collected by the repo's root conftest.py).

The convention (docs/index.md, "How these pages are tested"):

- ```python blocks run in page order in one namespace per page; ```bash blocks run one command per line
  (``fusion-dspy ARGS`` in this process, through ``fusion_dspy.cli.main``; ``... &`` in the background until the
  page ends, its ``--port`` answering ``/health`` first; ``make TARGET`` as ``make -n TARGET``; the rest under
  bash). Every command must exit 0.
- A ```text title="output" block must match what the block before it printed (doctest's ELLIPSIS: ``...``
  matches anything; whitespace is normalized).
- ``<!-- skip: next "why" -->`` skips the next block (Sybil's skip directive), with its reason.
- Each page runs in a fresh temp dir holding ``configs/``: the repo's configs with every model's ``api_base``
  pointed at one loopback stub server started for the page, and each ``api_key_env`` variable set to a dummy.
"""

import contextlib
import doctest
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import dspy
import yaml
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from fusion_dspy.cli import main
from fusion_dspy.process import ProcessState
from fusion_dspy.testing import ScriptedCall, StubOpenAIServer

REPO = Path(__file__).resolve().parents[1]
OUTPUT = 'text title="output"'
PAGE = "_docs_page"  # the namespace key of a page's state
SHOWN_ONLY = {"text", "console", "yaml", "json", "toml", OUTPUT}  # fenced blocks that are shown, never run
RUN = {"python", "bash"}


def stub_responder(call: ScriptedCall) -> dict[str, Any]:
    """What the page's stub server answers: generators `answer <index>`, the fusor `fused`, judges candidate 1."""
    if call.wants("comparison") and not call.wants("best_candidate"):
        return {"comparison": "candidates compared", **{name: "fused" for name in call.output_fields
                                                         if name != "comparison"}}  # fmt: skip
    if call.wants("best_candidate"):
        return {"comparison": "1 is best", "best_candidate": 1}
    if call.wants("score"):
        return {"score": 5}
    return {name: f"{name} {call.index}" for name in call.output_fields}


class Page:
    """One page's working directory, stub server, environment and background processes."""

    def __init__(self) -> None:
        self.previous_dir = Path.cwd()
        self.dir = Path(tempfile.mkdtemp(prefix="fusion-docs-"))
        self.stub = StubOpenAIServer(respond=stub_responder).start()
        self.state = ProcessState.now()
        self.environ = dict(os.environ)
        self.background: list[subprocess.Popen] = []
        self.output = ""
        self._configs()
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        os.chdir(self.dir)

    def _configs(self) -> None:
        """The repo's configs with every model's (and replica's) api_base on the stub: the same shape otherwise."""
        (self.dir / "configs").mkdir()
        for source in sorted((REPO / "configs").iterdir()):
            target = self.dir / "configs" / source.name
            if source.suffix not in (".yaml", ".yml"):
                shutil.copy(source, target)
                continue
            config = yaml.safe_load(source.read_text(encoding="utf-8"))
            for model in (config.get("models") or {}).values():
                if model.get("model") == "embedded":
                    continue
                model["api_base"] = self.stub.api_base
                for replica in model.get("deployments") or []:
                    replica["api_base"] = self.stub.api_base
                if model.get("api_key_env"):
                    os.environ.setdefault(model["api_key_env"], "sk-docs-stub")
            target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def close(self) -> None:
        for process in self.background:  # each a `fusion-dspy serve`: Ctrl-C stops it without SIGTERM's drain (5 s)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.stub.stop()
        os.chdir(self.previous_dir)
        os.environ.clear()
        os.environ.update(self.environ)
        self.state.restore()
        dspy.configure(lm=None, adapter=None, track_usage=False, trace=[])
        shutil.rmtree(self.dir, ignore_errors=True)


def setup(namespace: dict[str, Any]) -> None:
    namespace[PAGE] = Page()
    namespace["__name__"] = "__docs__"


def teardown(namespace: dict[str, Any]) -> None:
    namespace.pop(PAGE).close()


class Tee(io.StringIO):
    """Keeps what a block prints and still shows it (pytest shows it on a failure)."""

    def __init__(self, stream: Any):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


@contextlib.contextmanager
def printed(page: Page):
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        try:
            yield
        finally:
            page.output = tee.getvalue()


def run_python(example: Example) -> None:
    page = example.namespace[PAGE]
    source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
    with printed(page):
        exec(compile(source, example.path, "exec", dont_inherit=True), example.namespace)


def commands(block: str) -> list[str]:
    """A shell block's commands: one a line, a trailing backslash joining the next."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _wait_healthy(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the background command exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return
        time.sleep(0.3)
    raise AssertionError(f"nothing answered on port {port} within 180 s:\n{log.read_text()}")


def _background(page: Page, argv: list[str]) -> None:
    assert argv[0] == "fusion-dspy", f"only fusion-dspy runs in the background here, not {argv[0]}"
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 8000
    with socket.socket() as probe:  # something else answering there would pass for this server
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is in use: the page's server cannot start"
    log = page.dir / f"background-{len(page.background)}.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "fusion_dspy.cli", *argv[1:]], cwd=page.dir,
                                   stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    page.background.append(process)
    _wait_healthy(port, process, log)


def run_shell(example: Example) -> None:
    page = example.namespace[PAGE]
    with printed(page):
        for command in commands(example.parsed):
            argv = shlex.split(command, comments=True)
            if argv[-1] == "&":
                _background(page, argv[:-1])
            elif argv[0] == "fusion-dspy":
                errors = io.StringIO()
                with contextlib.redirect_stderr(errors):
                    code = main(argv[1:])
                assert code == 0, f"{command}\nexited with {code}:\n{errors.getvalue()}"
            elif argv[0] == "make":
                done = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True)
                assert done.returncode == 0, f"make -n {' '.join(argv[1:])}:\n{done.stderr}"
            else:
                path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
                done = subprocess.run(command, shell=True, executable="/bin/bash", cwd=page.dir, capture_output=True,
                                      text=True, env={**os.environ, "PATH": path}, timeout=300)  # fmt: skip
                print(done.stdout, end="")
                assert done.returncode == 0, f"{command}\nexited with {done.returncode}:\n{done.stderr}"


def check_output(example: Example) -> None:
    """The block before printed this (doctest's ELLIPSIS and NORMALIZE_WHITESPACE)."""
    got, want = example.namespace[PAGE].output, str(example.parsed)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert doctest.OutputChecker().check_output(want, got, flags), f"printed:\n{got}\nbut the page shows:\n{want}"


def fenced_languages(text: str) -> list[str]:
    """The info string of each fenced block of a page, in order (for the test that no block goes unrun by a typo)."""
    fences, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if not inside:
                fences.append(line.strip()[3:].strip())
            inside = not inside
    return fences


sybil = Sybil(
    parsers=[SkipParser(), CodeBlockParser("python", run_python), CodeBlockParser("bash", run_shell),
             CodeBlockParser(OUTPUT, check_output)],
    patterns=["*.md"],  # under the repo: pytest collects README.md and docs/ (pyproject testpaths)
    excludes=["docs/_gen/*"],
    path=str(REPO),
    setup=setup,
    teardown=teardown,
)

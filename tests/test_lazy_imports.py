"""litellm is imported only when a model needs it (fusion_dspy/_litellm.py), each check in a fresh interpreter."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.engine_support import litellm_free, litellm_importers

STUB = """
import sys
from fusion_dspy.testing import StubOpenAIServer
server = StubOpenAIServer(respond=lambda call: {"comparison": "same", "answer": "4"} if call.wants("comparison")
                          else {"answer": "4"}).start()
"""


def fresh(code: str, tmp_path, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON line last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_native_programs_call_never_imports_litellm(tmp_path):
    seen = fresh(STUB + """
import json, dspy, fusion_dspy as fd
from fusion_dspy.core.context import known_context_window
# A model litellm's price map knows: its context window is known, so the fusor's prompt is checked against it.
config = {"models": {"stub": {"model": "openai/gpt-4o-mini", "api_base": server.api_base, "cache": False}},
          "roles": {"generators": "stub"}, "fusion": {"n": 3}}
open("config.json", "w").write(json.dumps(config))
program = fd.load_config("config.json").program(dspy.Predict("question -> answer"))
answer = program(question="2 + 2?").answer
window = known_context_window("openai/gpt-4o")  # litellm's map, read without importing it
print(json.dumps({"answer": answer, "window": window, "requests": len(server.requests),
                  "litellm": "litellm" in sys.modules}))
""", tmp_path)  # fmt: skip
    assert seen == {"answer": "4", "window": 128000, "requests": 2, "litellm": False}  # 3 samples in 1, the fusor


def test_the_cli_run_on_a_native_config_never_imports_litellm(tmp_path):
    seen = fresh(STUB + """
import json
from fusion_dspy.cli import main
open("config.yaml", "w").write("{roles: {generators: stub}, models: {stub: {model: openai/stub, cache: false, "
                               "api_base: '%s'}}}" % server.api_base)
code = main(["run", "--config", "config.yaml", "--input", "2 + 2?", "--output", "out.jsonl", "--quiet"])
print(json.dumps({"code": code, "answer": json.loads(open("out.jsonl").read())["answer"],
                  "litellm": "litellm" in sys.modules}))
""", tmp_path)  # fmt: skip
    assert seen == {"code": 0, "answer": "4", "litellm": False}


def without_litellm(records: Path) -> dict[str, str]:
    """This environment, for processes that may not import litellm (``tests.engine_support.litellm_free``)."""
    records.mkdir()
    return {**os.environ, **litellm_free(records)}


def test_the_cli_s_worker_processes_on_a_native_config_never_import_litellm(tmp_path):
    seen = fresh(STUB + """
import json
from fusion_dspy.cli import main
open("config.yaml", "w").write("{roles: {generators: stub}, models: {stub: {model: openai/stub, cache: false, "
                               "api_base: '%s'}}}" % server.api_base)
open("in.jsonl", "w").write("".join(json.dumps({"question": f"{i} + {i}?"}) + "\\n" for i in range(6)))
code = main(["run", "--config", "config.yaml", "--inputs", "in.jsonl", "--output", "out.jsonl", "--quiet",
             "--workers", "2", "--concurrency", "4"])
print(json.dumps({"code": code, "answers": [json.loads(line)["answer"] for line in open("out.jsonl")]}))
""", tmp_path, env=without_litellm(tmp_path / "imports"))  # fmt: skip
    assert seen["code"] == 0 and seen["answers"] == ["4"] * 6
    assert litellm_importers(tmp_path / "imports") == {}, "no process imported litellm"


def test_serve_on_a_native_config_never_imports_litellm(tmp_path):
    seen = fresh(STUB.replace('"answer"', '"response"') + """
import asyncio, json, httpx
from fusion_dspy.serve.command import ServeOptions
open("config.yaml", "w").write("{roles: {generators: stub}, models: {stub: {model: openai/stub, cache: false, "
                               "api_base: '%s'}}}" % server.api_base)
app = ServeOptions(config="config.yaml").app()
async def ask():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fusion") as client:
        body = {"model": "fusion", "messages": [{"role": "user", "content": "2 + 2?"}]}
        plain = (await client.post("/v1/chat/completions", json=body)).json()
        streamed = (await client.post("/v1/chat/completions", json={**body, "stream": True})).text
        return plain["choices"][0]["message"]["content"], "[DONE]" in streamed
print(json.dumps({"reply": asyncio.run(ask()), "litellm": "litellm" in sys.modules}))
""", tmp_path, env=without_litellm(tmp_path / "imports"))  # fmt: skip
    assert seen == {"reply": ["4", True], "litellm": False}
    assert litellm_importers(tmp_path / "imports") == {}, "no process imported litellm"


@pytest.mark.parametrize(("config", "to_the_end"), [("{engine: litellm}", True),
                                                   ("{deployments: [{api_base: BASE}, {api_base: BASE}]}", False)])
def test_a_litellm_model_imports_it_with_the_local_cost_map_switch_set_first(tmp_path, config, to_the_end):
    """The switch is read the moment litellm's import starts. One case then runs its command to the end (a
    litellm model works in a fresh interpreter); the other ends there, since the import (5-7 s of CPU here) is
    all it adds."""
    (tmp_path / "model.yaml").write_text(config)
    seen = fresh(STUB + f"TO_THE_END = {to_the_end}" + """
import json, os, yaml
switch = []
class Watch:  # at the moment litellm's import starts: the switch (and, unless TO_THE_END, the end of the process)
    def find_spec(self, name, path=None, target=None):
        if name == "litellm" and not switch:
            switch.append(os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP"))
            if not TO_THE_END:
                print(json.dumps({"switch": switch}), flush=True)
                os._exit(0)
sys.meta_path.insert(0, Watch())
from fusion_dspy.cli import main
model = {"model": "openai/stub", "api_base": server.api_base, "cache": False,
         **yaml.safe_load(open("model.yaml").read().replace("BASE", server.api_base))}
open("config.yaml", "w").write(yaml.safe_dump({"roles": {"generators": "stub"}, "models": {"stub": model}}))
code = main(["run", "--config", "config.yaml", "--input", "2 + 2?", "--output", "out.jsonl", "--quiet"])
print(json.dumps({"switch": switch, "code": code, "litellm": "litellm" in sys.modules}))
""", tmp_path)  # fmt: skip
    assert seen == ({"switch": ["True"], "code": 0, "litellm": True} if to_the_end else {"switch": ["True"]})

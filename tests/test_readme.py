"""The README's usage example must really run."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs(capsys):
    example = re.search(r"## Usage\s+```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Paris [") and "'sample':" in printed[0]
    assert printed[1].startswith("Paris (")


def test_readme_beyond_one_call_examples_run(capsys):
    section = README.read_text().split("## Beyond one fusion call", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 4, "group fusion, layers, permutations, router"
    printed = []
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
        printed += capsys.readouterr().out.splitlines()
    assert printed[0] == "[[[0, 1, 2], [3, 4, 5], [6, 7, 8]]] fused 3 drafts"
    assert printed[1] == str(["proposal after reading 3 answers"] * 3)
    assert printed[2] == str(["sample.module", "fuse.predict", "layers.layer_2.module"])
    assert printed[3] == "Lyon" and printed[4].startswith("Paris [[0, 1, 2, 3], [3, 2, 1, 0], [")
    assert printed[5] == "[1, 0, 0, 1] False"
    assert printed[6] == "{'method': 'fuse', 'n': 4} {'method': 'select', 'n': 4}"

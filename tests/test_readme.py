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

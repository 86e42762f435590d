"""The docs' fault table (docs/operations/faults.md, "When things fail") names, on every row, tests that exist."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"`(test_\w+)(?:\[[^\]`]*\])?`")


def fault_rows() -> list[list[str]]:
    """The cells of each row of the one table of the "When things fail" page."""
    page = (REPO / "docs" / "operations" / "faults.md").read_text(encoding="utf-8")
    titles = re.findall(r"^#{1,2} .*$", page, re.MULTILINE)
    assert titles == ["# When things fail"], f"one fault page title and no sections, not {titles}"
    section = page.split("# When things fail\n", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header, rule, *body = rows
    assert header.split("|")[1:-1] == [" fault ", " what the library does ", " what you see ", " test "], header
    assert set(rule) <= {"|", "-"}
    return [[cell.strip() for cell in row.split("|")[1:-1]] for row in body]


def defined_tests() -> set[str]:
    names = set()
    for path in (REPO / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_row_of_the_fault_table_names_tests_that_exist():
    rows, known = fault_rows(), defined_tests()
    assert len(rows) >= 20
    for cells in rows:
        assert len(cells) == 4, f"a row with {len(cells)} cells (a '|' inside a cell?): {cells[0]!r}"
        named = NAMED.findall(cells[3])
        assert named, f"the row {cells[0]!r} names no test"
        missing = [name for name in named if name not in known]
        assert not missing, f"the row {cells[0]!r} names tests that do not exist: {missing}"

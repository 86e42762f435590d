"""The layers import downwards only, and nothing imports DSPy's private or deprecated names."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lower numbers sit lower. A module may import its own layer and the ones below it, never one above.
LAYERS = {
    "fusion_dspy.errors": 0,
    "fusion_dspy._litellm": 0,  # imports litellm when a model needs it; backends and core ask it
    "fusion_dspy.failures": 0,  # classifies every error by its type; fusion_dspy.core asks it
    "fusion_dspy.tracing": 0,  # OpenTelemetry spans, when it is configured; fusion_dspy.core opens them
    "fusion_dspy.core": 1,
    "fusion_dspy.testing": 1,
    "fusion_dspy.backends": 2,
    "fusion_dspy.process": 2,  # what a command changes process-wide: the backends hold their keys through it
    "fusion_dspy.workflows": 3,
    "fusion_dspy.programs": 4,
    "fusion_dspy.optimizers": 4,
    "fusion_dspy.cli": 5,
    "fusion_dspy.serve": 5,  # applications, beside the CLI: a tuned program served as a model
    "fusion_dspy.litellm_provider": 5,
    "fusion_dspy": 5,  # the facade (`import fusion_dspy as fd`) re-exports every layer: only the top may use it
}
FOLDERS = {"fusion_dspy": "fusion_dspy", "programs": "fusion_dspy.programs", "optimizers": "fusion_dspy.optimizers"}
# DSPy 3.4 transition interfaces that 3.5 removes (dspy/clients/_deprecation.py) and private engine helpers.
DEPRECATED_DSPY = {"complete_legacy", "LegacyEngine", "AsyncLegacyEngine", "_arguments", "_response"}


def layer(module: str) -> int:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        if ".".join(parts[:size]) in LAYERS:
            return LAYERS[".".join(parts[:size])]
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO / folder).with_suffix("")
            name = ".".join([package, *relative.parts]).removesuffix(".__init__")
            yield name, path


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names]


MODULES = list(modules())


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_imports_point_down(name, path):
    if name == "fusion_dspy._compat":
        return  # maps old paths to new ones by name, importing nothing of its own accord
    upward = [target for target, _ in imports(path)
              if target.startswith("fusion_dspy") and layer(target) > layer(name)]  # fmt: skip
    assert not upward, f"{name} (layer {layer(name)}) imports the higher layer(s) {upward}"


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_no_private_or_deprecated_dspy_names(name, path):
    private = [f"{target}:{names}" for target, names in imports(path) if target.split(".")[0] == "dspy"
               and any(part.startswith("_") for part in [*target.split("."), *names])]  # fmt: skip
    assert not private, f"{name} imports DSPy's private names {private}"
    used = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
    used |= {imported for _, names in imports(path) for imported in names}
    assert not used & DEPRECATED_DSPY, f"{name} uses DSPy's deprecated interfaces {sorted(used & DEPRECATED_DSPY)}"


def test_the_check_itself_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from fusion_dspy.workflows.task import Task\nfrom dspy.clients._litellm import get_litellm\n")
    found = list(imports(probe))
    assert layer(found[0][0]) > layer("fusion_dspy.core.sample")
    assert any(part.startswith("_") for part in found[1][0].split("."))

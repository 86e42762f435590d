"""The docs' examples are all run (tests/docs_examples.py, collected by conftest.py), and a drift fails them.

The examples themselves run as tests of their own: `pytest README.md docs/` (each block one test, named by its
page and line). These tests check the harness: no block escapes it, a wrong output or a failing command fails.
"""

import importlib.util
from pathlib import Path

import pytest

from fusion_dspy.backends import config
from tests.docs_examples import OUTPUT, RUN, SHOWN_ONLY, fenced_languages, setup, sybil, teardown

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_block_is_run_or_shown_and_sybil_collects_every_runnable_one(page):
    languages = fenced_languages(page.read_text(encoding="utf-8"))
    unknown = [info for info in languages if info not in RUN | SHOWN_ONLY]
    assert not unknown, f"{page.name}: blocks neither run nor shown ({sorted(RUN)} run): {unknown}"
    collected = [example for example in sybil.parse(page) if example.region.evaluator.__class__.__name__ != "Skipper"]
    runnable = [info for info in languages if info in RUN | {OUTPUT}]
    assert len(collected) == len(runnable), f"{page.name}: Sybil collected {len(collected)} examples"


def test_the_readme_and_docs_have_examples_that_run():
    counts = {page.name: sum(info in RUN for info in fenced_languages(page.read_text())) for page in PAGES}
    assert counts["README.md"] >= 3 and sum(counts.values()) >= 40, counts


def run_page(tmp_path: Path, text: str) -> None:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    document = sybil.parse(page)
    setup(document.namespace)
    try:
        for example in document:
            example.evaluate()
    finally:
        teardown(document.namespace)


def test_a_page_runs_in_order_in_one_namespace_against_its_stub(tmp_path):
    run_page(tmp_path, '```python\nimport fusion_dspy as fd\nb = fd.load_config("configs/vllm.yaml")\n```\n\n'
                       '```python\nprint(b.program("question -> answer")(question="?").answer)\n```\n\n'
                       '```text title="output"\nfused\n```\n')  # fmt: skip


def test_an_output_that_drifted_fails(tmp_path):
    with pytest.raises(AssertionError, match="but the page shows"):
        run_page(tmp_path, '```python\nprint("Paris", 3)\n```\n\n```text title="output"\nParis 4\n```\n')
    run_page(tmp_path, '```python\nprint("Paris", 3)\n```\n\n```text title="output"\nParis ...\n```\n')


def test_a_failing_command_fails(tmp_path):
    with pytest.raises(AssertionError, match="exited with 2"):
        run_page(tmp_path, "```bash\nfusion-dspy run --config configs/missing.yaml --input hi\n```\n")
    with pytest.raises(AssertionError, match="make -n no-such-target"):
        run_page(tmp_path, "```bash\nmake no-such-target\n```\n")


def test_the_readme_is_short_and_names_its_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    for command in ("make demo", "make test", "make docs"):
        assert command in readme, command


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "docs" / "_gen" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_references_hold_every_config_field_and_cli_option():
    generator = load_generator()
    reference = generator.config_reference()
    for model in (config.ModelConfig, config.Deployment, config.Roles, config.FusionSettings, config.AdaptiveSettings):
        for name in model.model_fields:
            assert f"{name}`" in reference, f"{model.__name__}.{name} is missing from the configuration reference"
    assert '`"auto" \\| "litellm" \\| "native"`' in reference and "`fusion.quorum`" in reference
    cli = generator.cli_reference()
    for option in ("--in-flight", "--tuned", "--api-key-env", "--n-values", "--signature"):
        assert f"`{option}`" in cli, option


SERVED_CONFIG = ("configs/vllm.yaml", "configs/api.yaml", "configs/teacher_pool.yaml")


def blocks_needing_a_server(text: str) -> list[tuple[str, str]]:
    """(the text of its section before it, the block) for each run block that uses a config naming real servers."""
    found, section, block, inside = [], [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            if inside and any(config in "\n".join(block) for config in SERVED_CONFIG):
                found.append(("\n".join(section), "\n".join(block)))
            inside, block = not inside and line[3:].strip() in RUN, []
            continue
        if inside:
            block.append(line)
        else:
            section = [] if line.startswith("#") else [*section, line]
    return found


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda page: str(page.relative_to(REPO)))
def test_an_example_that_needs_a_server_says_so_above_it(page):
    for before, block in blocks_needing_a_server(page.read_text(encoding="utf-8")):
        assert '!!! note "Needs' in before, f"{page.name}: no 'Needs ...' admonition in its section above:\n{block}"

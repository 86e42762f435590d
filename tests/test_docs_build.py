"""`mkdocs build --strict` builds the docs site offline: a broken link, anchor or API reference fails it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strict_with_its_generated_references(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    reference = (site / "configuration" / "reference" / "index.html").read_text(encoding="utf-8")
    assert "max_retry_wait_s" in reference and "permutation_pick" in reference
    assert "--in-flight" in (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "fusion_dspy.core.fusion.FusionOfN" in (site / "api" / "modules" / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")

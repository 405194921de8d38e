"""docs/internals.md names modules by path; every one it names must exist in the repo."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "internals.md"
MODULE_PATH = re.compile(r"\b[a-z_]+/[a-z_/]+\.py\b")


def named_modules(text: str, root: Path) -> set[str]:
    """Module paths in ``text`` that start in one of the repo's top-level folders (a path of
    another project, such as mmaction's, is not a claim about this tree)."""
    return {p for p in MODULE_PATH.findall(text) if (root / p.split("/", 1)[0]).is_dir()}


def missing_modules(text: str, root: Path) -> list[str]:
    return sorted(p for p in named_modules(text, root) if not (root / p).is_file())


def test_every_module_internals_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    named = named_modules(text, REPO)
    # The layout lists name dozens of modules; a regex that found few would check nothing.
    assert len(named) >= 30, sorted(named)
    assert {"service/jobs/runner.py", "service/decode/sandbox.py", "models/roi.py"} <= named
    assert missing_modules(text, REPO) == [], "docs/internals.md names modules that do not exist"


def test_a_module_that_does_not_exist_is_reported(tmp_path: Path) -> None:
    (tmp_path / "service" / "jobs").mkdir(parents=True)
    (tmp_path / "service" / "jobs" / "runner.py").write_text("")
    text = "see service/jobs/runner.py, service/jobs.py and mmaction/evaluation/ava_utils.py"
    assert missing_modules(text, tmp_path) == ["service/jobs.py"]

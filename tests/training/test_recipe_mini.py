"""The demo recipe's CI miniature: world -> stage 1 -> bank -> stage 2 -> eval, < 4 min."""

from __future__ import annotations

import time
from pathlib import Path

from typer.testing import CliRunner

from avaserve.cli import app

MINI_BUDGET_S = 240.0


def test_demo_recipe_mini(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["demo-recipe", str(tmp_path / "demo"), "--mini"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("mAP@0.5IOU: ")
    for path in (
        "stage1/final.pt",
        "stage2/final.pt",
        "bank/train/meta.json",
        "bank/val/meta.json",
        "results/stage2_val_gt.csv",
        "results/summary.json",
    ):
        assert (tmp_path / "demo" / path).is_file(), path
    assert elapsed < MINI_BUDGET_S, f"mini recipe took {elapsed:.0f} s"

"""The demo recipe's CI miniature: world -> stage 1 -> bank -> stage 2 -> eval.

Its duration (budget: < 4 min) is printed by pytest --durations in CI, not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from avaserve.cli import app


def test_demo_recipe_mini(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo-recipe", str(tmp_path / "demo"), "--mini"])
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
    # The recipe's bank carries the same-person cue, and stage 2 picked it up from the bank.
    meta = json.loads((tmp_path / "demo" / "bank" / "train" / "meta.json").read_text())
    assert meta["appearance_grid"] == [6, 1]
    state = torch.load(tmp_path / "demo" / "stage2" / "final.pt", weights_only=True)["model"]
    assert state["appearance_grid"].tolist() == [6, 1]
    assert state["lfb.reduce_bank.weight"].shape[1] == meta["dim"]

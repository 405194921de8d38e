"""The demo recipe's CI miniature: world -> stage 1 -> bank -> stage 2 -> eval.

Its duration (budget: < 4 min) is printed by pytest --durations in CI, not asserted here.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from avaserve.cli import app


def _non_finite_tensors(value: Any, name: str = "") -> list[str]:
    """Names of the floating-point tensors anywhere in ``value`` holding NaN or inf."""
    if isinstance(value, torch.Tensor):
        return [name] if value.is_floating_point() and not torch.isfinite(value).all() else []
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _non_finite_tensors(v, f"{name}/{k}")]
    if isinstance(value, list | tuple):
        return [bad for i, v in enumerate(value) for bad in _non_finite_tensors(v, f"{name}[{i}]")]
    return []


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

    # Every tensor of both checkpoints (weights, optimizer state) is finite, and so is every
    # score evaluated on val: a stage 2 that diverged once wrote NaN LFB and classifier
    # weights here, and the bundle exported from it served NaN for every box.
    for stage in ("stage1", "stage2"):
        checkpoint = torch.load(tmp_path / "demo" / stage / "final.pt", weights_only=True)
        assert _non_finite_tensors(checkpoint) == [], stage
        with (tmp_path / "demo" / "results" / f"{stage}_val_gt.csv").open(newline="") as f:
            scores = [float(row[7]) for row in csv.reader(f)]
        assert scores and all(math.isfinite(s) for s in scores), stage

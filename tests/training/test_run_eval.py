"""`avaserve eval --checkpoint`: model runs, TTA, ensembles, the threshold sweep."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avaserve.cli import app
from training.config import TrainConfig
from training.run_eval import predict, to_rows
from training.train import load_split, load_trained_model, train

TINY_MODEL = {"short_side": 32, "num_frames": 4, "dropout": 0.0}
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = dataclasses.replace(
        TrainConfig(preset_overrides=dict(TINY_MODEL)),
        iterations=2,
        batch_size=2,
        warmup_iters=1,
        threads=1,
    )
    return train(config, tiny_world, tmp_path_factory.mktemp("run"), progress=False)


def test_eval_checkpoint_prints_map_line(
    tiny_world: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    result = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(tiny_world),
            "--boxes",
            "gt",
            "--results-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("mAP@0.5IOU: ") and 0.0 <= float(last.split()[-1]) <= 1.0
    assert out.is_file() and len(out.read_text().splitlines()) > 0


def test_tta_ensemble_and_sweep(tiny_world: Path, checkpoint: Path, tmp_path: Path) -> None:
    data = load_split(tiny_world, "val")
    proposals = tmp_path / "proposals.csv"
    with proposals.open("w") as f:
        for i, kf in enumerate(data.keyframes):
            for box in kf.boxes:
                score = 0.95 if i % 2 else 0.45
                f.write(
                    f"{kf.video_id},{kf.timestamp},{','.join(f'{v:.4f}' for v in box)},{score}\n"
                )
    result = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(tiny_world),
            "--boxes",
            str(proposals),
            "--scales",
            "28,32",
            "--tta",
            "--sweep",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    table = [ln for ln in lines if ln.strip()[:3] in {f"{t / 10:.1f}" for t in range(10)}]
    assert len(table) == 10
    assert lines[-2].startswith("best threshold: ") and lines[-1].startswith("mAP@0.5IOU: ")


def test_ensemble_of_one_model_twice_equals_one(tiny_world: Path, checkpoint: Path) -> None:
    from training.boxes import gt_boxes

    model = load_trained_model(checkpoint)[:2]
    props = gt_boxes(load_split(tiny_world, "val").keyframes)[:3]
    one = predict([model], tiny_world, "val", props)
    two = predict([model, model], tiny_world, "val", props)
    for a, b in zip(one, two, strict=True):
        assert np.allclose(a.probs, b.probs, atol=1e-6)
    rows = to_rows(one, model[0].class_ids, min_box_score=0.5)
    assert len(rows) == sum(len(p.boxes) for p in one) * len(model[0].class_ids)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "."], "--checkpoint"),
        (["--boxes", "detector"], "--detector"),
        (["--boxes", "nope.csv"], "expected gt, detector"),
    ],
)
def test_eval_errors(tiny_world: Path, checkpoint: Path, args: list[str], message: str) -> None:
    base = ["eval", "--checkpoint", str(checkpoint), "--data", str(tiny_world)]
    if args[0] == "--data":
        base = ["eval", "--checkpoint", "missing.pt", "--data", str(tiny_world)]
        message = "missing.pt"
    result = runner.invoke(app, base + args)
    assert result.exit_code != 0
    assert message in result.output

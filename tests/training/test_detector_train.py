"""A few iterations of detector training on drawn people: the loss falls, files appear."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from cli_support import command_app
from typer.testing import CliRunner

from training.detector.checkpoint import load_detector_checkpoint
from training.detector.cli import register
from training.detector.data import KeyframeImage
from training.detector.model import DetectorConfig
from training.detector.train import DetectorTrainConfig, train_detector

TINY = DetectorConfig(input_hw=(64, 96), widths=(8, 12, 16, 16, 16), head_width=8)


def _items(n: int, seed: int) -> list[KeyframeImage]:
    """Grey noise frames (48x80) with 1-2 tall bright rectangles as 'people'."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(90, 130, (48, 80, 3), dtype=np.uint8)
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            w, h = int(rng.integers(6, 12)), int(rng.integers(20, 36))
            x, y = int(rng.integers(0, 80 - w)), int(rng.integers(0, 48 - h))
            img[y : y + h, x : x + w] = rng.integers(180, 255, 3, dtype=np.uint8)
            boxes.append([x / 80, y / 48, (x + w) / 80, (y + h) / 48])
        out.append(KeyframeImage("v", i, img, np.asarray(boxes, np.float32)))
    return out


def test_tiny_run_reduces_loss(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    logs: list[dict[str, float]] = []
    cfg = DetectorTrainConfig(
        iterations=40, batch_size=8, lr=5e-3, warmup_iters=5, log_every=1, model=TINY, threads=1
    )
    result = train_detector(
        tmp_path,
        tmp_path / "out",
        config=cfg,
        train_items=_items(16, 0),
        val_items=_items(4, 1),
        progress=False,
        on_log=logs.append,
    )
    first = np.mean([r["loss"] for r in logs[:3]])
    last = np.mean([r["loss"] for r in logs[-3:]])
    assert last < 0.7 * first, (first, last)
    assert result.val_ap is not None and 0.0 <= result.val_ap <= 1.0
    with result.log.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and float(rows[-1]["loss"]) == pytest.approx(result.final_loss, 1e-4)
    model = load_detector_checkpoint(result.checkpoint)
    assert model.config == TINY
    assert not model.training


def test_load_checkpoint_refuses_other_files(tmp_path: Path) -> None:
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="person-detector checkpoint"):
        load_detector_checkpoint(tmp_path / "x.pt")


def _app() -> typer.Typer:
    return command_app(register)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval-detector", "--data", "nowhere"], "exactly one of --checkpoint and --onnx"),
        (
            ["eval-detector", "--data", "nowhere", "--checkpoint", "a.pt", "--onnx", "b.onnx"],
            "exactly one of --checkpoint and --onnx",
        ),
        (["eval-detector", "--data", "nowhere", "--onnx", "b.onnx"], "dataset.json not found"),
        (["train-detector", "nowhere", "out", "--iterations", "1"], "dataset.json not found"),
    ],
)
def test_cli_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), [a.replace("nowhere", str(tmp_path)) for a in args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.world.generate import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, WorldConfig(seed=5, train_videos=1, val_videos=1, seconds=8), workers=1)
    return out


def test_cli_train_eval_export_on_a_world(tiny_world: Path, tmp_path: Path) -> None:
    """train-detector -> eval-detector (checkpoint) -> export -> eval-detector (onnx)."""
    from core.ava_data import read_proposals
    from training.detector.export import export_detector_onnx

    runner = CliRunner()
    out = tmp_path / "det"
    r = runner.invoke(
        _app(), ["train-detector", str(tiny_world), str(out), "--iterations", "2", "--threads", "1"]
    )
    assert r.exit_code == 0, r.output
    assert "person AP@0.5 (val):" in r.output
    assert f"onnx: {out / 'detector.onnx'}" in r.output and (out / "detector.onnx").is_file()
    ckpt = out / "detector.pt"
    props = tmp_path / "proposals.csv"
    r = runner.invoke(
        _app(),
        [
            "eval-detector",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(tiny_world),
            "--out",
            str(props),
        ],
    )
    assert r.exit_code == 0, r.output
    ap_ckpt = r.output.strip().splitlines()[-1]
    assert ap_ckpt.startswith("person AP@0.5: ")
    rows = read_proposals(props)  # the AVA proposals format the action eval reads
    assert all(0.0 <= v <= 1.0 for row in rows for v in row.box)

    onnx_path = tmp_path / "detector.onnx"
    export_detector_onnx(ckpt, onnx_path)
    assert onnx_path.read_bytes() == (out / "detector.onnx").read_bytes()  # what the CLI wrote
    r = runner.invoke(
        _app(), ["eval-detector", "--onnx", str(onnx_path), "--data", str(tiny_world), "--sweep"]
    )
    assert r.exit_code == 0, r.output
    assert "threshold  precision  recall  f1" in r.output
    assert r.output.strip().splitlines()[-1] == ap_ckpt  # same boxes through ONNX Runtime

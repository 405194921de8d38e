"""Clip-classification pre-training: clip lists, a short run, the metric."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.pretrain import ClassifyResult, evaluate_classifier, read_clip_list, train_classifier

TINY_MODEL = {"short_side": 32, "num_frames": 4, "dropout": 0.0}


def test_read_csv_and_class_folders(tiny_world: Path, tmp_path: Path) -> None:
    csv_list = read_clip_list(tiny_world / "classification" / "train.csv")
    names = (tiny_world / "classification" / "classes.txt").read_text().split("\n")
    assert list(csv_list.classes) == [n for n in names if n]  # classes.txt order
    assert all(p.is_file() for p in csv_list.paths)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.mp4").write_bytes(b"")
    folders = read_clip_list(tmp_path)
    assert folders.classes == ("a", "b") and folders.labels == (0, 1)


@pytest.mark.parametrize(
    ("text", "error"), [("only-one-column\n", "path,label"), ("a.mp4,zebra\n", "not in the class")]
)
def test_bad_clip_lists(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        read_clip_list(path, classes=("stand",))


def test_short_run_and_multiview_metric(tiny_world: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(
        TrainConfig(stage="classify", preset_overrides=dict(TINY_MODEL)),
        iterations=2,
        batch_size=2,
        warmup_iters=1,
        threads=1,
    )
    ckpt = train_classifier(config, tiny_world, tmp_path, progress=False)
    result = evaluate_classifier(ckpt, tiny_world, clips=2, crops=3)
    assert result.num_clips == 8  # one val clip per class
    assert 0.0 <= result.top5_error <= result.top1_error <= 1.0
    assert result.mean_error == pytest.approx((result.top1_error + result.top5_error) / 2)


def test_mean_error_is_report_a_metric() -> None:
    assert ClassifyResult(0.2, 0.04, 10).mean_error == pytest.approx(0.12)

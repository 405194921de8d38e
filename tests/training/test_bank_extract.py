"""extract-bank output and the bank windows stage 2 reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.bank_extract import ExtractedBank, VideoBank, extract_bank
from training.boxes import gt_boxes
from training.config import TrainConfig
from training.train import build_training_model, load_split

TINY_MODEL = {"short_side": 32, "num_frames": 4, "dropout": 0.0}


@pytest.fixture(scope="module")
def bank(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    data = load_split(tiny_world, "val")
    model = build_training_model(TrainConfig(preset_overrides=TINY_MODEL), data.labels.ids).eval()
    out = tmp_path_factory.mktemp("bank")
    extract_bank(
        model,
        tiny_world,
        "val",
        out,
        proposals=gt_boxes(data.keyframes),
        person_ids={kf.key: kf.person_ids for kf in data.keyframes},
        persons_per_second=2,
        batch_size=3,
    )
    return out


def test_bank_files_have_one_row_per_person_second(tiny_world: Path, bank: Path) -> None:
    data = load_split(tiny_world, "val")
    vb = VideoBank.load(bank / "val" / "val_000.npz")
    want = sum(min(len(kf), 2) for kf in data.keyframes)
    dim = 144  # the tiny preset's D = C_s + C_f
    assert vb.features.shape == (want, dim) and vb.features.dtype == np.float16
    assert vb.boxes.shape == (want, 4) and vb.times.shape == vb.person_ids.shape == (want,)
    assert np.all(np.diff(vb.times) >= 0)  # grouped by second
    assert vb.global_features.shape == (len(data.keyframes), dim)
    assert set(vb.person_ids.tolist()) <= {int(p) for kf in data.keyframes for p in kf.person_ids}


@pytest.mark.parametrize(("seconds", "persons"), [(61, 5), (5, 1)])
def test_window_shape_and_mask(bank: Path, seconds: int, persons: int) -> None:
    fb = ExtractedBank(bank / "val")
    vb = fb.video("val_000")
    assert vb is not None
    t = int(vb.times[len(vb.times) // 2])
    feats, mask = fb.window("val_000", t, seconds, persons)
    assert feats.shape == (seconds * persons, fb.dim) and mask.shape == (feats.shape[0],)
    in_window = np.abs(vb.times - t) <= (seconds - 1) // 2  # centred: 61 -> [t - 30, t + 30]
    per_second = np.unique(vb.times[in_window], return_counts=True)[1]
    assert mask.sum() == np.minimum(per_second, persons).sum()
    assert np.all(feats[mask == 0] == 0)
    empty, none = fb.window("no_such_video", t, seconds, persons)
    assert none.sum() == 0 and empty.shape == feats.shape


@pytest.mark.parametrize("seconds", [0, 4, 60])
def test_window_needs_an_odd_length(bank: Path, seconds: int) -> None:
    """A centred window has the keyframe's second and as many each side: an even or empty
    length is refused, not silently read one second short."""
    with pytest.raises(ValueError, match="bank window seconds"):
        ExtractedBank(bank / "val").window("val_000", 10, seconds, 2)


def test_match_rows_finds_each_gt_box(tiny_world: Path, bank: Path) -> None:
    fb = ExtractedBank(bank / "val")
    kf = next(k for k in load_split(tiny_world, "val").keyframes if len(k) >= 1)
    rows = fb.match_rows(kf.video_id, kf.timestamp, kf.boxes[:1])
    assert rows is not None
    vb = fb.video(kf.video_id)
    assert vb is not None and np.allclose(vb.boxes[rows[0]], kf.boxes[0])


def test_service_lays_out_the_same_window_as_training(bank: Path) -> None:
    """No train/serve skew in the slot layout: the service's BankWindow.slotted, given the
    rows of the same seconds, returns exactly training's ExtractedBank.window."""
    from service.bank import BankWindow

    fb = ExtractedBank(bank / "val")
    vid = sorted(p.stem for p in (bank / "val").glob("*.npz"))[0]
    vb = fb.video(vid)
    assert vb is not None
    for t in (int(vb.times.min()), int(np.median(vb.times)), int(vb.times.max())):
        want, want_mask = fb.window(vid, t, seconds=7, persons=2)
        near = np.abs(vb.times - t) <= 10  # the service's read may return more seconds
        win = BankWindow(
            features=vb.features[near].astype(np.float32),
            times=vb.times[near],
            track_ids=vb.person_ids[near],
        )
        got, got_mask = win.slotted(t, -3, 7, 2)
        np.testing.assert_array_equal(got_mask, want_mask > 0)
        np.testing.assert_array_equal(got, want)
        assert want_mask.sum() > 0

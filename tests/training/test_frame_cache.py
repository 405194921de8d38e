"""The frame cache gives the frames the seeking clip reader gives, decoded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.ava_data import read_dataset_info
from core.clips import ClipSpec, decode_clip, find_video, resize_short_side
from training.frame_cache import FrameCache, decode_video

SPEC = ClipSpec(num_frames=8, sampling_rate=2, target_fps=30.0)


@pytest.mark.parametrize("keyframe", [0.0, 3.0, 6.5, 11.9])
def test_cached_clip_matches_decode_clip(tiny_world: Path, keyframe: float) -> None:
    info = read_dataset_info(tiny_world)
    cache = FrameCache(tiny_world, 48, fps=info.fps, cache_dir=None)
    got = cache.get("train_000").clip(keyframe, SPEC)  # (T, H, W, 3) uint8 at short side 48
    ref = decode_clip(find_video(tiny_world / "videos", "train_000"), keyframe, SPEC)
    want = np.clip(np.rint(resize_short_side(ref, 48)), 0, 255).astype(np.uint8)
    assert got.shape == want.shape == (8, 48, 64, 3)
    assert np.array_equal(got, want)


def test_memmap_cache_is_reused(tiny_world: Path, tmp_path: Path) -> None:
    info = read_dataset_info(tiny_world)
    first = FrameCache(tiny_world, 40, fps=info.fps, cache_dir=tmp_path).get("val_000")
    raw = tmp_path / "s40" / "val_000.u8"
    assert raw.is_file()
    stamp = raw.stat().st_mtime_ns
    second = FrameCache(tiny_world, 40, fps=info.fps, cache_dir=tmp_path).get("val_000")
    assert raw.stat().st_mtime_ns == stamp  # not re-decoded
    assert isinstance(second.frames, np.memmap)
    assert np.array_equal(np.asarray(first.frames), np.asarray(second.frames))
    assert np.array_equal(first.times, second.times)


def test_full_resolution_and_times(tiny_world: Path) -> None:
    video = decode_video(tiny_world, "train_000", None, fps=10)
    assert video.frames.shape[1:] == (120, 160, 3)
    assert np.all(np.diff(video.times) > 0)
    assert video.times[0] == pytest.approx(0.0, abs=1e-6)

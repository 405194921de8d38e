"""core.sampling: the one clip-sampling rule (start, middle, end of a video; alignment)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from core.sampling import (
    clip_frame_indices,
    clip_offsets,
    clip_times,
    nearest_frame_indices,
    slow_indices,
)

FPS = 30.0
TEN_SECONDS = np.arange(300) / FPS  # frame k shown at k / 30


@pytest.mark.parametrize(
    ("num_frames", "rate", "alignment", "expected"),
    [
        (4, 2, "center", [-4, -2, 0, 2]),
        (5, 1, "center", [-2, -1, 0, 1, 2]),
        (4, 2, "causal", [-6, -4, -2, 0]),
        (1, 8, "center", [0]),
        (1, 8, "causal", [0]),
    ],
)
def test_clip_offsets(num_frames: int, rate: int, alignment: str, expected: list[int]) -> None:
    assert clip_offsets(num_frames, rate, alignment).tolist() == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 2, "center"), "num_frames"),
        ((4, 0, "center"), "sampling_rate"),
        ((4, 2, "left"), "alignment"),
    ],
)
def test_clip_offsets_errors(args: tuple, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        clip_offsets(*args)


def test_clip_times_span_of_r50_ava_clip() -> None:
    times = clip_times(902.0, num_frames=32, sampling_rate=2, target_fps=30, alignment="center")
    assert times[0] == pytest.approx(902 - 32 / 30)
    assert times[16] == 902.0  # the keyframe is sample T // 2
    assert times[-1] == pytest.approx(902 + 30 / 30)


@pytest.mark.parametrize(
    ("keyframe", "alignment", "expected"),
    [
        # start of the video: samples before frame 0 repeat frame 0
        (0.0, "center", [0, 0, 0, 0, 0, 8, 16, 24]),
        (0.5, "center", [0, 0, 0, 7, 15, 23, 31, 39]),
        # middle: plain arithmetic, keyframe 5 s = frame 150 at position T // 2
        (5.0, "center", [118, 126, 134, 142, 150, 158, 166, 174]),
        (5.0, "causal", [94, 102, 110, 118, 126, 134, 142, 150]),
        # end: samples after the last frame (299) repeat it
        (9.9, "center", [265, 273, 281, 289, 297, 299, 299, 299]),
        (9.9, "causal", [241, 249, 257, 265, 273, 281, 289, 297]),
        (20.0, "center", [299] * 8),
    ],
)
def test_frame_indices_start_middle_end(
    keyframe: float, alignment: str, expected: list[int]
) -> None:
    idx = clip_frame_indices(
        keyframe,
        TEN_SECONDS,
        num_frames=8,
        sampling_rate=8,
        target_fps=FPS,
        alignment=alignment,  # type: ignore[arg-type]
    )
    assert idx.tolist() == expected


def test_time_based_rule_resamples_other_frame_rates() -> None:
    # A 15 fps video sampled on the 30 fps grid: each 15 fps frame serves two samples.
    frames_15 = np.arange(150) / 15.0
    idx = clip_frame_indices(5.0, frames_15, num_frames=4, sampling_rate=1, target_fps=30)
    times = clip_times(5.0, num_frames=4, sampling_rate=1, target_fps=30)
    assert np.all(np.abs(frames_15[idx] - times) <= 1 / 30 + 1e-9)
    assert idx.tolist() == [74, 74, 75, 75]  # 4.933 -> 4.933, 4.967 -> tie -> earlier


def test_nearest_ties_take_the_earlier_frame_and_edges_clamp() -> None:
    frames = [0.0, 0.1, 0.2]
    assert nearest_frame_indices([-5, 0.05, 0.0501, 0.15, 0.2, 7.0], frames).tolist() == [
        0, 0, 1, 1, 2, 2,
    ]  # fmt: skip
    assert nearest_frame_indices([-1.0, 3.0], [1.5]).tolist() == [0, 0]


def test_variable_frame_rate_timestamps() -> None:
    frames = [0.0, 0.03, 0.2, 0.21, 0.5]
    assert nearest_frame_indices([0.1, 0.12, 0.3, 0.4], frames).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("frames", "error"), [([], "non-empty"), ([0.2, 0.1], "sorted"), ([[0.0, 1.0]], "1-D")]
)
def test_nearest_bad_frame_times(frames: list, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        nearest_frame_indices([0.0], frames)


@pytest.mark.parametrize(
    ("num_fast", "alpha", "expected"),
    [
        (32, 4, [0, 4, 8, 13, 17, 22, 26, 31]),  # PySlowFast PackPathway for the R50 AVA preset
        (16, 4, [0, 5, 10, 15]),
        (8, 8, [0]),
        (4, 1, [0, 1, 2, 3]),
    ],
)
def test_slow_indices(num_fast: int, alpha: int, expected: list[int]) -> None:
    assert slow_indices(num_fast, alpha).tolist() == expected


def test_slow_indices_match_torch_linspace_long() -> None:
    torch = pytest.importorskip("torch")
    for num_fast in range(4, 65):
        for alpha in (2, 4, 8):
            if num_fast >= alpha:
                ref = torch.linspace(0, num_fast - 1, num_fast // alpha).long().tolist()
                assert slow_indices(num_fast, alpha).tolist() == ref, (num_fast, alpha)


def test_torch_free_import() -> None:
    code = (
        "import sys, core.ava, core.sampling, core.boxes, core.yolox, core.video; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Clip sampling: which decoded frames make up the clip around a keyframe (torch-free).

This is THE sampling rule. Training (its clip reader ``core/clips.py``) and the service both call
these functions, so a model sees the same frames at serving time as it was trained on.

The rule is time-based rather than index-based, so variable-frame-rate video and the
service's presentation timestamps follow it too:

1. `clip_times` puts ``num_frames`` sample times around the keyframe, ``sampling_rate``
   frames apart on a ``target_fps`` grid (``center``: PySlowFast's AVA rule; ``causal``:
   the keyframe is the last sample, for live streams that cannot wait for the future).
2. `nearest_frame_indices` maps each sample time to the decoded frame whose presentation
   time is nearest.
3. `slow_indices` picks the slow pathway's frames out of the fast pathway's.

Padding at the ends of a video: a sample time before the first frame takes the first
frame, one after the last frame takes the last frame, i.e. edge frames repeat. That is
what PySlowFast's AVA loader does (it clamps frame indices to ``[0, num_frames - 1]``),
so a keyframe near the start or end still gets a full-length clip and the same tensor
shapes as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Alignment",
    "ClipSpec",
    "clip_frame_indices",
    "clip_offsets",
    "clip_times",
    "nearest_frame_indices",
    "slow_indices",
]

Alignment = Literal["center", "causal"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
# Sample/frame time differences closer than this (1 us, below any container's timestamp
# resolution that matters here) count as equal in `nearest_frame_indices`.
_TIE_TOLERANCE_S = 1e-6


def clip_offsets(num_frames: int, sampling_rate: int, alignment: Alignment) -> IntArray:
    """Sample positions relative to the keyframe, in frames of the target frame rate.

    ``center``: ``(arange(T) - T // 2) * rate`` -- the keyframe is sample ``T // 2``, so
    for even ``T`` there is one more sample before it than after (as in PySlowFast).
    ``causal``: ``(arange(T) - (T - 1)) * rate`` -- the keyframe is the last sample.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling_rate < 1:
        raise ValueError(f"sampling_rate must be >= 1, got {sampling_rate}")
    steps = np.arange(num_frames, dtype=np.int64)
    if alignment == "center":
        return (steps - num_frames // 2) * sampling_rate
    if alignment == "causal":
        return (steps - (num_frames - 1)) * sampling_rate
    raise ValueError(f"alignment must be 'center' or 'causal', got {alignment!r}")


def clip_times(
    keyframe_time: float,
    *,
    num_frames: int,
    sampling_rate: int,
    target_fps: float,
    alignment: Alignment = "center",
) -> FloatArray:
    """Sample times in seconds (video time) of the clip around ``keyframe_time``.

    E.g. the R50 AVA preset's 32 fast frames at rate 2 on a 30 fps grid span
    ``keyframe - 32/30 s .. keyframe + 30/30 s``. Times may fall outside the video;
    `nearest_frame_indices` repeats the edge frames for those.
    """
    if target_fps <= 0:
        raise ValueError(f"target_fps must be > 0, got {target_fps}")
    offsets = clip_offsets(num_frames, sampling_rate, alignment)
    return float(keyframe_time) + offsets.astype(np.float64) / float(target_fps)


@dataclass(frozen=True)
class ClipSpec:
    """Which frames form a clip: ``num_frames`` samples ``sampling_rate`` frames apart on
    a ``target_fps`` grid, placed by ``alignment`` around the keyframe (core.sampling).

    The one clip-sampling record: a preset's (`core.preset_info.PresetInfo.clip`), a bundle's
    (`core.manifest.Preprocessing.clip`) and the service's ring buffer
    (`service.ringbuffer.ClipGeometry`) all hand out this type; `offsets_s` is the one place
    the offsets become seconds.
    """

    num_frames: int
    sampling_rate: int
    target_fps: float = 30.0
    alignment: Alignment = "center"

    @classmethod
    def from_preset(cls, info: Any) -> ClipSpec:
        """From a `core.preset_info.PresetInfo` (or anything with the same fields)."""
        return cls(
            num_frames=int(info.num_frames),
            sampling_rate=int(info.sampling_rate),
            target_fps=float(info.target_fps),
            alignment=info.alignment,
        )

    def offsets_s(self) -> FloatArray:
        """Sample times relative to the keyframe, in seconds (as `clip_times` adds them)."""
        offsets = clip_offsets(self.num_frames, self.sampling_rate, self.alignment)
        return offsets.astype(np.float64) / float(self.target_fps)

    def times(self, keyframe_time: float) -> npt.NDArray[np.float64]:
        return clip_times(
            keyframe_time,
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
            target_fps=self.target_fps,
            alignment=self.alignment,
        )


def nearest_frame_indices(target_times: npt.ArrayLike, frame_times: npt.ArrayLike) -> IntArray:
    """For each target time, the index of the frame with the nearest presentation time.

    ``frame_times`` must be sorted ascending (presentation order) and non-empty. A target
    halfway between two frames (within 1 us) takes the earlier one (the frame on screen at
    that instant). Targets before the first frame give 0 and after the last frame give
    ``len(frame_times) - 1``: edge frames repeat, as PySlowFast's index clamping does.
    """
    targets = np.asarray(target_times, dtype=np.float64)
    frames = np.asarray(frame_times, dtype=np.float64)
    if frames.ndim != 1 or frames.size == 0:
        raise ValueError("frame_times must be a non-empty 1-D sequence")
    if frames.size > 1 and np.any(np.diff(frames) < 0):
        raise ValueError("frame_times must be sorted ascending (presentation order)")
    if frames.size == 1:
        return np.zeros(targets.shape, dtype=np.int64)
    # right: first frame strictly later than the target (clipped so both neighbours
    # exist); the candidates are right - 1 and right.
    right = np.clip(np.searchsorted(frames, targets, side="right"), 1, frames.size - 1)
    left = right - 1
    # Halfway ties go to the earlier frame. "Halfway" allows _TIE_TOLERANCE_S of float
    # noise: 3.0 - 1/20 and 29 * (1/10) are not exactly 0.05 apart in binary, and a
    # tie must not be decided by rounding. Clipping above already sends targets outside
    # [first, last] to the edge frames.
    pick_right = (frames[right] - targets) < (targets - frames[left]) - _TIE_TOLERANCE_S
    return np.where(pick_right, right, left).astype(np.int64)


def clip_frame_indices(
    keyframe_time: float,
    frame_times: npt.ArrayLike,
    *,
    num_frames: int,
    sampling_rate: int,
    target_fps: float,
    alignment: Alignment = "center",
) -> IntArray:
    """`clip_times` followed by `nearest_frame_indices`: indices into ``frame_times``."""
    times = clip_times(
        keyframe_time,
        num_frames=num_frames,
        sampling_rate=sampling_rate,
        target_fps=target_fps,
        alignment=alignment,
    )
    return nearest_frame_indices(times, frame_times)


def slow_indices(num_fast: int, alpha: int) -> IntArray:
    """Which of the fast pathway's ``num_fast`` frames the slow pathway takes.

    PySlowFast's ``PackPathway``: ``linspace(0, T_f - 1, T_f // alpha)`` truncated to
    integers, e.g. ``T_f = 32, alpha = 4`` -> ``0 4 8 13 17 22 26 31``. The first and
    last fast frames are always included.
    """
    if num_fast < 1 or alpha < 1:
        raise ValueError(f"need num_fast >= 1 and alpha >= 1, got {num_fast}, {alpha}")
    if num_fast < alpha:
        raise ValueError(f"num_fast ({num_fast}) must be >= alpha ({alpha})")
    # trunc (not round) matches torch's .long() on the linspace, which PySlowFast uses.
    return np.trunc(np.linspace(0, num_fast - 1, num_fast // alpha)).astype(np.int64)

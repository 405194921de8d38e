"""Keyframe scheduler: which keyframes are due for detection and which for their clip.

Keyframes are at ``n / keyframe_rate`` seconds of stream time (the manifest's
``keyframe_rate``; AVA labels 1 Hz, so every integer second), from the first one at or after
the stream's first frame. Two moments matter for keyframe ``t``::

    detect-due: a frame with pts >= t has arrived -> the frame nearest to t is known
                (it is that frame or the one before), so detection and tracking can start
    clip-due:   a frame with pts >= t + after_s has arrived (or the stream ended)
                center alignment: after_s = half a clip (files; predictions lag by it)
                causal alignment: after_s = 0 (live; the clip ends at the keyframe)

Detection therefore runs up to half a clip before the clip is complete, overlapping the
detector with decoding. At `finish()` every keyframe up to the last frame becomes due (its
clip pads with the last frame, as in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["KeyframeScheduler"]


@dataclass
class KeyframeScheduler:
    """Stateful (`update` / `finish` / `reset`); one per stream.

    keyframe_rate: keyframes per second (from the manifest).
    after_s: how far the clip's last sample lies after its keyframe (`ClipGeometry.after_s`).
    """

    keyframe_rate: float = 1.0
    after_s: float = 0.0
    _next_detect: int | None = field(default=None, init=False)
    _next_clip: int | None = field(default=None, init=False)
    _last_pts: float | None = field(default=None, init=False)
    finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.keyframe_rate <= 0:
            raise ValueError(f"keyframe_rate must be > 0, got {self.keyframe_rate}")
        if self.after_s < 0:
            raise ValueError(f"after_s must be >= 0, got {self.after_s}")

    def time_of(self, n: int) -> float:
        return n / self.keyframe_rate

    def update(self, pts: float) -> tuple[list[float], list[float]]:
        """A frame at ``pts`` arrived: (keyframes now detect-due, keyframes now clip-due)."""
        if self.finished:
            raise RuntimeError("KeyframeScheduler.update after finish(); call reset()")
        if self._next_detect is None:
            # First keyframe at or after the first frame (1 us slack for pts rounding).
            first = math.ceil(pts * self.keyframe_rate - 1e-6)
            self._next_detect = self._next_clip = first
        self._last_pts = pts
        assert self._next_clip is not None
        detect: list[float] = []
        while self.time_of(self._next_detect) <= pts:
            detect.append(self.time_of(self._next_detect))
            self._next_detect += 1
        clips: list[float] = []
        while (
            self._next_clip < self._next_detect
            and self.time_of(self._next_clip) + self.after_s <= pts
        ):
            clips.append(self.time_of(self._next_clip))
            self._next_clip += 1
        return detect, clips

    def finish(self) -> tuple[list[float], list[float]]:
        """End of stream: the remaining keyframes up to the last frame, for detection and clip."""
        self.finished = True
        if self._next_detect is None or self._next_clip is None or self._last_pts is None:
            return [], []
        clips = [self.time_of(n) for n in range(self._next_clip, self._next_detect)]
        self._next_clip = self._next_detect
        return [], clips

    def reset(self) -> None:
        self._next_detect = self._next_clip = None
        self._last_pts = None
        self.finished = False

    @property
    def next_clip_time(self) -> float | None:
        """The oldest keyframe whose clip is not yet due (None before the first frame)."""
        return None if self._next_clip is None else self.time_of(self._next_clip)

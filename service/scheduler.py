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

Bounded backlog: every keyframe between two frames becomes due when the second arrives, so a
pts that jumps far forward would make thousands of keyframes due at once (each with its own
detector input and clip). `update` therefore refuses a jump of more than ``max_gap_s``
(`PtsGap`): the caller ends the segment (`finish`) and starts a new one (`reset`) at the new
frame, skipping the seconds in between. A pts that is not a finite number in
``[0, MAX_PTS_S]`` is refused (`InvalidPts`) before any state changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_GAP_S",
    "MAX_PTS_S",
    "InvalidPts",
    "KeyframeScheduler",
    "PtsGap",
    "check_pts",
]

DEFAULT_MAX_GAP_S = 10.0
"""Longest forward jump between two frames that still fills in the keyframes in between. A
few seconds of stalled camera or dropped frames keep their keyframes (padded with the frames
around the gap); a longer jump starts a new segment, so one frame costs at most about
``max_gap_s * keyframe_rate`` keyframes."""

MAX_PTS_S = float(2**32)
"""Largest presentation time accepted, in seconds (136 years: a Unix-epoch clock fits). Above
it float64 keeps less than a microsecond of resolution and keyframe times stop being exact."""


class InvalidPts(ValueError):
    """A presentation time that is not a finite number of seconds in [0, MAX_PTS_S]."""


class PtsGap(ValueError):
    """A frame more than ``max_gap_s`` after the previous one: end the segment, then reset."""


def check_pts(pts: float, *, field_name: str = "pts") -> float:
    """``pts`` as a float, or `InvalidPts` naming the field and the accepted range."""
    value = float(pts)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_PTS_S:
        raise InvalidPts(
            f"{field_name} {value!r} is not a finite number of seconds in [0, {MAX_PTS_S:.0f}]"
        )
    return value


@dataclass
class KeyframeScheduler:
    """Stateful (`update` / `finish` / `reset`); one per stream.

    keyframe_rate: keyframes per second (from the manifest).
    after_s: how far the clip's last sample lies after its keyframe (`ClipGeometry.after_s`).
    max_gap_s: longest forward jump that still fills in the keyframes in between (see
        `DEFAULT_MAX_GAP_S`). Larger keeps keyframes across longer stalls, padded with stale
        frames; each frame may then make up to ``max_gap_s * keyframe_rate`` keyframes due.
    """

    keyframe_rate: float = 1.0
    after_s: float = 0.0
    max_gap_s: float = DEFAULT_MAX_GAP_S
    _next_detect: int | None = field(default=None, init=False)
    _next_clip: int | None = field(default=None, init=False)
    _last_pts: float | None = field(default=None, init=False)
    finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.keyframe_rate <= 0:
            raise ValueError(f"keyframe_rate must be > 0, got {self.keyframe_rate}")
        if self.after_s < 0:
            raise ValueError(f"after_s must be >= 0, got {self.after_s}")
        if not 0 < self.max_gap_s < math.inf:
            raise ValueError(f"max_gap_s must be a finite number > 0, got {self.max_gap_s}")

    def is_gap(self, pts: float) -> bool:
        """True when a frame at ``pts`` lies more than ``max_gap_s`` after the previous one."""
        return self._last_pts is not None and pts - self._last_pts > self.max_gap_s

    def time_of(self, n: int) -> float:
        return n / self.keyframe_rate

    def update(self, pts: float) -> tuple[list[float], list[float]]:
        """A frame at ``pts`` arrived: (keyframes now detect-due, keyframes now clip-due).

        Raises `InvalidPts` (a non-finite, negative or huge pts) or `PtsGap` (a jump of more
        than ``max_gap_s``) without changing any state.
        """
        if self.finished:
            raise RuntimeError("KeyframeScheduler.update after finish(); call reset()")
        pts = check_pts(pts)
        if self.is_gap(pts):
            raise PtsGap(
                f"pts {pts:.6g} is {pts - (self._last_pts or 0.0):.6g} s after the previous frame, "
                f"more than max_gap_s={self.max_gap_s:g}; finish() and reset() to start a new "
                "segment there"
            )
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

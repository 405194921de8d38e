"""Keyframe stride for live streams that the model cannot keep up with.

A live stream brings one keyframe per second (the manifest's ``keyframe_rate``). When the
model needs longer than that per keyframe (an R50 backbone on a 2-core CPU: about a second),
the keyframes pile up; dropping whichever ones happen to be stale gives an irregular, ever
later stream. Instead the stream degrades on purpose: it annotates every k-th keyframe
(``t`` with ``round(t * rate) % k == 0``), k chosen from the measured time per keyframe::

    k = ceil(model_s / (period_s * headroom))        headroom 0.8: 20 % slack for jitter

``model_s`` is a moving average of the stream's own keyframe time, from detect-due to its
annotation: it includes the wait behind other streams' work on the shared batchers, so k
also grows when many streams share the cores. Before the stream's first keyframe is done the
estimate comes from the engine's graph timings (the server's warm-up runs every graph once).

k goes up at once (the stream is falling behind) and comes down only when the smaller stride
would still leave 25 % more slack than needed, so it does not flap between two values.

The bank stays consistent: only annotated seconds are written, and windows are read by time
(``[t - 60, t]``), so a skipped second is simply a second without persons, as training sees
seconds without boxes. The stride is aligned to whole multiples of k seconds, so a
reconnecting client with the same clock annotates the same seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DEFAULT_HEADROOM", "MAX_STRIDE", "StrideController", "choose_stride", "ordinal"]

DEFAULT_HEADROOM = 0.8
MAX_STRIDE = 10
_EMA = 0.3  # weight of the newest keyframe time
_DOWN_MARGIN = 1.25  # k comes down only if model_s * this still fits the smaller stride


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def choose_stride(
    model_s: float,
    period_s: float,
    *,
    headroom: float = DEFAULT_HEADROOM,
    max_stride: int = MAX_STRIDE,
) -> int:
    """The smallest k with ``model_s <= k * period_s * headroom`` (1 .. max_stride)."""
    if period_s <= 0 or not 0 < headroom <= 1:
        raise ValueError(f"period_s must be > 0 and headroom in (0, 1], got {period_s}, {headroom}")
    if not math.isfinite(model_s) or model_s <= 0:
        return 1
    return max(1, min(max_stride, math.ceil(model_s / (period_s * headroom) - 1e-9)))


@dataclass
class StrideController:
    """One live stream's stride: `observe` keyframe times, ask `keep(t)` per keyframe."""

    keyframe_rate: float = 1.0
    headroom: float = DEFAULT_HEADROOM
    max_stride: int = MAX_STRIDE
    stride: int = 1
    model_s: float | None = None  # moving average of the keyframe time, seconds
    changes: int = field(default=0, init=False)

    @property
    def period_s(self) -> float:
        return 1.0 / self.keyframe_rate

    def seed(self, model_s: float | None) -> None:
        """An estimate before the stream's own first keyframe (the engine's graph timings)."""
        if model_s is not None and model_s > 0 and self.model_s is None:
            self.model_s = model_s
            self._update()

    def observe(self, seconds: float) -> None:
        """One keyframe's time from detect-due to its annotation."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        self.model_s = (
            seconds if self.model_s is None else ((1 - _EMA) * self.model_s + _EMA * seconds)
        )
        self._update()

    def _update(self) -> None:
        if self.model_s is None:
            return
        want = choose_stride(
            self.model_s, self.period_s, headroom=self.headroom, max_stride=self.max_stride
        )
        if want > self.stride:
            self.stride, self.changes = want, self.changes + 1
        elif want < self.stride:
            relaxed = choose_stride(
                self.model_s * _DOWN_MARGIN,
                self.period_s,
                headroom=self.headroom,
                max_stride=self.max_stride,
            )
            if relaxed < self.stride:
                self.stride, self.changes = relaxed, self.changes + 1

    def keep(self, t: float) -> bool:
        """Annotate keyframe ``t``? (whole multiples of the stride, in keyframe units)"""
        return round(t * self.keyframe_rate) % self.stride == 0

    def status(self) -> dict[str, object]:
        """Fields for the WebSocket status message."""
        return {
            "keyframe_stride": self.stride,
            "keyframe_model_s": None if self.model_s is None else round(self.model_s, 3),
            "stride_reason": (
                "every keyframe annotated"
                if self.stride == 1
                else f"the model needs ~{self.model_s:.2f} s per keyframe: every "
                f"{ordinal(self.stride)} keyframe is annotated to keep real time"
            ),
        }

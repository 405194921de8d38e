"""Reading video with PyAV (torch-free): the one timestamp rule and the one RGB frame reader.

**Timestamps** (`FrameClock`, used by the service's decoder, file and live, and by training's
clip readers alike): presentation time in seconds from the stream's start,
``(pts - origin) * time_base`` computed exactly (a Fraction) and rounded once, where
``origin`` is the stream's ``start_time`` or, when the container does not say, the first
frame's pts. A frame without a pts uses its dts; with neither it gets the previous time +
1/fps (0 for the first). A time that does not increase is nudged to previous + 1 ms, so
times are strictly increasing without inventing a new frame rate; the first time is at
least 0.

**Frames** (`iter_rgb_frames`): RGB ``(H, W, 3)`` uint8 at the coded size, in presentation
order, through one reused ``VideoReformatter`` (``frame.to_ndarray(format="rgb24")`` builds
a new SwsContext per frame, ~40x slower for small frames; the pixels are identical). The
service adds its own caps, resize and rotation around the same clock (service/decode/).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from os import PathLike
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from core.ava import AvaFormatError

__all__ = [
    "FALLBACK_FPS",
    "NUDGE_S",
    "FrameClock",
    "VideoDecodeError",
    "iter_rgb_frames",
    "open_video",
    "stream_rate",
]

StrPath = str | PathLike[str]
NUDGE_S = 1e-3  # a non-increasing pts moves this far past the previous frame
FALLBACK_FPS = 25.0  # only when neither header nor timestamps give a rate


class VideoDecodeError(AvaFormatError):
    """A video that is missing or cannot be decoded (names the path)."""

    def __init__(self, path: StrPath, message: str) -> None:
        super().__init__(path, None, None, message)


def stream_rate(stream: Any) -> float | None:
    """The stream's frame rate from its header (average, guessed, base), or None."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and 0 < float(rate) <= 1000:
            return float(rate)
    return None


class FrameClock:
    """The timestamp rule (module docstring): call it on each decoded frame, in order."""

    def __init__(self, *, time_base: Fraction | None, origin_pts: int | None, fps: float) -> None:
        self.time_base = time_base
        self.origin = origin_pts
        self.fps = fps
        self.count = 0
        self.prev_t: float | None = None

    def __call__(self, frame: Any) -> float:
        pts = frame.pts if frame.pts is not None else frame.dts
        t: float | None = None
        if pts is not None and self.time_base is not None:
            if self.origin is None:
                self.origin = pts
            t = float((pts - self.origin) * self.time_base)
        prev = self.prev_t
        if t is None:
            t = self.count / self.fps if prev is None else prev + 1.0 / self.fps
        elif prev is not None and t <= prev:
            t = prev + NUDGE_S
        t = max(t, 0.0) if prev is None else t
        self.prev_t = t
        self.count += 1
        return t

    @classmethod
    def for_stream(cls, stream: Any) -> FrameClock:
        """A clock for a demuxed stream: its time base, start time and header rate."""
        return cls(
            time_base=stream.time_base,
            origin_pts=stream.start_time,
            fps=stream_rate(stream) or FALLBACK_FPS,
        )


def open_video(path: StrPath) -> Any:
    """An opened PyAV container with at least one video stream (trusted local files)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "video file not found")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"cannot open video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "file has no video stream")
    return container


def iter_rgb_frames(
    path: StrPath, container: Any, stream: Any
) -> Iterator[tuple[float, npt.NDArray[np.uint8]]]:
    """(time in s from the stream's start, RGB (H, W, 3) uint8) in presentation order.

    Decodes from the container's current position with a fresh `FrameClock.for_stream`
    (times stay right after a seek as long as the stream has a ``start_time``).
    """
    import av
    from av.video.reformatter import VideoReformatter

    rgb = VideoReformatter()
    clock = FrameClock.for_stream(stream)
    try:
        for frame in container.decode(stream):
            image = cast(npt.NDArray[np.uint8], rgb.reformat(frame, format="rgb24").to_ndarray())
            yield clock(frame), image
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"decoding failed: {exc}") from None

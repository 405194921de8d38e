"""Clips around keyframes, decoded with PyAV from video files or read from frame folders.

Which frames make up a clip is decided by `core.sampling` only (the rule the service
uses too): `clip_times` gives the sample times around the keyframe and
`nearest_frame_indices` maps them to decoded frames by presentation time, repeating the
first/last frame for times before the start / after the end of the video.

Three ways to get the same frames:

* `decode_clip` -- seek to just before the clip, decode forward, pick frames. Best when
  only a few keyframes of a long video are needed.
* `iter_keyframe_clips` -- decode the whole video once and hand out every requested
  keyframe's clip as soon as its frames are in. Much faster when most keyframes are
  needed (AVA: one per second), since seeking re-decodes from a keyframe each time.
* `FrameFolder` -- extracted JPEG/PNG frames ``frames/<video_id>/000001.jpg`` with a known
  fps; frame ``k`` (1-based) is shown at ``(k - 1) / fps``.

All return uint8 RGB ``(T, H, W, 3)`` at the source resolution. `preprocess_clip` resizes
the short side and normalises to float32 ``(3, T, H, W)``; `pack_pathways` splits it into
the slow and fast pathways with `core.sampling.slow_indices`. Both come from
`core.preprocess`, the implementation the service shares. Nothing here imports torch.

Frame times are seconds from the start of the video stream (``pts * time_base`` minus
the stream's start time), so frame ``k`` of a constant-rate video is at ``k / fps`` just
as in an extracted-frames folder.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.preprocess import pack_pathways, preprocess_clip, resize_short_side
from core.sampling import ClipSpec, nearest_frame_indices
from core.video import VideoDecodeError, iter_rgb_frames, open_video

__all__ = [
    "ClipSpec",
    "FrameFolder",
    "VideoDecodeError",
    "boxes_to_pixels",
    "decode_clip",
    "find_video",
    "iter_keyframe_clips",
    "pack_pathways",
    "preprocess_clip",
    "resize_short_side",
]

StrPath = str | PathLike[str]
Frames = npt.NDArray[np.uint8]  # (T, H, W, 3) RGB
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


# -- the shared assembler --------------------------------------------------------------------


class _ClipAssembler:
    """Turns a stream of (time, frame) in presentation order into clips for sorted keyframes.

    Keeps only the frames a pending clip can still use. A clip is ready once a frame at or
    after its last sample time has arrived (so both neighbours of every sample time are
    buffered) or the stream has ended. Every reader in this module goes through this
    class, which is why seeking and sequential decoding give identical frames.
    """

    def __init__(self, keyframe_times: Sequence[float], spec: ClipSpec) -> None:
        self._pending = deque(sorted((float(t), spec.times(t)) for t in keyframe_times))
        self._times: deque[float] = deque()
        self._frames: deque[Frames] = deque()

    @property
    def done(self) -> bool:
        return not self._pending

    def first_needed_time(self) -> float | None:
        return float(self._pending[0][1][0]) if self._pending else None

    def push(self, time: float, frame: Frames) -> Iterator[tuple[float, Frames]]:
        self._times.append(time)
        self._frames.append(frame)
        yield from self._emit(eof=False)

    def finish(self) -> Iterator[tuple[float, Frames]]:
        yield from self._emit(eof=True)

    def _emit(self, *, eof: bool) -> Iterator[tuple[float, Frames]]:
        while self._pending:
            keyframe, targets = self._pending[0]
            if not self._times:
                return
            if not eof and self._times[-1] < targets[-1]:
                return
            times = np.fromiter(self._times, dtype=np.float64, count=len(self._times))
            idx = nearest_frame_indices(targets, times)
            frames = list(self._frames)
            yield keyframe, np.stack([frames[i] for i in idx])
            self._pending.popleft()
            self._drop_unneeded()
        self._drop_unneeded()

    def _drop_unneeded(self) -> None:
        # Frame j can never be the nearest frame for a time >= times[j + 1], so once the
        # next frame is at or before the earliest sample still needed, frame j can go.
        first = self.first_needed_time()
        while len(self._times) >= 2 and (first is None or self._times[1] <= first):
            self._times.popleft()
            self._frames.popleft()


# -- video files -----------------------------------------------------------------------------


def find_video(videos_dir: StrPath, video_id: str) -> Path:
    """``videos_dir/<video_id>.<ext>`` for the usual extensions; error naming what was tried."""
    videos_dir = Path(videos_dir)
    for suffix in VIDEO_SUFFIXES:
        candidate = videos_dir / f"{video_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise VideoDecodeError(
        videos_dir / f"{video_id}.*",
        f"no video for {video_id!r} (tried {', '.join(VIDEO_SUFFIXES)}); check the videos/ "
        "folder or extract frames to frames/<video_id>/",
    )


def iter_keyframe_clips(
    path: StrPath, keyframe_times: Iterable[float], spec: ClipSpec
) -> Iterator[tuple[float, Frames]]:
    """Decode ``path`` once; yield ``(keyframe_time, (T, H, W, 3) uint8)`` in time order.

    ``keyframe_times`` are seconds into the video file (CSV timestamp minus the dataset's
    ``time_offset``). Decoding stops after the last clip is complete.
    """
    assembler = _ClipAssembler(list(keyframe_times), spec)
    if assembler.done:
        return
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for time, frame in iter_rgb_frames(path, container, stream):
            yield from assembler.push(time, frame)
            if assembler.done:
                return
        yield from assembler.finish()
    finally:
        container.close()
    if not assembler.done:
        raise VideoDecodeError(path, "video has no decodable frames")


# Seek this far before the first sample: the demuxer lands on the last keyframe before
# the seek point, and some containers' seek index is coarse.
_SEEK_MARGIN_S = 1.0


def decode_clip(path: StrPath, keyframe_time: float, spec: ClipSpec) -> Frames:
    """The clip around one keyframe, seeking instead of decoding from the start.

    Gives exactly the frames `iter_keyframe_clips` gives. If the seek lands after the
    clip's first sample time (an imprecise index), it decodes again from the start so
    the start-of-video padding rule still holds.
    """
    first_time = float(spec.times(keyframe_time)[0])
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Times count from the stream's start_time; without one they count from the first
        # frame decoded (core.video.FrameClock), which after a seek is the wrong origin.
        start = (
            float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        )
        seek_to = first_time - _SEEK_MARGIN_S
        for from_start in (start is None or seek_to <= 0.0, True):
            assembler = _ClipAssembler([keyframe_time], spec)
            if from_start:
                container.seek(0, stream=stream, backward=True)
            else:
                assert start is not None
                pts = int(math.floor((seek_to + start) / float(stream.time_base)))
                container.seek(pts, stream=stream, backward=True)
            first_seen: float | None = None
            for time, frame in iter_rgb_frames(path, container, stream):
                if first_seen is None:
                    first_seen = time
                    if not from_start and time > first_time:
                        break  # landed too late: retry from the start
                for _, clip in assembler.push(time, frame):
                    return clip
            else:
                for _, clip in assembler.finish():
                    return clip
                raise VideoDecodeError(path, "video has no decodable frames")
        raise VideoDecodeError(path, f"could not decode the clip at {keyframe_time:.3f} s")
    finally:
        container.close()


# -- extracted frames ------------------------------------------------------------------------


class FrameFolder:
    """Frames extracted to ``folder/000001.jpg, 000002.jpg, ...`` at a known ``fps``.

    Frame ``k`` (1-based, as ffmpeg's ``%06d`` numbering) is shown at ``(k - 1) / fps``.
    Only the frames a clip needs are read from disk.
    """

    def __init__(self, folder: StrPath, fps: float, *, pattern: str = "{:06d}.jpg") -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VideoDecodeError(self.folder, "frame folder not found")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.pattern = pattern
        count = 0
        while (self.folder / pattern.format(count + 1)).is_file():
            count += 1
        if count == 0:
            raise VideoDecodeError(
                self.folder / pattern.format(1), "no frames (expected 1-based numbering)"
            )
        self.num_frames = count
        self.frame_times = np.arange(count, dtype=np.float64) / self.fps

    def read_frame(self, index: int) -> Frames:
        """0-based ``index`` -> (H, W, 3) uint8 RGB."""
        from PIL import Image

        path = self.folder / self.pattern.format(index + 1)
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise VideoDecodeError(path, f"cannot read frame: {exc}") from None

    def clip(self, keyframe_time: float, spec: ClipSpec) -> Frames:
        """(T, H, W, 3) uint8, the same sampling rule as the video readers."""
        idx = nearest_frame_indices(spec.times(keyframe_time), self.frame_times)
        # Edge padding repeats indices; read each file once.
        loaded = {i: self.read_frame(i) for i in sorted(set(idx.tolist()))}
        return np.stack([loaded[i] for i in idx.tolist()])


# -- preprocessing (numpy only) --------------------------------------------------------------

# resize_short_side, preprocess_clip and pack_pathways live in core.preprocess (imported
# above and re-exported here): the service runs the very same functions, so training and
# serving cannot drift apart.


def boxes_to_pixels(
    boxes: npt.NDArray[np.floating[Any]], width: int, height: int
) -> npt.NDArray[np.float32]:
    """Normalised xyxy (N, 4) -> input-pixel xyxy (N, 4) for a clip of ``width x height``."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale).astype(np.float32)

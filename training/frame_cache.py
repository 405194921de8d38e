"""Decode each video once, at the model's short side, into a uint8 frame array.

Training visits every keyframe of every video many times. Seeking per keyframe
(`core.clips.decode_clip`) re-decodes from the previous GOP each time, which on a
CPU costs more than the tiny model's forward pass. So each video is decoded once,
resized to the short side the model trains at, and kept as a ``(N, H, W, 3)`` uint8
array -- in memory, or as an ``np.memmap`` under ``DIR/cache/`` that later runs (and
DataLoader workers, which share the page cache) reuse.

Which frames form a clip is still decided by `core.sampling` (`nearest_frame_indices`
on the decoded frames' presentation times), and frames and times come from
core/video.py's reader (the clip readers' and the service's timestamp rule), so a
cached clip has exactly the frames `decode_clip` gives (only resized earlier;
`tests/training/test_frame_cache.py` checks this).

Files per video under ``DIR/cache/s<short_side>/``: ``<video_id>.u8`` (raw frames),
``<video_id>.json`` (shape, times, source size and mtime: a changed video is re-decoded).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.clips import ClipSpec, FrameFolder, VideoDecodeError, find_video
from core.preprocess import resize_short_side
from core.sampling import nearest_frame_indices
from core.video import iter_rgb_frames, open_video

__all__ = [
    "FrameCache",
    "VideoFrames",
    "decode_video",
    "decode_video_file",
    "load_video_frames",
    "open_cache",
]

StrPath = str | PathLike[str]
_CACHE_VERSION = 1
_RESIZE_CHUNK = 32  # frames resized per numpy call: bounds the float32 temporary


@dataclass(frozen=True)
class VideoFrames:
    """All frames of one video: ``frames`` (N, H, W, 3) uint8 RGB, ``times`` (N,) seconds.

    ``width`` x ``height`` is the size of the stored frames (after the short-side resize).
    """

    video_id: str
    frames: npt.NDArray[np.uint8]
    times: npt.NDArray[np.float64]

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def clip(self, keyframe_time: float, spec: ClipSpec) -> npt.NDArray[np.uint8]:
        """(T, H, W, 3) uint8: the clip around ``keyframe_time`` (seconds into the video)."""
        idx = nearest_frame_indices(spec.times(keyframe_time), self.times)
        return np.asarray(self.frames[idx])

    def frame_at(self, time: float) -> npt.NDArray[np.uint8]:
        """(H, W, 3) the frame nearest ``time`` (the keyframe a detector sees)."""
        return np.asarray(self.frames[int(nearest_frame_indices([time], self.times)[0])])


def _resize_u8(
    frames: list[npt.NDArray[np.uint8]], short_side: int | None
) -> npt.NDArray[np.uint8]:
    arr = np.stack(frames)  # (n, H, W, 3)
    if short_side is None or min(arr.shape[1:3]) == short_side:
        return arr
    return resize_short_side(arr, short_side)  # uint8: core.preprocess, as the service


def _iter_source(
    data_dir: Path, video_id: str, fps: float
) -> Iterator[tuple[float, npt.NDArray[np.uint8]]]:
    """(time, frame) of a video file, or of an extracted-frames folder."""
    folder = data_dir / "frames" / video_id
    if folder.is_dir():
        ff = FrameFolder(folder, fps)
        for i in range(ff.num_frames):
            yield float(ff.frame_times[i]), ff.read_frame(i)
        return
    yield from _iter_file(find_video(data_dir / "videos", video_id))


def _iter_file(path: Path) -> Iterator[tuple[float, npt.NDArray[np.uint8]]]:
    # core.video's reader: the same frame times the clip readers (and the service) use.
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from iter_rgb_frames(path, container, stream)
    finally:
        container.close()


def _source_path(data_dir: Path, video_id: str) -> Path:
    folder = data_dir / "frames" / video_id
    return folder if folder.is_dir() else find_video(data_dir / "videos", video_id)


def decode_video(
    data_dir: StrPath, video_id: str, short_side: int | None, *, fps: float = 30.0
) -> VideoFrames:
    """Decode ``video_id`` of the dataset at ``data_dir`` into memory (no files written)."""
    data_dir = Path(data_dir)
    source = _iter_source(data_dir, video_id, fps)
    return _collect(video_id, source, short_side, lambda: _source_path(data_dir, video_id))


def decode_video_file(path: StrPath, short_side: int | None) -> VideoFrames:
    """Decode one video file (e.g. a classification clip) into memory."""
    path = Path(path)
    return _collect(path.stem, _iter_file(path), short_side, lambda: path)


def _collect(
    video_id: str,
    source: Iterator[tuple[float, npt.NDArray[np.uint8]]],
    short_side: int | None,
    where: Callable[[], Path],
) -> VideoFrames:
    times: list[float] = []
    chunks: list[npt.NDArray[np.uint8]] = []
    pending: list[npt.NDArray[np.uint8]] = []
    for time, frame in source:
        times.append(time)
        pending.append(frame)
        if len(pending) == _RESIZE_CHUNK:
            chunks.append(_resize_u8(pending, short_side))
            pending = []
    if pending:
        chunks.append(_resize_u8(pending, short_side))
    if not chunks:
        raise VideoDecodeError(where(), "video has no decodable frames")
    order = np.argsort(np.asarray(times), kind="stable")  # presentation order
    frames = np.concatenate(chunks)[order]
    return VideoFrames(video_id, frames, np.asarray(times, dtype=np.float64)[order])


def load_video_frames(
    data_dir: StrPath,
    video_id: str,
    short_side: int | None,
    *,
    fps: float = 30.0,
    cache_dir: StrPath | None = None,
) -> VideoFrames:
    """`decode_video`, stored as a memmap under ``cache_dir`` and reused when still valid.

    ``cache_dir`` None keeps the frames in memory only.
    """
    if cache_dir is None:
        return decode_video(data_dir, video_id, short_side, fps=fps)
    source = _source_path(Path(data_dir), video_id)
    folder = Path(cache_dir) / f"s{short_side if short_side is not None else 'orig'}"
    raw_path, meta_path = folder / f"{video_id}.u8", folder / f"{video_id}.json"
    stat = source.stat()
    stamp = {"version": _CACHE_VERSION, "source": str(source), "mtime_ns": stat.st_mtime_ns}
    if raw_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            meta = {}
        if all(meta.get(k) == v for k, v in stamp.items()):
            frames = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
            return VideoFrames(video_id, frames, np.asarray(meta["times"], dtype=np.float64))
    video = decode_video(data_dir, video_id, short_side, fps=fps)
    folder.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name then rename: a crashed run never leaves a torn cache file.
    tmp = raw_path.with_suffix(f".tmp{os.getpid()}")
    video.frames.tofile(tmp)
    os.replace(tmp, raw_path)
    meta = {**stamp, "shape": list(video.frames.shape), "times": video.times.tolist()}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    frames = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=video.frames.shape)
    return VideoFrames(video_id, frames, video.times)


class FrameCache:
    """Lazily decoded frames of a dataset's videos at one short side.

    ``cache.get(video_id)`` decodes (or maps) a video the first time it is asked for.
    """

    def __init__(
        self,
        data_dir: StrPath,
        short_side: int | None,
        *,
        fps: float = 30.0,
        cache_dir: StrPath | None = "default",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.short_side = short_side
        self.fps = fps
        self.cache_dir = self.data_dir / "cache" if cache_dir == "default" else cache_dir
        self._videos: dict[str, VideoFrames] = {}

    def get(self, video_id: str) -> VideoFrames:
        video = self._videos.get(video_id)
        if video is None:
            video = load_video_frames(
                self.data_dir, video_id, self.short_side, fps=self.fps, cache_dir=self.cache_dir
            )
            self._videos[video_id] = video
        return video

    def __getstate__(self) -> dict[str, object]:
        # DataLoader workers re-map the files instead of pickling the frames.
        state = dict(self.__dict__)
        state["_videos"] = {}
        return state


def open_cache(
    data_dir: StrPath, short_side: int | None, *, fps: float, memory: bool = False
) -> FrameCache:
    """A `FrameCache` under ``data_dir/cache`` (``memory=True``: no files)."""
    return FrameCache(data_dir, short_side, fps=fps, cache_dir=None if memory else "default")

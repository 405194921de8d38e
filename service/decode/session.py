"""Decoding in this process: an opened, validated container (``_Session``), the caps checked
before and during decoding, and ``_FrameShaper`` (timestamps, resize, rotation). The decoder
process runs this code; ``isolated=False`` runs it in the server for trusted files."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import av
import av.container
import av.video.stream
import numpy as np

from core.video import FALLBACK_FPS, FrameClock, stream_rate
from service.decode.sniff import (
    _ACCEPTED_CODECS,
    _check_file,
    _fail,
    _open_container,
    _short,
)
from service.errors import VideoInputError
from service.limits import DecodeLimits

_PROBE_PACKETS = 120  # packets read up front: fps/VFR estimate and the first decoded frame


class ClosesOnExit:
    """Context-manager protocol for objects with a ``close()``: ``with`` returns the object and
    calls ``close()`` on the way out, whatever happened inside."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class VideoInfo:
    """What a probe found. `width`/`height` are the displayed size: square pixels, rotation
    applied. `frame_count` and `duration_s` come from headers (None when the container does not
    say) and are estimates; decoding enforces the caps on the real frames."""

    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # e.g. "h264"
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # counter-clockwise degrees applied to the coded picture, 0/90/180/270
    fps: float  # average rate; FALLBACK_FPS when nothing says
    duration_s: float | None
    frame_count: int | None
    vfr: bool  # >5% of frame intervals in the first packets are >10% off the median


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame. image: (H, W, 3) uint8 RGB, resized once, rotation applied."""

    pts_seconds: float
    image: np.ndarray
    index: int


def _display_size(width: int, height: int, sar: Fraction | None, rotation: int) -> tuple[int, int]:
    if sar is not None and sar > 0 and sar != 1:
        width = max(1, round(width * float(sar)))
    if rotation % 180 == 90:
        width, height = height, width
    return width, height


def _metadata_rotation(stream: Any) -> int:
    """Legacy `rotate` tag (clockwise degrees) as counter-clockwise degrees, or 0."""
    try:
        return -int(float(stream.metadata.get("rotate", "0")))
    except ValueError:
        return 0


def _quarter_turns(rotation_ccw: float) -> int:
    # Display matrices can hold any angle; video players only honour multiples of 90.
    return round(rotation_ccw / 90.0) % 4


class _Session:
    """An opened, validated container positioned on its video stream (in-process)."""

    def __init__(self, path: Path, limits: DecodeLimits) -> None:
        fmt = _check_file(path, limits)
        self.limits = limits
        self.container = _open_container(str(path), fmt)
        try:
            self._setup()
        except BaseException:
            self.container.close()
            raise

    def _setup(self) -> None:
        limits = self.limits
        streams = self.container.streams.video
        if not streams:
            raise _fail(
                "no_video_stream",
                "The file has no video stream (audio-only or data only). Upload a file with video.",
            )
        stream = streams[0]
        self.stream: av.video.stream.VideoStream = stream
        cc = stream.codec_context
        if cc.name not in _ACCEPTED_CODECS:
            raise _fail(
                "unsupported_format",
                f"Video codec {cc.name!r} is not accepted. Re-encode to H.264 (or VP9/AV1/HEVC).",
            )
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width * height > limits.max_pixels:
            raise _too_many_pixels(width, height, limits)
        if width <= 0 or height <= 0:
            raise _fail("corrupt", "The video stream has no valid frame size; re-export the file.")
        # libavcodec re-checks every frame buffer against this, including after an in-band
        # resolution change that the container header did not announce.
        cc.options = {"max_pixels": str(limits.max_pixels)}
        cc.thread_count = limits.decoder_threads
        cc.thread_type = "AUTO"

        fps = stream_rate(stream)
        tb = stream.time_base
        duration_s: float | None = None
        if stream.duration is not None and tb is not None and stream.duration > 0:
            duration_s = float(stream.duration * tb)
        elif self.container.duration is not None and self.container.duration > 0:
            duration_s = self.container.duration / 1e6
        frame_count = int(stream.frames) if stream.frames and stream.frames > 0 else None
        if duration_s is not None and duration_s > limits.max_duration_s:
            raise _too_long(duration_s, limits)
        if frame_count is not None and frame_count > limits.max_frames:
            raise _too_many_frames(frame_count, limits)

        # Read a few packets now: they give the frame-interval pattern (VFR) and the first frame
        # (rotation side data; proof the stream decodes at all). Decoding continues from them.
        self._packets: deque[Any] = deque()
        demux = self.container.demux(stream)
        self._demux: Iterator[Any] = demux
        pts_seen: list[int] = []
        try:
            for packet in demux:
                if packet.size == 0 and packet.pts is None:
                    continue
                self._packets.append(packet)
                if packet.pts is not None:
                    pts_seen.append(int(packet.pts))
                if len(self._packets) >= _PROBE_PACKETS:
                    break
        except av.FFmpegError as e:
            raise _fail(
                "corrupt", f"The file's packets cannot be read ({_short(e)}); re-export it."
            ) from None
        deltas = np.diff(np.unique(np.asarray(pts_seen, dtype=np.int64))).astype(np.float64)
        vfr = False
        if deltas.size >= 2 and tb is not None:
            median = float(np.median(deltas))
            # One dropped frame in a constant-rate stream is not VFR: call it VFR when more
            # than 5% of intervals are off the median by more than 10%.
            irregular = np.abs(deltas - median) > 0.1 * median
            vfr = bool(irregular.mean() > 0.05)
            if fps is None and median > 0:
                fps = 1.0 / (median * float(tb))
        self.fps = fps if fps is not None else FALLBACK_FPS

        self._pending: deque[Any] = deque()
        self._frames = self._decode_all()
        try:
            first = next(self._frames)
        except StopIteration:
            raise _fail(
                "empty", "The video stream contains no decodable frame; re-export the file."
            ) from None
        self._pending.append(first)
        rotation = first.rotation if first.rotation else _metadata_rotation(stream)
        self.rotation = _quarter_turns(rotation) * 90
        self.sar = stream.sample_aspect_ratio
        dw, dh = _display_size(width, height, self.sar, self.rotation)
        if frame_count is None and duration_s is not None:
            frame_count = round(duration_s * self.fps)
        self.info = VideoInfo(
            container=self.container.format.name,
            codec=cc.name,
            width=dw,
            height=dh,
            coded_width=width,
            coded_height=height,
            rotation=self.rotation,
            fps=self.fps,
            duration_s=duration_s,
            frame_count=frame_count,
            vfr=vfr,
        )

    def _decode_all(self) -> Iterator[Any]:
        stream = self.stream
        try:
            while True:
                packet = self._packets.popleft() if self._packets else next(self._demux, None)
                if packet is None or (packet.size == 0 and packet.pts is None):
                    break  # demux ends with an empty flush packet; drain once, below
                yield from stream.codec_context.decode(packet)
            yield from stream.codec_context.decode(None)  # drain frames held for reordering
        except av.error.MemoryError:
            raise _out_of_memory(self.limits) from None
        except av.FFmpegError as e:
            raise _fail(
                "corrupt",
                f"The video data is damaged and cannot be decoded ({_short(e)}). "
                "Re-export the file and upload again.",
            ) from None

    def shaper(self, short_side: int | None) -> _FrameShaper:
        return _FrameShaper(
            limits=self.limits,
            short_side=short_side,
            fps=self.fps,
            time_base=self.stream.time_base,
            origin_pts=self.stream.start_time,
            sar=self.sar,
            fallback_rotation=_metadata_rotation(self.stream),
            cap_length=True,
        )

    def raw_frames(self) -> Iterator[Any]:
        while self._pending:
            yield self._pending.popleft()
        yield from self._frames

    def close(self) -> None:
        self.container.close()


def _too_many_pixels(width: int, height: int, limits: DecodeLimits) -> VideoInputError:
    return _fail(
        "too_large",
        f"Video frames are {width}x{height} ({width * height / 1e6:.1f} MP); the limit is "
        f"{limits.max_pixels / 1e6:.1f} MP. Downscale it (e.g. to 1920x1080) and upload again.",
    )


def _too_long(duration_s: float, limits: DecodeLimits) -> VideoInputError:
    return _fail(
        "too_large",
        f"The video is {duration_s:.0f} s long; the limit is {limits.max_duration_s:.0f} s. "
        "Cut it into shorter parts and upload them separately.",
    )


def _too_many_frames(count: int, limits: DecodeLimits) -> VideoInputError:
    return _fail(
        "too_large",
        f"The video has {count} frames; the limit is {limits.max_frames}. Lower its frame rate "
        "or cut it into shorter parts.",
    )


def _out_of_memory(limits: DecodeLimits) -> VideoInputError:
    return _fail(
        "too_large",
        f"Decoding this video needs more than the decoder's {limits.max_memory_bytes / 2**30:.1f} "
        "GiB memory limit. Re-encode it at a lower resolution.",
    )


class _FrameShaper:
    """Turns decoded av.VideoFrames into DecodedFrames: timestamps, caps, resize, rotation."""

    def __init__(
        self,
        *,
        limits: DecodeLimits,
        short_side: int | None,
        fps: float,
        time_base: Fraction | None,
        origin_pts: int | None,
        sar: Fraction | None,
        fallback_rotation: int,
        cap_length: bool,
    ) -> None:
        if short_side is not None and short_side <= 0:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        self.limits = limits
        self.short_side = short_side
        self.fps = fps
        self.clock = FrameClock(time_base=time_base, origin_pts=origin_pts, fps=fps)
        self.sar = sar if sar is not None and sar > 0 else None
        self.fallback_rotation = fallback_rotation
        self.cap_length = cap_length
        self.index = 0
        # One reformatter for the whole stream: PyAV's frame.to_ndarray(format=...) and
        # frame.reformat() build a fresh SwsContext per call, far slower than reusing one for
        # byte-identical output.
        from av.video.reformatter import VideoReformatter

        self.reformatter = VideoReformatter()

    def timestamp(self, frame: Any) -> float:
        """The frame's time in seconds (core.video.FrameClock: the project's one rule)."""
        return self.clock(frame)

    def __call__(self, frame: Any) -> DecodedFrame:
        limits = self.limits
        if self.cap_length and self.index >= limits.max_frames:
            raise _too_many_frames(self.index + 1, limits)
        width, height = int(frame.width), int(frame.height)
        if width * height > limits.max_pixels:
            raise _too_many_pixels(width, height, limits)
        t = self.timestamp(frame)
        if self.cap_length and t > limits.max_duration_s:
            raise _too_long(t, limits)

        display_w = width * float(self.sar) if self.sar is not None else float(width)
        if self.short_side is None:
            out_w, out_h = max(1, round(display_w)), height
        else:
            scale = self.short_side / min(display_w, height)
            out_w, out_h = max(1, round(display_w * scale)), max(1, round(height * scale))
        if out_w * out_h > limits.max_pixels:  # an extreme aspect ratio upscaled to short_side
            raise _too_many_pixels(out_w, out_h, limits)
        if (out_w, out_h) == (width, height):
            rgb = self.reformatter.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3)
        else:
            interp = "AREA" if out_w * out_h < width * height else "BILINEAR"
            rgb = self.reformatter.reformat(
                frame, width=out_w, height=out_h, format="rgb24", interpolation=interp
            ).to_ndarray()  # (out_h, out_w, 3)
        rotation = frame.rotation if frame.rotation else self.fallback_rotation
        turns = _quarter_turns(rotation)
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))  # np.rot90 turns counter-clockwise
        decoded = DecodedFrame(pts_seconds=t, image=rgb, index=self.index)
        self.index += 1
        return decoded


def _probe_in_process(path: Path, limits: DecodeLimits) -> VideoInfo:
    session = _Session(path, limits)
    session.close()
    return session.info


def _iter_in_process(
    path: Path, limits: DecodeLimits, short_side: int | None, on_info: Callable[[VideoInfo], None]
) -> Iterator[DecodedFrame]:
    session = _Session(path, limits)
    try:
        on_info(session.info)
        shaper = session.shaper(short_side)
        for frame in session.raw_frames():
            yield shaper(frame)
    finally:
        session.close()

"""Decoding untrusted video: sniff, whitelist, cap, isolate.

Public API::

    sniff_format(head: bytes) -> str | None
    probe(path, limits=DecodeLimits(), *, isolated=True) -> VideoInfo
    decode_frames(path, limits=DecodeLimits(), *, short_side=None, isolated=True) -> VideoDecoder
        VideoDecoder: .info, iterate -> DecodedFrame(pts_seconds, image (H, W, 3) uint8 RGB, index)
    LiveDecoder(kind: "h264" | "mpegts", limits, *, short_side=None, fps_hint=25.0)
        .feed(bytes) / .end() / .frames(timeout) / .close()

Defences, outermost first:

1. **Magic bytes, not names.** The first bytes of the file pick the demuxer (MP4/MOV, Matroska/
   WebM, MPEG-TS, AVI) and it is opened with that explicit `format=`; FFmpeg's own probing never
   runs, so an HLS playlist, ffconcat list or SDP file renamed `.mp4` is refused as
   `unsupported_format` before FFmpeg sees it. Those three demuxers are refused outright
   because their whole job is to open *other* URLs: HLS fetches segments over HTTP (SSRF into
   the cluster), concat reads arbitrary local files (data exfiltration through decoded
   frames), SDP opens RTP sockets.
2. **FFmpeg's own whitelists**, in case (1) is bypassed: `format_whitelist` lists only the
   accepted demuxers, `protocol_whitelist=file` stops any nested open from reaching the network,
   and `enable_drefs=0` stops MOV external data references from reading other files.
3. **Caps before decoding** (`DecodeLimits`): file size, coded pixels from the codec parameters,
   header duration and frame count; `max_pixels` is also set on the codec context so a
   resolution change inside the bitstream is refused by libavcodec itself; frame count,
   duration and pixels are checked again on every decoded frame.
4. **Only common video codecs** are decoded (H.264/5, VP8/9, AV1, MPEG-1/2/4, MJPEG, ...):
   FFmpeg carries hundreds of rarely used decoders, and those are where fuzzers find bugs.
5. **A separate decoder process** (`isolated=True`, the default): a fresh interpreter running
   `python -m service.decode` (~0.2 s to start, mostly importing PyAV and numpy; `prestart()`
   keeps one spare started ahead of need), not a fork of the threaded server. Before it touches
   the file it lowers its own limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE=0 (it cannot
   write a file), RLIMIT_CORE=0, nice +5; once the input is open, RLIMIT_NOFILE so it cannot
   open another file or socket. It streams frames back over a pipe whose capacity (1 MiB) is the
   whole prefetch buffer, so a slow consumer stalls the decoder instead of growing memory. The
   server charges only the time it spends waiting for the next message to `max_wall_s` (a slow
   consumer is never cut off), kills the child when the budget is spent, and maps a crash, an
   RLIMIT kill or an out-of-memory to a clean `VideoInputError`. Messages are a fixed binary
   header plus raw pixels or JSON, read straight into the frame's array: the server never
   unpickles what the child wrote, so a decoder exploited by a crafted file cannot run code in
   the server through the pipe.

Timestamps are presentation times in seconds from the stream's start. A frame without a pts
gets the previous time + 1/fps (index / fps for the first); a pts that does not increase is
nudged to previous + 1 ms, so times are strictly increasing without inventing a new frame rate.
Rotation (display-matrix side data, or the legacy `rotate` tag) is applied in multiples of 90
degrees after resizing, and non-square pixels are made square by the resize.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing.connection
import os
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import av
import av.container
import av.video.stream
import numpy as np

from service.errors import VIDEO_INPUT_REASONS, VideoInputError
from service.limits import DecodeLimits

__all__ = [
    "ACCEPTED_FORMATS",
    "DecodedFrame",
    "LiveDecoder",
    "VideoDecoder",
    "VideoInfo",
    "decode_frames",
    "discard_spare",
    "prestart",
    "probe",
    "sniff_format",
]

# Demuxer names we open (the explicit `format=` we pass) -> what the user is told we accept.
ACCEPTED_FORMATS: dict[str, str] = {
    "mov": "MP4/MOV",
    "matroska": "Matroska/WebM",
    "mpegts": "MPEG-TS",
    "avi": "AVI",
}
# What `container.format.name` may read after opening with one of the names above.
_OPENED_NAMES = frozenset(
    {"mov", "mp4", "mov,mp4,m4a,3gp,3g2,mj2", "matroska", "matroska,webm", "webm", "mpegts", "avi"}
)
# FFmpeg's own list, enforced inside avformat_open_input: a second lock on the same door.
_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,avi"
_ACCEPTED_TEXT = "MP4/MOV, Matroska/WebM, MPEG-TS or AVI"
# Decoders we run (libavcodec names). Cameras, phones, screen recorders and editors produce
# these; anything else is refused rather than handed to a rarely exercised decoder.
_ACCEPTED_CODECS = frozenset(
    {
        "h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1", "mpeg4", "msmpeg4",
        "msmpeg4v1", "msmpeg4v2", "msmpeg4v3", "mpeg1video", "mpeg2video", "mjpeg", "h263",
        "prores", "dnxhd", "vc1", "wmv3", "theora", "ffv1",
    }
)  # fmt: skip

# Top-level boxes that can open an ISO-BMFF/QuickTime file (old QuickTime files may start with
# moov/mdat/free/wide/pnot instead of ftyp).
_MOV_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})
_SNIFF_BYTES = 1024
_PROBE_PACKETS = 120  # packets read up front: fps/VFR estimate and the first decoded frame
_FALLBACK_FPS = 25.0  # only when neither header nor timestamps give a rate
_NUDGE_S = 1e-3  # a non-increasing pts moves this far past the previous frame
_PIPE_BYTES = 1 << 20  # decoder -> server pipe capacity: the prefetch bound


# --------------------------------------------------------------------------- records


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
    fps: float  # average rate; _FALLBACK_FPS when nothing says
    duration_s: float | None
    frame_count: int | None
    vfr: bool  # >5% of frame intervals in the first packets are >10% off the median


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame. image: (H, W, 3) uint8 RGB, resized once, rotation applied."""

    pts_seconds: float
    image: np.ndarray
    index: int


# --------------------------------------------------------------------------- sniffing


def sniff_format(head: bytes) -> str | None:
    """The demuxer to open a file with, judged from its first bytes; None if not accepted.

    Raw H.264 is deliberately not accepted as a file: it has no timestamps and no header
    duration, so caps could only be checked by decoding all of it. It is accepted live.
    """
    if len(head) >= 12 and head[4:8] in _MOV_FIRST_BOXES:
        size = int.from_bytes(head[:4], "big")
        if size in (0, 1) or size >= 8:  # 0: box runs to end of file; 1: 64-bit size follows
            return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML magic
        return "matroska"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    for offset, stride in ((0, 188), (4, 192)):  # plain TS, and M2TS with a 4-byte prefix
        positions = range(offset, len(head), stride)
        if len(positions) >= 3 and all(head[p] == 0x47 for p in positions):
            return "mpegts"
    return None


# --------------------------------------------------------------------------- in-process core


def _fail(reason: Any, message: str) -> VideoInputError:
    return VideoInputError(reason, message)


def _check_file(path: Path, limits: DecodeLimits) -> str:
    """Size checks and sniffing; returns the demuxer name to open with."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise _fail("corrupt", f"Could not read the uploaded file ({e.strerror}).") from None
    if size == 0:
        raise _fail("empty", "The file is empty (0 bytes). Upload a video file.")
    if size > limits.max_file_bytes:
        raise _fail(
            "too_large",
            f"The file is {size / 1e9:.2f} GB; the limit is {limits.max_file_bytes / 1e9:.2f} GB. "
            "Cut or re-encode it to a smaller file.",
        )
    fmt = sniff_format(head)
    if fmt is None:
        raise _fail(
            "unsupported_format",
            f"Not a video container we accept. Upload {_ACCEPTED_TEXT} (playlists such as "
            ".m3u8, ffconcat lists and SDP files are refused).",
        )
    return fmt


def _open_container(source: Any, fmt: str, extra: dict[str, str] | None = None) -> Any:
    options = {"protocol_whitelist": "file", "format_whitelist": _FORMAT_WHITELIST}
    if fmt == "mov":
        options["enable_drefs"] = "0"  # never follow a MOV data reference to another file
    options.update(extra or {})
    try:
        container = av.open(source, mode="r", format=fmt, container_options=options)
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as e:
        raise _fail(
            "corrupt",
            f"The file looks like {ACCEPTED_FORMATS.get(fmt, fmt)} but its header cannot be read "
            f"({_short(e)}). It may be truncated or damaged; re-export it and upload again.",
        ) from None
    if container.format.name not in _OPENED_NAMES:
        # Unreachable while format= is explicit; kept so a future refactor cannot silently
        # let FFmpeg's probing pick a demuxer that opens other URLs.
        container.close()
        raise _fail("unsupported_format", f"Container {container.format.name!r} is not accepted.")
    return container


def _short(e: BaseException) -> str:
    text = str(e).split(":")[0] if isinstance(e, av.FFmpegError) else type(e).__name__
    return text[:120]


def _rate(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and 0 < float(rate) <= 1000:
            return float(rate)
    return None


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

        fps = _rate(stream)
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
        self.fps = fps if fps is not None else _FALLBACK_FPS

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
        self.time_base = time_base
        self.origin = origin_pts
        self.sar = sar if sar is not None and sar > 0 else None
        self.fallback_rotation = fallback_rotation
        self.cap_length = cap_length
        self.index = 0
        self.prev_t: float | None = None
        # One reformatter for the whole stream: PyAV's frame.to_ndarray(format=...) and
        # frame.reformat() build a fresh SwsContext per call (measured 4.3 ms per 320x240
        # frame, vs 0.10 ms reusing one; byte-identical output).
        from av.video.reformatter import VideoReformatter

        self.reformatter = VideoReformatter()

    def timestamp(self, frame: Any) -> float:
        pts = frame.pts if frame.pts is not None else frame.dts
        t: float | None = None
        if pts is not None and self.time_base is not None:
            if self.origin is None:
                self.origin = pts
            t = float((pts - self.origin) * self.time_base)
        prev = self.prev_t
        if t is None:
            t = self.index / self.fps if prev is None else prev + 1.0 / self.fps
        elif prev is not None and t <= prev:
            t = prev + _NUDGE_S
        t = max(t, 0.0) if prev is None else t
        self.prev_t = t
        return t

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


# --------------------------------------------------------------------------- child process

# Decoder -> server messages on a raw pipe: a fixed header, then `length` payload bytes
# (RGB pixels for a frame, UTF-8 JSON otherwise). Raw framing lets the server read pixels
# straight into the frame's numpy array, one copy out of the kernel, and never unpickle.
_HEADER = struct.Struct("<BIQdII")  # kind, length, index, pts_seconds, height, width
_MSG_FRAME, _MSG_INFO, _MSG_ERROR, _MSG_DONE = 1, 2, 3, 4
_MAX_TEXT = 64 * 1024


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view) :]


def _send(
    fd: int,
    kind: int,
    payload: bytes | memoryview = b"",
    *,
    index: int = 0,
    pts: float = 0.0,
    height: int = 0,
    width: int = 0,
) -> None:
    length = memoryview(payload).nbytes
    _write_all(fd, _HEADER.pack(kind, length, index, pts, height, width))
    _write_all(fd, payload)


def _send_error(fd: int, reason: str, message: str) -> None:
    payload = json.dumps({"reason": reason, "message": message[:1000]}).encode()
    with contextlib.suppress(OSError):
        _send(fd, _MSG_ERROR, payload)


def _harden_child(limits: DecodeLimits, *, cap_cpu: bool) -> None:
    """Runs first in the decoder process: lower its limits for the rest of its life."""
    # FFmpeg logs to stderr; with RLIMIT_FSIZE=0 a write to a regular-file stderr (pytest's
    # capture, a log file) would kill us with SIGXFSZ. Point stdio at /dev/null instead.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    av.logging.set_level(None)
    with contextlib.suppress(OSError):
        os.nice(5)  # decoding yields to the server's event loop and inference
    mem = int(limits.max_memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    if cap_cpu:
        cpu = math.ceil(limits.max_wall_s * limits.decoder_threads) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _lock_files() -> None:
    """After the input is open: no new file descriptors (no other files, no sockets)."""
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, highest + 1))


def _child_file(
    mode: str, path: str, limits: DecodeLimits, short_side: int | None, conn: int
) -> None:
    """Decoder process entry point for a file: probe, or probe and stream frames."""
    try:
        _harden_child(limits, cap_cpu=True)
        session = _Session(Path(path), limits)
        _lock_files()
        _send(conn, _MSG_INFO, json.dumps(asdict(session.info)).encode())
        if mode == "decode":
            shaper = session.shaper(short_side)
            for frame in session.raw_frames():
                _send_frame(conn, shaper(frame))
        _send(conn, _MSG_DONE)
    except VideoInputError as e:
        _send_error(conn, e.reason, e.message)
    except MemoryError:
        _send_error(conn, "too_large", _out_of_memory(limits).message)
    except Exception as e:  # anything else a hostile file provokes is reported, not raised
        _send_error(conn, "corrupt", f"The video could not be decoded ({type(e).__name__}).")
    finally:
        with contextlib.suppress(OSError):
            os.close(conn)


def _send_frame(fd: int, frame: DecodedFrame) -> None:
    image = np.ascontiguousarray(frame.image)  # (H, W, 3); no copy when already contiguous
    h, w, _ = image.shape
    _send(fd, _MSG_FRAME, image.data, index=frame.index, pts=frame.pts_seconds, height=h, width=w)


class _PipeReader:
    """A blocking file-like view of byte chunks arriving on a Connection (b'' = end)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.buffer = b""
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        while not self.buffer and not self.eof:
            chunk = self.conn.recv_bytes()
            if not chunk:
                self.eof = True
            self.buffer = chunk
        if n < 0:
            n = len(self.buffer)
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def _child_live(
    kind: str, limits: DecodeLimits, short_side: int | None, fps_hint: float, inp: Any, conn: int
) -> None:
    """Decoder process entry point for live input fed as byte chunks on `inp`."""
    try:
        _harden_child(limits, cap_cpu=False)  # a live stream's CPU time grows with its length
        _lock_files()
        if kind == "h264":
            _live_h264(limits, short_side, fps_hint, inp, conn)
        else:
            _live_mpegts(limits, short_side, fps_hint, inp, conn)
        _send(conn, _MSG_DONE)
    except VideoInputError as e:
        _send_error(conn, e.reason, e.message)
    except MemoryError:
        _send_error(conn, "too_large", _out_of_memory(limits).message)
    except (EOFError, BrokenPipeError):
        pass  # the server went away
    except Exception as e:
        _send_error(conn, "corrupt", f"The stream could not be decoded ({type(e).__name__}).")
    finally:
        with contextlib.suppress(OSError):
            os.close(conn)


def _live_shaper(
    limits: DecodeLimits, short_side: int | None, fps: float, time_base: Fraction | None
) -> _FrameShaper:
    return _FrameShaper(
        limits=limits,
        short_side=short_side,
        fps=fps,
        time_base=time_base,
        origin_pts=None,
        sar=None,
        fallback_rotation=0,
        cap_length=False,
    )


def _live_h264(
    limits: DecodeLimits, short_side: int | None, fps: float, inp: Any, conn: int
) -> None:
    # Raw Annex-B has no container, so the parser splits it into access units; no demuxer runs.
    cc = av.CodecContext.create("h264", "r")
    cc.options = {"max_pixels": str(limits.max_pixels)}
    cc.thread_count = 1  # frame threading would add a frame of latency per thread
    shaper = _live_shaper(limits, short_side, fps, None)  # no timestamps: index / fps
    try:
        while True:
            chunk = inp.recv_bytes()
            for packet in cc.parse(chunk if chunk else None):
                for frame in cc.decode(packet):
                    _send_frame(conn, shaper(frame))
            if not chunk:
                break
        for frame in cc.decode(None):
            _send_frame(conn, shaper(frame))
    except av.error.MemoryError:
        raise _out_of_memory(limits) from None
    except av.FFmpegError as e:
        raise _fail("corrupt", f"The H.264 stream is damaged ({_short(e)}).") from None


def _live_mpegts(
    limits: DecodeLimits, short_side: int | None, fps_hint: float, inp: Any, conn: int
) -> None:
    # The TS demuxer pulls bytes; in this dedicated process it may simply block on the pipe.
    container = _open_container(
        _PipeReader(inp), "mpegts", {"probesize": "262144", "analyzeduration": "1000000"}
    )
    try:
        if not container.streams.video:
            raise _fail("no_video_stream", "The MPEG-TS stream carries no video.")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if cc.name not in _ACCEPTED_CODECS:
            raise _fail("unsupported_format", f"Video codec {cc.name!r} is not accepted.")
        if int(cc.width or 0) * int(cc.height or 0) > limits.max_pixels:
            raise _too_many_pixels(int(cc.width), int(cc.height), limits)
        cc.options = {"max_pixels": str(limits.max_pixels)}
        cc.thread_count = 1
        shaper = _live_shaper(limits, short_side, _rate(stream) or fps_hint, stream.time_base)
        for packet in container.demux(stream):
            for frame in packet.decode():
                _send_frame(conn, shaper(frame))
    except av.error.MemoryError:
        raise _out_of_memory(limits) from None
    except av.FFmpegError as e:
        raise _fail("corrupt", f"The MPEG-TS stream is damaged ({_short(e)}).") from None
    finally:
        container.close()


# --------------------------------------------------------------------------- parent side

_REPO_ROOT = Path(__file__).resolve().parents[1]
_CHILD_ENV = frozenset(
    {"PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "PYTHONHOME", "VIRTUAL_ENV", "SYSTEMROOT"}
)


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)


@dataclass
class _Interpreter:
    """A started decoder interpreter that has not been sent its request yet.

    Starting one costs ~0.3 s (interpreter start, importing PyAV and numpy), which is most of
    the time to the first frame of a short upload. `prestart` pays it ahead of need; the child
    touches no file and lowers no limit until its request arrives, so a spare is the same as a
    freshly started child."""

    process: subprocess.Popen[bytes]
    out_r: int  # decoder -> server
    in_w: int  # server -> decoder

    @classmethod
    def start(cls) -> _Interpreter:
        out_r, out_w = os.pipe()  # decoder -> server
        in_r, in_w = os.pipe()  # server -> decoder
        _grow_pipe(out_r)
        # Only what an interpreter needs to start: the server's environment may hold API keys
        # and database URLs, which a decoder exploited by a crafted file should never see.
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-B", "-m", "service.decode", str(out_w), str(in_r)],
                pass_fds=(out_w, in_r),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd="/",  # a relative name inside a hostile file resolves to nothing useful
            )
        except BaseException:
            os.close(out_r)
            os.close(in_w)
            raise
        finally:
            os.close(out_w)
            os.close(in_r)
        return cls(process, out_r, in_w)

    def discard(self, *, close_input: bool = True) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        os.close(self.out_r)
        if close_input:
            os.close(self.in_w)


_spare_lock = threading.Lock()
_spare: _Interpreter | None = None


def prestart() -> None:
    """Start a decoder interpreter now for the next `decode_frames` / `probe` / `LiveDecoder`.

    One spare at most; the next decode takes it (and runs exactly as with a fresh child), later
    ones start their own. Call it where the wait does not matter (while models load, after a
    file is done); `discard_spare` ends it.
    """
    global _spare
    with _spare_lock:
        if _spare is not None and _spare.process.poll() is None:
            return
        stale, _spare = _spare, None
    if stale is not None:
        stale.discard()
    fresh = _Interpreter.start()
    with _spare_lock:
        keep = _spare is None  # another thread may have started one meanwhile
        if keep:
            _spare = fresh
    if not keep:
        fresh.discard()


def discard_spare() -> None:
    """End the spare decoder interpreter, if there is one."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.discard()


def _take_spare() -> _Interpreter | None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare.process.poll() is not None:
        spare.discard()  # it died while waiting (killed from outside): start a fresh one
        return None
    return spare


class _ChildLink:
    """The server's end of one decoder process: bounded messages, a waiting budget, a kill.

    The child is a fresh interpreter (`python -m service.decode OUT_FD IN_FD`), not a fork of
    the server: forking a threaded server is unsafe, and multiprocessing's spawn/forkserver
    re-import the server's `__main__` in every child. The request travels as JSON on IN_FD.
    """

    def __init__(
        self, request: dict[str, Any], limits: DecodeLimits, max_output_pixels: int
    ) -> None:
        self.limits = limits
        self.max_message = _HEADER.size + 3 * max_output_pixels + _MAX_TEXT
        request = {**request, "limits": asdict(limits)}
        spare = _take_spare()
        try:
            interpreter = spare or _Interpreter.start()
            self.input = multiprocessing.connection.Connection(interpreter.in_w, readable=False)
            self.input.send_bytes(json.dumps(request).encode())
        except BrokenPipeError:
            if spare is None:
                raise
            # The spare died between the check and the send: start afresh. The Connection owns
            # in_w now, so it closes that fd; discard() closes the rest.
            self.input.close()
            spare.discard(close_input=False)
            interpreter = _Interpreter.start()
            self.input = multiprocessing.connection.Connection(interpreter.in_w, readable=False)
            self.input.send_bytes(json.dumps(request).encode())
        self.process = interpreter.process
        out_r = interpreter.out_r
        self.fd = out_r
        self._poller = select.poll()
        self._poller.register(out_r, select.POLLIN)
        self.max_pixels = max_output_pixels
        self.waited_s = 0.0
        self.closed = False
        self._close_lock = threading.Lock()

    def receive(self, budget_s: float, what: str) -> _Message:
        """Next message. Time spent waiting is charged to `waited_s`, which may not exceed
        `budget_s`; every read waits only for the budget left, so a child that stalls even in
        the middle of a message cannot hang the server."""
        header = bytearray(_HEADER.size)
        if not self._read_exact(memoryview(header), budget_s, what):
            raise self._died()
        kind, length, index, pts, height, width = _HEADER.unpack(header)
        if kind == _MSG_FRAME:
            if height * width > self.max_pixels or length != height * width * 3:
                raise self._protocol_error()
            image = np.empty((height, width, 3), dtype=np.uint8)  # (H, W, 3) RGB
            if not self._read_exact(image.data.cast("B"), budget_s, what):
                raise self._died()
            if not math.isfinite(pts):
                raise self._protocol_error()
            return _Message(kind, DecodedFrame(pts_seconds=pts, image=image, index=index), b"")
        if kind not in (_MSG_INFO, _MSG_ERROR, _MSG_DONE) or length > _MAX_TEXT:
            raise self._protocol_error()
        payload = bytearray(length)
        if not self._read_exact(memoryview(payload), budget_s, what):
            raise self._died()
        return _Message(kind, None, bytes(payload))

    def _read_exact(self, view: memoryview, budget_s: float, what: str) -> bool:
        """Fill `view` from the pipe; False at end of file (the child exited)."""
        while view.nbytes:
            remaining = budget_s - self.waited_s
            start = time.monotonic()
            if math.isinf(remaining):
                events = self._poller.poll()
            else:
                events = self._poller.poll(max(0, math.ceil(remaining * 1000)))
            self.waited_s += time.monotonic() - start
            if not events:
                self.kill()
                raise _fail(
                    "timeout",
                    f"Decoding took longer than the {budget_s:g} s limit while {what}. The file "
                    "may be damaged or crafted to be slow; re-encode it and upload again.",
                )
            try:
                n = os.readv(self.fd, [view])
            except OSError:
                return False
            if n == 0:
                return False
            view = view[n:]
        return True

    def _protocol_error(self) -> VideoInputError:
        self.kill()
        return _fail("corrupt", "The decoder sent a malformed message; the file is not usable.")

    def _died(self) -> VideoInputError:
        try:
            code: int | None = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            # SIGXCPU: our RLIMIT_CPU; SIGKILL: the hard CPU limit or the kernel's OOM killer.
            return _fail("timeout", "The decoder ran out of its CPU or memory budget on this file.")
        return _fail(
            "corrupt",
            f"The decoder stopped on this file (exit status {code}). It is damaged or crafted; "
            "re-encode it and upload again.",
        )

    def stop(self) -> None:
        """Kill the child; its pipe then reads as end of file (fds stay open for a reader)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)

    def kill(self) -> None:
        """Kill the child and close both pipes. Safe to call more than once, from any thread."""
        self.stop()
        with self._close_lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)
                self.input.close()


@dataclass(frozen=True)
class _Message:
    kind: int
    frame: DecodedFrame | None
    payload: bytes


def _error_from(payload: bytes) -> VideoInputError:
    """Rebuild an error the child reported, trusting nothing in it but a known reason."""
    try:
        data = json.loads(payload.decode("utf-8", errors="replace"))
        reason, message = str(data["reason"]), str(data["message"])[:1000]
    except (ValueError, KeyError, TypeError):
        return _fail("corrupt", "The decoder reported an unreadable error for this file.")
    return _fail(reason if reason in VIDEO_INPUT_REASONS else "corrupt", message)


def _info_from(payload: bytes) -> VideoInfo:
    try:
        data = json.loads(payload)
        info = VideoInfo(**data)
        for name in ("width", "height", "coded_width", "coded_height", "rotation"):
            if not isinstance(getattr(info, name), int):
                raise TypeError(name)
        return info
    except (ValueError, TypeError):
        raise _fail("corrupt", "The decoder reported unreadable stream information.") from None


def _existing(path: str | os.PathLike[str]) -> str:
    """Absolute path of a regular file. A missing file is the caller's bug, not bad input."""
    absolute = os.path.abspath(os.fspath(path))
    if not os.path.isfile(absolute):
        raise FileNotFoundError(f"no video file at {absolute}")
    return absolute


def _expect_info(link: _ChildLink, limits: DecodeLimits) -> VideoInfo:
    message = link.receive(limits.max_probe_s, "reading the file header")
    if message.kind == _MSG_ERROR:
        raise _error_from(message.payload)
    if message.kind != _MSG_INFO:
        raise _fail("corrupt", "The decoder sent an unexpected message.")
    return _info_from(message.payload)


def probe(
    path: str | os.PathLike[str], limits: DecodeLimits | None = None, *, isolated: bool = True
) -> VideoInfo:
    """Validate a video file and describe it, without decoding more than its first frame.

    Raises VideoInputError for anything the service will not decode. `isolated=False` runs in
    this process: only for trusted files and for measuring the isolation's cost.
    """
    limits = limits or DecodeLimits()
    if not isolated:
        return _probe_in_process(Path(path), limits)
    request = {"mode": "probe", "path": _existing(path), "short_side": None}
    link = _ChildLink(request, limits, 0)
    try:
        return _expect_info(link, limits)
    finally:
        link.kill()


class VideoDecoder:
    """Frames of one video file, in presentation order. Iterate it; close it (or use `with`).

    Construction probes the file (raising VideoInputError early); iteration may still raise
    VideoInputError when a cap is hit or the data turns out damaged part-way through.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        limits: DecodeLimits,
        *,
        short_side: int | None,
        isolated: bool,
    ) -> None:
        if short_side is not None and short_side <= 0:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        self.limits = limits
        self.info: VideoInfo
        self._link: _ChildLink | None = None
        self._local: Iterator[DecodedFrame] | None = None
        self._done = False
        self._first: DecodedFrame | None = None
        if isolated:
            request = {"mode": "decode", "path": _existing(path), "short_side": short_side}
            self._link = _ChildLink(request, limits, limits.max_pixels)
            try:
                self.info = _expect_info(self._link, limits)
            except BaseException:
                self.close()
                raise
            self._link.waited_s = 0.0  # the decode budget starts after the probe
        else:
            infos: list[VideoInfo] = []
            self._local = _iter_in_process(Path(path), limits, short_side, infos.append)
            try:
                first = next(self._local)
            except StopIteration:
                first = None
            except BaseException:
                self.close()
                raise
            self.info = infos[0]
            self._first = first

    @property
    def decode_wait_s(self) -> float:
        """Seconds the caller has spent waiting for the decoder process (isolated mode)."""
        return self._link.waited_s if self._link is not None else 0.0

    def __iter__(self) -> Iterator[DecodedFrame]:
        return self

    def __next__(self) -> DecodedFrame:
        if self._done:
            raise StopIteration
        try:
            if self._local is not None:
                if self._first is not None:
                    first, self._first = self._first, None
                    return first
                return next(self._local)
            assert self._link is not None
            message = self._link.receive(self.limits.max_wall_s, "decoding frames")
            if message.frame is not None:
                return message.frame
            if message.kind == _MSG_ERROR:
                raise _error_from(message.payload)
            self.close()
            raise StopIteration
        except (VideoInputError, StopIteration):
            self.close()
            raise

    def close(self) -> None:
        """Stop decoding and free the decoder process. Safe to call more than once."""
        self._done = True
        if self._link is not None:
            self._link.kill()
        if self._local is not None:
            closer = getattr(self._local, "close", None)
            if closer is not None:
                closer()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def decode_frames(
    path: str | os.PathLike[str],
    limits: DecodeLimits | None = None,
    *,
    short_side: int | None = None,
    isolated: bool = True,
) -> VideoDecoder:
    """Decode a video file into frames resized once so their short side is `short_side` pixels
    (None keeps the size), stamped with presentation time in seconds, rotation applied.

    The returned VideoDecoder has `.info` (a VideoInfo) and iterates DecodedFrames. Frames reach
    the caller through a 1 MiB pipe: decoding runs at most that far ahead of consumption.
    """
    return VideoDecoder(path, limits or DecodeLimits(), short_side=short_side, isolated=isolated)


# --------------------------------------------------------------------------- live input


class LiveDecoder:
    """Decodes a live byte stream (raw H.264 Annex-B, or MPEG-TS) fed in chunks, in a decoder
    process with the same limits as files (no CPU-time, frame or duration cap: a live stream
    lasts as long as its connection).

    Design: raw H.264 goes through `CodecContext.parse` (push-based, no demuxer at all);
    MPEG-TS goes through the TS demuxer reading a pipe, which may block because the process
    does nothing else. A reader thread moves decoded frames into a buffer of
    `max_buffered_frames`; when the consumer falls behind, the *oldest* frames are dropped and
    counted in `dropped_frames` (old live frames are worth less than new ones), so the decoder
    never stalls on a slow consumer. `feed()` blocks only while the decoder itself is behind,
    and raises `timeout` after `limits.max_wall_s`.
    """

    _STOP = b""

    def __init__(
        self,
        kind: Literal["h264", "mpegts"],
        limits: DecodeLimits | None = None,
        *,
        short_side: int | None = None,
        fps_hint: float = 25.0,
        max_buffered_frames: int = 64,
    ) -> None:
        if kind not in ("h264", "mpegts"):
            raise ValueError(f"LiveDecoder kind must be 'h264' or 'mpegts', got {kind!r}")
        if not fps_hint > 0:
            raise ValueError(f"fps_hint must be > 0, got {fps_hint}")
        self.limits = limits or DecodeLimits()
        self.dropped_frames = 0
        self._frames: deque[DecodedFrame] = deque()
        self._max_frames = max_buffered_frames
        self._cond = threading.Condition()
        self._error: VideoInputError | None = None
        self._finished = False
        request = {"mode": "live", "kind": kind, "short_side": short_side, "fps_hint": fps_hint}
        self._link = _ChildLink(request, self.limits, self.limits.max_pixels)
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._writer = threading.Thread(target=self._write_loop, daemon=True)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._writer.start()
        self._reader.start()

    _CHUNK = 256 * 1024

    def feed(self, data: bytes) -> None:
        """Queue bytes for decoding. Raises VideoInputError if the stream already failed or the
        decoder cannot keep up for `limits.max_wall_s`."""
        self._raise_if_failed()
        for start in range(0, len(data), self._CHUNK):
            try:
                self._chunks.put(
                    bytes(data[start : start + self._CHUNK]), timeout=self.limits.max_wall_s
                )
            except queue.Full:
                self._fail_with(_fail("timeout", "The decoder fell behind the live stream."))
                self._raise_if_failed()

    def end(self) -> None:
        """No more input: the decoder drains what it holds, then `frames()` reports the end."""
        with contextlib.suppress(queue.Full):
            self._chunks.put(self._STOP, timeout=self.limits.max_wall_s)

    def frames(self, timeout: float = 0.0) -> list[DecodedFrame]:
        """Frames decoded so far (waiting up to `timeout` s for at least one). Raises the stream's
        VideoInputError once its frames are drained; returns [] at the end of the stream."""
        with self._cond:
            if not self._frames and not self._finished and timeout > 0:
                self._cond.wait(timeout)
            out = list(self._frames)
            self._frames.clear()
        if not out:
            self._raise_if_failed()
        return out

    @property
    def finished(self) -> bool:
        """True once the decoder has ended (input ended, failed or closed) and frames drained."""
        with self._cond:
            return self._finished and not self._frames

    def close(self) -> None:
        """Stop the decoder process and both helper threads. Safe to call more than once."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()
        self._link.stop()  # the reader sees end of file and returns
        self._reader.join(timeout=5.0)
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(None)
        self._writer.join(timeout=5.0)
        self._link.kill()

    def __enter__(self) -> LiveDecoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        with self._cond:
            error = self._error
        if error is not None:
            raise error

    def _fail_with(self, error: VideoInputError) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._finished = True
            self._cond.notify_all()

    def _write_loop(self) -> None:
        while True:
            chunk = self._chunks.get()
            if chunk is None:
                return
            try:
                self._link.input.send_bytes(chunk)
            except (OSError, ValueError):
                return  # the decoder ended; the reader reports why
            if chunk == self._STOP:
                return

    def _read_loop(self) -> None:
        link = self._link
        try:
            while True:
                # Live: no total budget; a silent decoder is normal while input is idle.
                message = link.receive(math.inf, "decoding a live stream")
                frame = message.frame
                if frame is not None:
                    with self._cond:
                        if len(self._frames) >= self._max_frames:
                            self._frames.popleft()
                            self.dropped_frames += 1
                        self._frames.append(frame)
                        self._cond.notify_all()
                    continue
                if message.kind == _MSG_ERROR:
                    self._fail_with(_error_from(message.payload))
                else:
                    with self._cond:
                        self._finished = True
                        self._cond.notify_all()
                return
        except Exception as e:
            with self._cond:
                closed = self._finished
            if not closed:  # after close() the end of the pipe is expected, not an error
                error = e if isinstance(e, VideoInputError) else None
                self._fail_with(error or _fail("corrupt", "The live decoder stopped unexpectedly."))


# --------------------------------------------------------------------------- worker entry


def _lowest_fd(fd: int) -> int:
    low = os.dup(fd)  # the lowest free number
    if low < fd:
        os.close(fd)
        return low
    os.close(low)
    return fd


def _worker_main(argv: list[str]) -> None:
    """`python -m service.decode OUT_FD IN_FD`: one request (JSON) on IN_FD, replies on OUT_FD."""
    # The pipe descriptors keep the numbers they had in the server (high in a busy server, or
    # when this interpreter was pre-started): move them to the lowest free numbers, so the
    # descriptor table, and the RLIMIT_NOFILE that `_lock_files` derives from it, stay small.
    out, inp_fd = (_lowest_fd(int(a)) for a in argv[:2])
    inp = multiprocessing.connection.Connection(inp_fd, writable=False)
    request = json.loads(inp.recv_bytes(_MAX_TEXT))
    limits = DecodeLimits(**request["limits"])
    short_side = request["short_side"]
    if request["mode"] == "live":
        _child_live(request["kind"], limits, short_side, float(request["fps_hint"]), inp, out)
    else:
        inp.close()
        _child_file(request["mode"], request["path"], limits, short_side, out)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])

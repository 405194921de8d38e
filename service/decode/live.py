"""Live input: ``LiveDecoder`` for raw H.264 / MPEG-TS byte streams (decoded in the decoder
process), and the JPEG frame messages of the live WebSocket (``frame_message`` /
``split_frame_message``, ``decode_jpeg``)."""

from __future__ import annotations

import contextlib
import io
import math
import os
import queue
import struct
import threading
from collections import deque
from fractions import Fraction
from typing import Any, Literal

import av
import av.container
import av.video.stream
import numpy as np

from core.video import stream_rate
from service.decode.sandbox import (
    _MSG_DONE,
    _MSG_ERROR,
    _ChildLink,
    _error_from,
    _harden_child,
    _lock_files,
    _send,
    _send_error,
    _send_frame,
)
from service.decode.session import (
    ClosesOnExit,
    DecodedFrame,
    _FrameShaper,
    _out_of_memory,
    _too_many_pixels,
)
from service.decode.sniff import (
    _ACCEPTED_CODECS,
    _fail,
    _open_container,
    _short,
)
from service.errors import VideoInputError
from service.limits import DecodeLimits

# ------------------------------------------------------------------ JPEG frames of a live socket

PTS_HEADER = struct.Struct("<d")  # 8-byte little-endian float64 presentation time, seconds
# Largest live JPEG frame, width x height (4K UHD, as `DecodeLimits.max_pixels` for uploads)
# and the smallest one the detector can use.
MAX_FRAME_PIXELS = 3840 * 2160
MIN_FRAME_SIDE = 16


def frame_message(pts: float, jpeg: bytes) -> bytes:
    """One binary live message (``input: "jpeg"``): the pts header, then the JPEG bytes. The web
    page builds the same message in ``service/static/app.js``."""
    return PTS_HEADER.pack(pts) + jpeg


def split_frame_message(data: bytes) -> tuple[float, bytes] | None:
    """``(pts, JPEG bytes)`` of one binary live message; None when it cannot hold both."""
    if len(data) <= PTS_HEADER.size:
        return None
    (pts,) = PTS_HEADER.unpack_from(data)
    return float(pts), data[PTS_HEADER.size :]


class FrameRefused(ValueError):
    """A JPEG frame refused for its size; the message names the limit."""


def decode_jpeg(payload: bytes, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB from one JPEG; `FrameRefused` naming the limit for a frame over
    ``max_pixels`` or under 16 pixels a side, another exception for anything undecodable."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(payload), formats=["JPEG"])
    except Image.DecompressionBombError as exc:  # PIL's own cap, far above ours
        raise FrameRefused(
            f"frame is over the pixel limit of {max_pixels} pixels ({exc})"
        ) from None
    with img:
        w, h = img.size  # read from the header: no pixels decoded yet
        if w * h > max_pixels:
            raise FrameRefused(
                f"frame {w}x{h} = {w * h} pixels is over the pixel limit of {max_pixels} "
                "pixels; scale frames down before sending"
            )
        if min(w, h) < MIN_FRAME_SIDE:
            raise FrameRefused(
                f"frame {w}x{h} is under the minimum of {MIN_FRAME_SIDE} pixels a side"
            )
        return np.asarray(img.convert("RGB"))


# ------------------------------------------------------------------ byte streams (H.264, MPEG-TS)


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
        shaper = _live_shaper(limits, short_side, stream_rate(stream) or fps_hint, stream.time_base)
        for packet in container.demux(stream):
            for frame in packet.decode():
                _send_frame(conn, shaper(frame))
    except av.error.MemoryError:
        raise _out_of_memory(limits) from None
    except av.FFmpegError as e:
        raise _fail("corrupt", f"The MPEG-TS stream is damaged ({_short(e)}).") from None
    finally:
        container.close()


class LiveDecoder(ClosesOnExit):
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

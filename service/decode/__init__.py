"""Decoding untrusted video: sniff, whitelist, cap, isolate.

Public API::

    sniff_format(head: bytes) -> str | None
    probe(path, limits=DecodeLimits(), *, isolated=True) -> VideoInfo
    decode_frames(path, limits=DecodeLimits(), *, short_side=None, isolated=True) -> VideoDecoder
        VideoDecoder: .info, iterate -> DecodedFrame(pts_seconds, image (H, W, 3) uint8 RGB, index)
    LiveDecoder(kind: "h264" | "mpegts", limits, *, short_side=None, fps_hint=25.0)
        .feed(bytes) / .end() / .frames(timeout) / .close()
    frame_message(pts, jpeg) / split_frame_message(data) / decode_jpeg(jpeg, max_pixels)

Modules: ``sniff`` (magic bytes, whitelists, opening a container), ``session`` (in-process
decoding: caps, timestamps, resize, rotation), ``sandbox`` (the decoder process and the file API),
``live`` (live byte streams and the live socket's JPEG frames), ``__main__`` (the decoder
process's entry).

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
   `python -m service.decode` (its start, mostly importing PyAV and numpy, is paid ahead of need:
   `prestart()` keeps one spare started), not a fork of the threaded server. Before it touches
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

Timestamps (core/video.py's FrameClock, the rule training's clip readers use too) are
presentation times in seconds from the stream's start. A frame without a pts
gets the previous time + 1/fps (index / fps for the first); a pts that does not increase is
nudged to previous + 1 ms, so times are strictly increasing without inventing a new frame rate.
Rotation (display-matrix side data, or the legacy `rotate` tag) is applied in multiples of 90
degrees after resizing, and non-square pixels are made square by the resize.
"""

from service.decode.live import (
    MAX_FRAME_PIXELS,
    MIN_FRAME_SIDE,
    PTS_HEADER,
    FrameRefused,
    LiveDecoder,
    decode_jpeg,
    frame_message,
    split_frame_message,
)
from service.decode.sandbox import VideoDecoder, decode_frames, discard_spare, prestart, probe
from service.decode.session import DecodedFrame, VideoInfo
from service.decode.sniff import ACCEPTED_FORMATS, SNIFF_BYTES, sniff_format

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_FRAME_PIXELS",
    "MIN_FRAME_SIDE",
    "PTS_HEADER",
    "SNIFF_BYTES",
    "DecodedFrame",
    "FrameRefused",
    "LiveDecoder",
    "VideoDecoder",
    "VideoInfo",
    "decode_frames",
    "decode_jpeg",
    "discard_spare",
    "frame_message",
    "prestart",
    "probe",
    "sniff_format",
    "split_frame_message",
]

"""Which files are opened at all: magic-byte sniffing, the demuxer and codec whitelists, and
opening a container with FFmpeg's own whitelists (defences 1, 2 and 4 of ``service.decode``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import av.container
import av.video.stream

from service.errors import VideoInputError
from service.limits import DecodeLimits

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
SNIFF_BYTES = 1024


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


def _fail(reason: Any, message: str) -> VideoInputError:
    return VideoInputError(reason, message)


def _check_file(path: Path, limits: DecodeLimits) -> str:
    """Size checks and sniffing; returns the demuxer name to open with."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
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

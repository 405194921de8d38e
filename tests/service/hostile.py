"""Generators for test videos, good and hostile, written on the fly into a temp folder.

Nothing binary is committed: every fixture is made by PyAV (or by hand, for the text formats)
in well under a second.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import av.video.stream
import numpy as np

from service.decode.session import ClosesOnExit

X264 = {"preset": "ultrafast", "bframes": "0"}


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB whose mean level encodes the index: 8 * (index % 24) + a small ramp,
    so frame order survives lossy coding and a resize."""
    ramp = np.linspace(0, 30, width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    image = np.broadcast_to(ramp + 8.0 * (index % 24), (height, width, 3))
    return np.ascontiguousarray(image.clip(0, 255).astype(np.uint8))


def write_video(
    path: Path,
    *,
    container: str | None = None,
    codec: str = "libx264",
    width: int = 64,
    height: int = 48,
    frames: int = 10,
    fps: int = 25,
    pts_ms: Sequence[int] | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode a small video. `pts_ms` gives each frame's presentation time in milliseconds
    (variable frame rate); otherwise frames are 1/fps apart. `rotation` writes a display
    matrix (counter-clockwise degrees) with PyAV's `VideoStream.set_display_rotation`."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = dict(
            options if options is not None else X264 if codec == "libx264" else {}
        )
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), Fraction(1, 1000)
            else:
                frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def encode_bytes(container: str, *, frames: int = 12, width: int = 64, height: int = 48) -> bytes:
    """A small H.264 stream as bytes: container "h264" (raw Annex-B) or "mpegts"."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream("libx264", rate=25)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(X264)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


# ------------------------------------------------------------------ hostile files


def huge_h264(path: Path, side: int = 8192) -> Path:
    """One side x side H.264 frame in MP4. libx264 takes 8192x8192 (level 6.2 allows it); a
    single grey frame encodes in ~1 s to ~200 KB, so the file is tiny while the decoder would
    need ~100 MB per frame."""
    return write_video(path, container="mp4", width=side, height=side, frames=1, fps=1)


def many_frames(path: Path, frames: int = 20_000, side: int = 16, container: str = "mp4") -> Path:
    """A tiny-frame file with many frames (a frame-count bomb); 16x16 encodes in ~0.2 s."""
    return write_video(path, container=container, width=side, height=side, frames=frames, fps=25)


def truncated_mp4(path: Path, keep: float = 0.5) -> Path:
    """An MP4 cut short. PyAV writes `moov` at the end, so the index is gone."""
    write_video(path, container="mp4", frames=25)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def random_bytes(path: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def audio_only(path: Path, container: str = "mp4") -> Path:
    """One second of AAC silence and no video stream."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("aac", rate=48_000)
        samples = 1024
        for i in range(48_000 // samples):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, samples), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 48_000, i * samples
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def hls_playlist(path: Path, url: str) -> Path:
    """An HLS media playlist whose one segment is `url` (FFmpeg's hls demuxer would fetch it)."""
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{url}\n#EXT-X-ENDLIST\n"
    )
    return path


def ffconcat(path: Path, target: Path) -> Path:
    """An ffconcat list naming another local file beside it (the concat demuxer would read it;
    a relative name passes the demuxer's own `safe` check)."""
    path.write_text(f"ffconcat version 1.0\nfile '{target.name}'\n")
    return path


def sdp(path: Path, port: int) -> Path:
    """An SDP session description (the sdp demuxer would open RTP sockets on loopback)."""
    path.write_text(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=hostile\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    )
    return path


class LoopbackListener(ClosesOnExit):
    """A TCP listener on 127.0.0.1:<free port> that counts connections (and bytes) it receives.

    Used as the target of hostile playlists: any outbound attempt shows up as `connections`.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/segment0.ts"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> LoopbackListener:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.sock.close()

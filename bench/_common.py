"""Pieces the benches share: the per-keyframe "reopen, seek, decode, preprocess" loop that the
demo scripts and the peers' eager loop run (the baseline the streaming service is timed
against), and the boxes those loops hand the backbone. The benches put the repository on
``sys.path`` and import this as ``bench._common``."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.manifest import BundleManifest
from core.preprocess import pack_pathways, preprocess_clip, resize_short_side
from core.sampling import nearest_frame_indices


def video_duration_s(video: Path) -> float:
    """The container's duration in seconds (0 when it does not say)."""
    import av

    with av.open(str(video)) as c:
        return float(c.duration / 1e6) if c.duration else 0.0


def naive_keyframe_clips(
    video: Path, manifest: BundleManifest, duration: float
) -> Iterator[tuple[int, float, np.ndarray, np.ndarray, np.ndarray]]:
    """``(n, t, slow, fast, key)`` for each keyframe ``t = n / keyframe_rate`` of ``duration``
    seconds whose clip the video covers: the file reopened, sought 1 s before the clip and
    decoded to its end, the sampled frames resized once then normalised as the service does.
    ``slow``/``fast`` are batched (1, 3, T, H', W'); ``key`` is the keyframe's RGB frame."""
    import av
    from av.video.reformatter import VideoReformatter

    from service.ringbuffer import ClipGeometry

    prep = manifest.preprocessing
    geo = ClipGeometry.from_manifest(prep, "center", manifest.keyframe_rate)
    for n in range(int(math.floor(duration * manifest.keyframe_rate)) + 1):
        t = n / manifest.keyframe_rate
        times = geo.times(t)
        frames: list[tuple[float, np.ndarray]] = []
        with av.open(str(video)) as c:
            # The same RGB conversion as the service (a reused reformatter), so the speed-up
            # comes from the pipeline, not from a slower frame conversion.
            rgb = VideoReformatter()
            s = c.streams.video[0]
            start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
            seek = max(0.0, float(times[0]) - 1.0)
            c.seek(int((seek + start) / s.time_base), stream=s, backward=True)
            for f in c.decode(s):
                pts = float(f.time) - start
                frames.append((pts, rgb.reformat(f, format="rgb24").to_ndarray()))
                if pts >= times[-1]:
                    break
        if not frames or frames[-1][0] < t:
            continue
        pts_arr = np.array([p for p, _ in frames])
        idx = nearest_frame_indices(times, pts_arr)
        small = {i: resize_short_side(frames[i][1], prep.short_side) for i in set(idx.tolist())}
        x = preprocess_clip(
            np.stack([small[i] for i in idx.tolist()]),
            short_side=prep.short_side,
            mean=prep.mean,
            std=prep.std,
            pixel_scale=prep.pixel_scale,
        )  # (3, T, H', W')
        slow, fast = (a[None] for a in pack_pathways(x, prep.alpha))
        key = frames[int(nearest_frame_indices([t], pts_arr)[0])][1]
        yield n, t, slow, fast, key


def clip_boxes(boxes: np.ndarray, key: np.ndarray, fast: np.ndarray) -> np.ndarray:
    """Frame-pixel ``boxes`` (N, 4) as the backbone's (N, 5) ROIs: batch index 0, then the box
    scaled to the clip's (H', W') of ``fast`` (1, 3, T, H', W')."""
    h, w = key.shape[:2]
    ch, cw = fast.shape[3], fast.shape[4]
    scale = np.array([cw / w, ch / h, cw / w, ch / h], np.float32)
    return np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes * scale], 1).astype(
        np.float32
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server the bench starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trickle(sock: socket.socket, piece: bytes, every_s: float, limit_s: float) -> float:
    """Send ``piece`` every ``every_s`` until the server answers or closes (or ``limit_s``);
    returns how long the connection was held. Leaves ``sock`` open with a 5 s timeout, to read
    the answer."""
    t0 = time.monotonic()
    sock.settimeout(every_s)
    while time.monotonic() - t0 < limit_s:
        try:
            sock.sendall(piece)
            sock.recv(1, socket.MSG_PEEK)
            break  # the server answered (or closed: b"")
        except TimeoutError:
            continue
        except OSError:
            break
    held = time.monotonic() - t0
    sock.settimeout(5)
    return held


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server a bench started and wait for its graceful shutdown; kill it (and say
    so) if it takes more than 40 s."""
    server.terminate()
    try:
        server.wait(timeout=40)
    except subprocess.TimeoutExpired:
        server.kill()
        print("server ignored SIGTERM for 40 s: killed", file=sys.stderr)

"""pts bombs against a real `avaserve serve` (issue 16 acceptance; printed, not a timed test).

    python bench/bench_pts_bomb.py [--bundle DIR] [--video PATH] [--jump 300]

Starts `avaserve serve` as its own process on a free loopback port with one API key, opens a
live JPEG stream with that key and sends, over one connection::

    5 s of valid frames (5 fps)  ->  pts 1e308  ->  pts NaN  ->  5 s of frames shifted by --jump

It prints the server's resident memory (VmRSS of the server process, read from /proc) before
the first bomb and after the stream, each error the server sent, the annotation times, and
whether /healthz still answers. The issue's bar: RSS grows < 50 MB, and the stream gets a clear
error or goes on. Before the fix the 1e308 frame alone grew memory without bound (about
170 MB/s) and every later frame was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import free_port, stop_server  # noqa: E402
from service.decode.live import PTS_HEADER, frame_message  # noqa: E402
from service.serve_cli import encode_frame  # noqa: E402

DEFAULT_VIDEO = REPO.parent / "shared" / "assets" / "video" / "basketball_2people.mp4"
KEY = "bench-key-0123456789abcdef"
RSS_BAR_MB = 50.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _frames(video: Path, fps: float, seconds: float) -> list[tuple[float, bytes]]:
    from service.decode import decode_frames

    out: list[tuple[float, bytes]] = []
    next_pts = 0.0
    with decode_frames(video, short_side=240) as frames:
        for frame in frames:
            if frame.pts_seconds > seconds:
                break
            if frame.pts_seconds + 1e-6 >= next_pts:
                out.append((frame.pts_seconds, encode_frame(frame.image, frame.pts_seconds)))
                next_pts = frame.pts_seconds + 1.0 / fps
    return out


def _with_pts(payload: bytes, pts: float) -> bytes:
    return frame_message(pts, payload[PTS_HEADER.size :])


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return int(r.status)


async def _attack(
    port: int, pid: int, frames: list[tuple[float, bytes]], jump: float, fps: float
) -> dict[str, Any]:
    import websockets

    url = f"ws://127.0.0.1:{port}/v1/streams/bomb"
    headers = {"Authorization": f"Bearer {KEY}"}
    messages: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "input": "jpeg", "fps_hint": fps}))
        messages.append(json.loads(await ws.recv()))

        async def receive() -> None:
            async for raw in ws:
                messages.append(json.loads(raw))

        receiver = asyncio.create_task(receive())
        half = len(frames) // 2
        for _, payload in frames[:half]:
            await ws.send(payload)
            await asyncio.sleep(1.0 / fps)
        await asyncio.sleep(1.0)  # the first part's keyframes settle
        out["rss_before_mb"] = _rss_mb(pid)
        last = frames[half - 1][1]
        for bomb in (1e308, math.nan, math.inf):
            await ws.send(_with_pts(last, bomb))
        await asyncio.sleep(2.0)  # before the fix the server was busy on 1e308 by now
        out["rss_after_bombs_mb"] = _rss_mb(pid)
        for pts, payload in frames[half:]:
            await ws.send(_with_pts(payload, pts + jump))
            await asyncio.sleep(1.0 / fps)
        await ws.send(json.dumps({"type": "end"}))
        try:
            await asyncio.wait_for(receiver, timeout=60)
        except TimeoutError:
            receiver.cancel()
            out["closed"] = "no close within 60 s"
        out.setdefault("closed", f"{ws.close_code} {ws.close_reason!r}")
    await asyncio.sleep(1.0)
    out["rss_after_mb"] = _rss_mb(pid)
    out["messages"] = messages
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--jump", type=float, default=300.0, help="forward pts jump, seconds")
    ap.add_argument("--fps", type=float, default=5.0)
    args = ap.parse_args()

    frames = _frames(args.video, args.fps, 10.0)
    port = free_port()
    env = {
        **os.environ,
        "AVASERVE_API_KEYS": KEY,
        "AVASERVE_LOG_LEVEL": "warning",
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-c", "from avaserve.cli import main; main()", "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--bundle", str(args.bundle)]
    server = subprocess.Popen(cmd, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _healthz(port) == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        rss_idle = _rss_mb(server.pid)
        res = asyncio.run(_attack(port, server.pid, frames, args.jump, args.fps))
        health = _healthz(port)
    finally:
        stop_server(server)

    messages = res.pop("messages")
    errors = [m for m in messages if m.get("type") == "error"]
    times = [m["time"] for m in messages if m.get("type") == "annotation"]
    growth = res["rss_after_mb"] - res["rss_before_mb"]
    print(f"bundle {args.bundle}, video {args.video.name}, {len(frames)} frames at {args.fps} fps")
    print(
        f"server RSS: idle {rss_idle:.1f} MB, before the bombs {res['rss_before_mb']:.1f} MB, "
        f"2 s after 1e308/NaN/inf {res['rss_after_bombs_mb']:.1f} MB, after the +{args.jump:g} s "
        f"jump and the rest of the stream {res['rss_after_mb']:.1f} MB"
    )
    print(f"growth from the bombs: {growth:+.1f} MB (bar < {RSS_BAR_MB:.0f} MB)")
    for e in errors:
        print(f"error {e['code']}: {e['message']}")
    print(f"annotation times: {times}")
    print(f"close: {res['closed']}; /healthz after: {health}")
    went_on = any(t > args.jump for t in times)
    ok = growth < RSS_BAR_MB and went_on and health == 200
    print(f"verdict: {'PASS' if ok else 'FAIL'} (stream went on after the jump: {went_on})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

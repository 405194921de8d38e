"""Soak: does the server's memory stay flat under steady mixed load? (issue 16 acceptance)

    python bench/bench_soak.py [--bundle bundles/demo] [--video PATH] [--minutes 5]

Starts its own redis-server (loopback, no persistence) and ``avaserve serve`` on the bundle
with Redis as bank and job store, then for ``--minutes``:

* two live WebSocket streams at real-time pace (the video looped, ``--fps`` frames a second,
  pts running on across loops; a stream the server closes is reopened under a new id);
* one REST job every ``--job-every`` seconds (the same video uploaded; jobs are left to the
  server's retention, as a client that never deletes would).

The server's resident memory (VmRSS of the ``avaserve serve`` process, and of its children:
the isolated decoders) is sampled every 2 s. After a ``--warmup`` (default 1 minute: model
arenas, caches and the bank's 61 s of context fill up), the least-squares slope of the
server's RSS is printed in MB/min with the verdict against ``--limit`` (5 MB/min). Also
printed: annotations received, reconnects, jobs done/failed. Results go to
bench/results/soak.json. Not a test (it takes the whole duration); on a shared machine other
load moves the figure, so say so when quoting it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "service"))

from redis_server import RedisServer, free_port  # noqa: E402

from service.decode.live import PTS_HEADER, frame_message  # noqa: E402
from service.serve_cli import encode_frame  # noqa: E402

RESULTS = REPO / "bench" / "results"
KEY = "soak-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
_VIDEO_CANDIDATES = (
    REPO.parent / "shared" / "assets" / "video" / "basketball_2people.mp4",
    Path("/work/shared/assets/video/basketball_2people.mp4"),
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_rss_mb(pid: int) -> float:
    total = 0.0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    for kid in kids:
        try:
            total += rss_mb(int(kid)) + children_rss_mb(int(kid))
        except (OSError, ValueError):
            continue
    return total


def slope_mb_per_min(samples: list[tuple[float, float]], warmup_s: float) -> float:
    """Least-squares slope of (seconds, MB) after the warm-up, in MB per minute."""
    pts = [(t, m) for t, m in samples if t >= warmup_s]
    if len(pts) < 3:
        raise RuntimeError(f"only {len(pts)} samples after the warm-up; run longer")
    t = np.array([p[0] for p in pts]) / 60.0
    m = np.array([p[1] for p in pts])
    return float(np.polyfit(t, m, 1)[0])


def frames(video: Path, fps: float, short_side: int) -> tuple[list[tuple[float, bytes]], float]:
    """(pts, JPEG bytes) at ``fps``, and the loop period (last pts + one frame interval)."""
    from service.decode import decode_frames

    out: list[tuple[float, bytes]] = []
    next_pts = 0.0
    with decode_frames(video, short_side=short_side) as decoded:
        for frame in decoded:
            if frame.pts_seconds + 1e-6 >= next_pts:
                # encode_frame prefixes the pts header; keep only the JPEG, re-stamped per loop.
                out.append((frame.pts_seconds, encode_frame(frame.image, 0.0)[PTS_HEADER.size :]))
                next_pts = frame.pts_seconds + 1.0 / fps
    return out, out[-1][0] + 1.0 / fps


async def live_stream(
    base: str, name: str, video: list[tuple[float, bytes]], period: float, fps: float,
    until: float, stats: dict[str, Any],
) -> None:  # fmt: skip
    import websockets

    attempt = 0
    start = time.monotonic()
    i = 0
    while time.monotonic() < until:
        attempt += 1
        url = f"{base.replace('http', 'ws')}/v1/streams/{name}-{attempt}"
        try:
            async with websockets.connect(url, additional_headers=AUTH, max_size=None) as ws:
                await ws.send(json.dumps({"type": "start", "input": "jpeg", "fps_hint": fps}))
                json.loads(await ws.recv())  # ready
                stream_start = time.monotonic()
                first_pts = i // len(video) * period + video[i % len(video)][0]

                async def receive(ws: Any = ws) -> None:
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg["type"] == "annotation":
                            stats["annotations"] += 1

                receiver = asyncio.create_task(receive())
                while time.monotonic() < until and not receiver.done():
                    loop_no, k = divmod(i, len(video))
                    pts = loop_no * period + video[k][0]
                    delay = stream_start + (pts - first_pts) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await ws.send(frame_message(pts, video[k][1]))
                    stats["frames"] += 1
                    i += 1
                if not receiver.done():
                    await ws.send(json.dumps({"type": "end"}))
                    await asyncio.wait_for(receiver, timeout=60)
        except Exception as exc:  # noqa: BLE001 - a closed stream is reopened; counted
            stats["reconnects"] += 1
            stats["last_close"] = repr(exc)[:200]
            await asyncio.sleep(1.0)
    stats["seconds"] = time.monotonic() - start


async def jobs(
    base: str, video: bytes, every_s: float, until: float, stats: dict[str, Any]
) -> None:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as client:
        next_at = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += every_s
            r = await client.post("/v1/jobs", content=video, params={"name": "soak.mp4"})
            if r.status_code == 202:
                ids.append(r.json()["id"])
            else:
                stats["refused"].append(r.status_code)
        deadline = time.monotonic() + 120
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {j: (await client.get(f"/v1/jobs/{j}")).json()["state"] for j in ids}
            if all(s in ("done", "failed", "cancelled") for s in states.values()):
                break
            await asyncio.sleep(1.0)
    stats["submitted"] = len(ids)
    for s in states.values():
        stats[s] = stats.get(s, 0) + 1


async def sample(pid: int, until: float, out: list[tuple[float, float, float]]) -> None:
    t0 = time.monotonic()
    while time.monotonic() < until:
        out.append((time.monotonic() - t0, rss_mb(pid), children_rss_mb(pid)))
        await asyncio.sleep(2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo")
    ap.add_argument("--video", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the slope")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--short-side", type=int, default=360)
    ap.add_argument("--job-every", type=float, default=20.0)
    ap.add_argument("--limit", type=float, default=5.0, help="MB/min")
    args = ap.parse_args()
    video = args.video or next((p for p in _VIDEO_CANDIDATES if p.is_file()), None)
    if video is None:
        sys.exit("no --video given and the default asset is missing")

    tmp = Path(tempfile.mkdtemp(prefix="avaserve-soak-"))
    redis = RedisServer(tmp)
    redis.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AVASERVE_API_KEYS": KEY,
        "AVASERVE_REDIS_URL": redis.url,
        "AVASERVE_UPLOAD_DIR": str(tmp / "uploads"),
        "AVASERVE_LOG_LEVEL": "warning",
    }
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "avaserve.cli", "serve", "--bundle", str(args.bundle),
             "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        clip, period = frames(video, args.fps, args.short_side)
        upload = video.read_bytes()
        print(
            f"soak: {args.minutes:g} min, 2 live streams at {args.fps:g} fps (real time, "
            f"{video.name} looped every {period:.1f} s) + a job every {args.job_every:g} s; "
            f"server pid {server.pid}, bundle {args.bundle}",
            flush=True,
        )
        streams = [
            {"annotations": 0, "frames": 0, "reconnects": 0} for _ in range(2)
        ]  # fmt: skip
        job_stats: dict[str, Any] = {"refused": []}
        samples: list[tuple[float, float, float]] = []

        async def run() -> None:
            until = time.monotonic() + args.minutes * 60
            await asyncio.gather(
                sample(server.pid, until, samples),
                *(
                    live_stream(base, f"soak{n}", clip, period, args.fps, until, streams[n])
                    for n in range(2)
                ),
                jobs(base, upload, args.job_every, until, job_stats),
            )

        asyncio.run(run())
        main_rss = [(t, m) for t, m, _ in samples]
        with_kids = [(t, m + c) for t, m, c in samples]
        slope = slope_mb_per_min(main_rss, args.warmup)
        slope_all = slope_mb_per_min(with_kids, args.warmup)
        verdict = "PASS" if slope < args.limit else "FAIL"
        after = [m for t, m in main_rss if t >= args.warmup]
        result = {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "minutes": args.minutes,
            "warmup_s": args.warmup,
            "fps": args.fps,
            "rss_mb_first": round(main_rss[0][1], 1),
            "rss_mb_after_warmup": round(after[0], 1),
            "rss_mb_last": round(main_rss[-1][1], 1),
            "rss_mb_max": round(max(m for _, m in main_rss), 1),
            "slope_mb_per_min": round(slope, 3),
            "slope_with_children_mb_per_min": round(slope_all, 3),
            "limit_mb_per_min": args.limit,
            "verdict": verdict,
            "streams": streams,
            "jobs": job_stats,
            "samples": [[round(t, 1), round(m, 1), round(c, 1)] for t, m, c in samples],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(result, indent=1))
        print(
            f"server RSS: {result['rss_mb_first']} MB at start, {result['rss_mb_after_warmup']} "
            f"MB after the warm-up, {result['rss_mb_last']} MB at the end (max "
            f"{result['rss_mb_max']})"
        )
        for n, s in enumerate(streams):
            print(
                f"stream {n}: {s['frames']} frames sent, {s['annotations']} annotations, "
                f"{s['reconnects']} reconnects{' (' + s['last_close'] + ')' if 'last_close' in s else ''}"  # noqa: E501
            )
        print(
            f"jobs: {job_stats.get('submitted', 0)} submitted, {job_stats.get('done', 0)} done, "
            f"{job_stats.get('failed', 0)} failed, refused {job_stats['refused']}"
        )
        print(
            f"RSS slope after {args.warmup:g} s: {slope:+.2f} MB/min (server process; with its "
            f"child decoders {slope_all:+.2f}); limit {args.limit:g} MB/min -> {verdict}"
        )
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        redis.stop()


if __name__ == "__main__":
    main()

"""Graceful SIGTERM on a real server process.

SIGTERM during a job: /readyz answers 503 at once (the socket stays open while draining), the
running job either finishes within the grace period or is re-queued, live streams are closed
with 1001, and the process exits 0. With Redis the re-queued job survives the restart and a
new process finishes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import app_support as support
import httpx
import pytest

KEY_A = support.KEY_A
A = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    return support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)


def _submit_and_wait_running(server: Any, video: Path) -> str:
    response = httpx.post(
        server.url + "/v1/jobs", headers=A, content=video.read_bytes(), timeout=60
    )
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A).json()["state"] == "running":
            return job_id
        time.sleep(0.05)
    raise AssertionError("job never started")


def test_sigterm_finishes_running_job_then_exits_0(
    bundle: Path, tmp_path: Path, assets: Path
) -> None:
    video = assets / "video" / "basketball_2people.mp4"
    server = support.Server(
        bundle, tmp_path, AVASERVE_API_KEYS=KEY_A, AVASERVE_GRACE_PERIOD_S="30"
    ).start()
    try:
        job_id = _submit_and_wait_running(server, video)

        async def live_stream_closed_with_1001() -> int:
            import websockets

            url = server.url.replace("http", "ws") + "/v1/streams/drain"
            async with websockets.connect(url, additional_headers=A) as ws:
                await ws.send(json.dumps({"type": "start", "input": "jpeg"}))
                await ws.recv()  # ready
                t0 = time.monotonic()
                server.signal()
                # Readiness flips before anything else, and the port still answers.
                ready = await asyncio.to_thread(httpx.get, server.url + "/readyz")
                assert ready.status_code == 503, ready.text
                assert time.monotonic() - t0 < 2.0
                refused = await asyncio.to_thread(
                    httpx.post, server.url + "/v1/jobs", headers=A, content=b"x"
                )
                assert refused.status_code == 503
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None
                    return int(closed.rcvd.code)

        assert asyncio.run(live_stream_closed_with_1001()) == 1001
        # The running job keeps going during the drain and finishes.
        states = []
        while server.proc.poll() is None:
            try:
                states.append(
                    httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A, timeout=2).json()[
                        "state"
                    ]
                )
            except httpx.HTTPError:
                break  # the drain finished and the socket closed
            time.sleep(0.2)
        assert server.proc.wait(timeout=45) == 0
        log = server.log()
        assert "1 finished in grace, 0 re-queued" in log, log[-3000:]
        # Until the socket closed the job was still served, running or done, never re-queued.
        assert set(states) <= {"running", "done"}
    finally:
        server.stop()


def test_sigterm_requeues_into_redis_and_restart_finishes_it(
    bundle: Path, tmp_path: Path, assets: Path, redis_server: Any
) -> None:
    pedestrians = assets / "video" / "pedestrians_vtest.avi"  # ~80 s of video: still running
    env = {
        "AVASERVE_API_KEYS": KEY_A,
        "AVASERVE_GRACE_PERIOD_S": "0.5",
        "AVASERVE_REDIS_URL": redis_server.url,
    }
    first = support.Server(bundle, tmp_path, **env).start()
    try:
        job_id = _submit_and_wait_running(first, pedestrians)
        t0 = time.monotonic()
        first.signal()
        assert httpx.get(first.url + "/readyz").status_code == 503
        assert first.proc.wait(timeout=30) == 0
        print(f"drain + exit took {time.monotonic() - t0:.1f} s")
        assert "0 finished in grace, 1 re-queued" in first.log(), first.log()[-3000:]
    finally:
        first.stop()
    # A new process (same Redis, same upload dir) picks the job up again and finishes it.
    second = support.Server(bundle, tmp_path, **env)
    second.env["AVASERVE_UPLOAD_DIR"] = first.env["AVASERVE_UPLOAD_DIR"]
    second.start()
    try:
        deadline = time.monotonic() + 240
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = httpx.get(f"{second.url}/v1/jobs/{job_id}", headers=A).json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.5)
        assert job["state"] == "done", job
    finally:
        assert second.stop() == 0

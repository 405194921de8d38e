"""Fault suite (issue 16): real `avaserve serve` processes and a private redis-server.

* Redis SIGSTOPped for 15 s across a job's finish: the job still ends `done`, later jobs run,
  and throughout /readyz and /metrics say what is true (503 and ready 0 while Redis is stopped;
  the job API answers 503 + Retry-After within a second instead of hanging).
* Redis killed, then restarted empty: 503 + Retry-After within a second while it is down; after
  the restart a lost job's id answers 404 saying the store lost its data.
* Two replicas sharing Redis and the upload folder, the one running a job SIGKILLed: the other
  re-queues it once the heartbeat expires and finishes it.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import app_support as support
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

KEY_A = support.KEY_A
A = {"Authorization": f"Bearer {KEY_A}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    return support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)


@pytest.fixture
def video(assets: Path) -> bytes:
    return (assets / "video" / "basketball_2people.mp4").read_bytes()


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    return {"AVASERVE_API_KEYS": KEY_A, "AVASERVE_REDIS_URL": redis_url, **extra}


def _until(what: Callable[[], Any], timeout_s: float, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step_s)
    raise AssertionError(f"not reached in {timeout_s} s")


def _submit(server: Any, video: bytes) -> str:
    r = httpx.post(server.url + "/v1/jobs", headers=A, content=video, timeout=30)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _state(server: Any, job_id: str) -> str | None:
    try:
        r = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A, timeout=5)
    except httpx.HTTPError:
        return None
    return str(r.json()["state"]) if r.status_code == 200 else None


def _metrics(server: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(server.url + "/metrics", timeout=5)
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _timed(fn: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = fn()
    return r, time.monotonic() - t0


def _assert_fast_503(r: httpx.Response, took: float) -> None:
    assert r.status_code == 503, r.text
    assert took < 1.0, f"took {took:.2f} s"
    assert r.headers["retry-after"].isdigit()
    body = r.json()
    assert body["error"] == "unavailable" and "job store (Redis)" in body["message"]


@pytest.fixture
def server(bundle: Path, tmp_path: Path, redis_server: Any) -> Iterator[Any]:
    s = support.Server(bundle, tmp_path, **_env(redis_server.url)).start()
    try:
        yield s
    finally:
        redis_server.resume()
        s.stop()


def test_redis_sigstop_15s_across_a_jobs_finish(
    server: Any, redis_server: Any, video: bytes
) -> None:
    job_id = _submit(server, video)
    _until(lambda: _state(server, job_id) == "running", 30, 0.05)
    redis_server.pause()
    paused_at = time.monotonic()
    try:
        # Throughout the stall: the job API answers 503 at once, readiness and the ready
        # gauge say "not ready", the process itself stays alive.
        r, took = _timed(lambda: httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A))
        _assert_fast_503(r, took)
        r, took = _timed(lambda: httpx.get(f"{server.url}/v1/jobs", headers=A))
        _assert_fast_503(r, took)
        ready = httpx.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False
        assert _metrics(server)[("avaserve_ready", ())] == 0
        assert httpx.get(server.url + "/healthz").status_code == 200
        time.sleep(max(0.0, 15.0 - (time.monotonic() - paused_at)))
    finally:
        redis_server.resume()
    assert _until(lambda: _state(server, job_id) in ("done", "failed"), 40) is True
    assert _state(server, job_id) == "done"
    log = server.log()
    # The stall really covered the finish (otherwise this test proved nothing).
    assert re.search(rf"job {job_id}: job store unavailable while recording it as done", log), log[
        -4000:
    ]
    # Later jobs run on the same worker; health and metrics are back to the truth.
    later = _submit(server, video)
    _until(lambda: _state(server, later) == "done", 60)
    assert httpx.get(server.url + "/readyz").status_code == 200
    m = _metrics(server)
    assert m[("avaserve_ready", ())] == 1
    assert m[("avaserve_job_workers", (("health", "healthy"),))] == 1
    assert m[("avaserve_job_workers", (("health", "dead"),))] == 0
    assert m[("avaserve_job_runner_errors_total", (("step", "finish"),))] >= 1


def test_redis_down_then_restarted_empty(server: Any, redis_server: Any, video: bytes) -> None:
    job_id = _submit(server, video)
    _until(lambda: _state(server, job_id) == "done", 60)
    redis_server.kill()
    for call in (
        lambda: httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A),
        lambda: httpx.get(f"{server.url}/v1/jobs", headers=A),
        lambda: httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=A),
    ):
        _assert_fast_503(*_timed(call))
    r, _ = _timed(lambda: httpx.post(f"{server.url}/v1/jobs", headers=A, content=video))
    assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
    assert httpx.get(server.url + "/readyz").status_code == 503
    redis_server.start()  # back, empty (no persistence)
    r = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A)
    assert r.status_code == 404
    assert (
        "lost its data" in r.json()["message"] and "submit the video again" in r.json()["message"]
    )
    # The runner notices too (housekeeping), and the service works again.
    _until(lambda: _metrics(server)[("avaserve_job_store_resets_total", ())] == 1, 20, 0.5)
    again = _submit(server, video)
    _until(lambda: _state(server, again) == "done", 60)
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_two_replicas_one_sigkilled_mid_job(
    bundle: Path, tmp_path: Path, redis_server: Any, assets: Path
) -> None:
    env = _env(redis_server.url, AVASERVE_JOB_HEARTBEAT_TTL_S="3")
    a = support.Server(bundle, tmp_path, **env)
    b = support.Server(bundle, tmp_path, **env)
    b.env["AVASERVE_UPLOAD_DIR"] = a.env["AVASERVE_UPLOAD_DIR"]  # shared storage
    a.start()
    b.start()
    try:
        long_video = (assets / "video" / "pedestrians_vtest.avi").read_bytes()  # ~80 s
        job_id = _submit(a, long_video)
        started = f"job {job_id} started"
        runner = _until(lambda: next((s for s in (a, b) if started in s.log()), None), 60, 0.05)
        other = b if runner is a else a
        assert runner.proc is not None
        runner.proc.send_signal(signal.SIGKILL)
        runner.proc.wait(timeout=10)
        # The survivor re-queues it after the heartbeat TTL and runs it to the end.
        _until(lambda: started in other.log(), 30, 0.2)
        assert _until(lambda: _state(other, job_id) in ("done", "failed"), 300, 1.0)
        r = httpx.get(f"{other.url}/v1/jobs/{job_id}", headers=A).json()
        assert r["state"] == "done", r
        results = httpx.get(f"{other.url}/v1/jobs/{job_id}/results", headers=A, timeout=30)
        assert results.status_code == 200 and len(results.json()) > 0
    finally:
        a.stop()
        b.stop()

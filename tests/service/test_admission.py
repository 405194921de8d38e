"""Concurrency limits: 429 per key, 503 global, Retry-After, slots released on every exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.admission import ConcurrencyLimiter, LimitExceeded, admit_job
from service.jobs import InMemoryJobStore, Job


@pytest.mark.parametrize(
    ("holders", "caller", "status"),
    [
        (["a"], "a", None),  # a second slot for a is still within per_key=2
        (["a", "a"], "a", 429),  # a is at its own cap: its fault -> 429
        (["a", "a", "b"], "c", 503),  # nobody's fault: the process is full -> 503
        (["a", "a", "b"], "a", 429),  # both caps reached: per key wins (the caller can fix that)
    ],
)
def test_limits_table(holders: list[str], caller: str, status: int | None) -> None:
    lim = ConcurrencyLimiter("streams", per_key=2, global_limit=3, retry_after_s=7)
    for h in holders:
        lim.acquire(h)
    if status is None:
        lim.acquire(caller)
        assert lim.active(caller) == holders.count(caller) + 1
        return
    with pytest.raises(LimitExceeded) as info:
        lim.acquire(caller)
    exc = info.value
    assert exc.status_code == status
    assert exc.headers == {"Retry-After": "7"}
    assert exc.ws_close_code == 1013
    assert "streams" in exc.detail
    assert lim.active() == len(holders)  # a refusal takes nothing


@pytest.mark.asyncio
async def test_slot_released_on_error_and_cancellation() -> None:
    lim = ConcurrencyLimiter("streams", per_key=1, global_limit=1)
    with pytest.raises(RuntimeError):
        async with lim.slot("a"):
            raise RuntimeError("handler crashed")
    assert lim.active() == 0

    entered = asyncio.Event()

    async def hold() -> None:
        async with lim.slot("a"):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(hold())
    await entered.wait()
    assert lim.active("a") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.active() == 0


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        ConcurrencyLimiter("x", per_key=1, global_limit=1).release("a")
    with pytest.raises(ValueError):
        ConcurrencyLimiter("x", per_key=0, global_limit=1)


def test_http_answers_with_retry_after() -> None:
    lim = ConcurrencyLimiter("streams", per_key=1, global_limit=1, retry_after_s=3)
    app = FastAPI()

    @app.post("/hold/{key}")
    async def hold(key: str) -> dict[str, int]:
        lim.acquire(key)  # held until released by the test
        return {"active": lim.active()}

    with TestClient(app) as c:
        assert c.post("/hold/a").status_code == 200
        r = c.post("/hold/a")
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        r = c.post("/hold/b")
        assert r.status_code == 503 and r.headers["retry-after"] == "3"


@pytest.mark.asyncio
async def test_admit_job_maps_quota_to_http(tmp_path: Path) -> None:
    store = InMemoryJobStore()

    def job(owner: str) -> Job:
        return Job.new(owner=owner, upload_dir=tmp_path)

    await admit_job(store, job("a"), max_per_key=1, max_global=2, retry_after_s=9)
    with pytest.raises(LimitExceeded) as info:
        await admit_job(store, job("a"), max_per_key=1, max_global=2, retry_after_s=9)
    assert info.value.status_code == 429 and info.value.headers == {"Retry-After": "9"}
    await admit_job(store, job("b"), max_per_key=1, max_global=2, retry_after_s=9)
    with pytest.raises(LimitExceeded) as info:
        await admit_job(store, job("c"), max_per_key=1, max_global=2, retry_after_s=9)
    assert info.value.status_code == 503

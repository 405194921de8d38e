"""Job stores (in-process and real Redis) and the worker pool: nothing is silently lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from service.errors import VideoInputError
from service.jobs import (
    InMemoryJobStore,
    Job,
    JobError,
    JobOptions,
    JobQuotaExceeded,
    JobRunner,
    JobStore,
    ProgressFn,
    RedisJobStore,
    is_job_id,
)

pytestmark = pytest.mark.asyncio


def make_job(tmp_path: Path, owner: str = "k_owner_a", **kw: Any) -> Job:
    job = Job.new(owner=owner, upload_dir=tmp_path / "uploads", options=JobOptions(**kw))
    Path(job.work_dir).mkdir(parents=True)
    Path(job.input_path).write_bytes(b"video")
    return job


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def state_of(store: JobStore, job_id: str) -> str | None:
    job = await store.get(job_id)
    return None if job is None else job.state


@pytest_asyncio.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "memory":
        s: JobStore = InMemoryJobStore()
    else:
        server = request.getfixturevalue("redis_server")
        s = RedisJobStore(server.url)
    yield s
    await s.close()


async def quick(job: Job, progress: ProgressFn) -> Mapping[str, str]:
    progress(0.5)
    out = Path(job.work_dir) / "result.json"
    out.write_text("[]")
    return {"json": str(out)}


_RUNNERS: list[JobRunner] = []


@pytest_asyncio.fixture(autouse=True)
async def _drain_runners() -> AsyncIterator[None]:
    """A failed assertion must not leave workers running into the loop's teardown."""
    yield
    while _RUNNERS:
        runner = _RUNNERS.pop()
        if runner.accepting:
            with contextlib.suppress(Exception):  # the store may be closed already
                await runner.drain(0.1)


def runner_for(store: JobStore, process: Any, tmp_path: Path, **kw: Any) -> JobRunner:
    kw = {
        "progress_interval_s": 0.05,
        "claim_timeout_s": 0.1,
        "heartbeat_ttl_s": 3.0,
        "files_root": tmp_path / "uploads",
        **kw,
    }
    runner = JobRunner(store, process, **kw)
    _RUNNERS.append(runner)
    return runner


# ------------------------------------------------------------------ store contract (both)


async def test_ids_are_unguessable_and_shaped(tmp_path: Path) -> None:
    ids = {Job.new(owner="k", upload_dir=tmp_path).id for _ in range(200)}
    assert len(ids) == 200 and all(is_job_id(i) for i in ids)
    assert not is_job_id("../../etc/passwd") and not is_job_id("j_short")


async def test_owner_isolation(store: JobStore, tmp_path: Path) -> None:
    a = make_job(tmp_path, owner="k_a")
    b = make_job(tmp_path, owner="k_b")
    await store.submit(a)
    await store.submit(b)
    assert (await store.get(a.id, owner="k_a")) is not None
    assert await store.get(a.id, owner="k_b") is None  # as if it did not exist
    assert [j.id for j in await store.list_jobs("k_a")] == [a.id]
    assert [j.id for j in await store.list_jobs("k_b")] == [b.id]
    assert await store.cancel(a.id, owner="k_b") is None
    assert await store.delete(a.id, owner="k_b") is None
    assert await state_of(store, a.id) == "queued"
    assert await store.cancel(a.id, owner="k_a") == "queued"
    assert await state_of(store, a.id) == "cancelled"
    assert (await store.delete(a.id, owner="k_a")) is not None
    assert await store.get(a.id) is None


async def test_fifo_claim_progress_finish(store: JobStore, tmp_path: Path) -> None:
    jobs = [make_job(tmp_path) for _ in range(3)]
    for j in jobs:
        await store.submit(j)
    first = await store.claim("w1", 0.5)
    assert first is not None and first.id == jobs[0].id
    assert first.state == "running" and first.attempts == 1
    assert await store.set_progress(first.id, 0.25) == "running"
    assert (await store.get(first.id)).progress == pytest.approx(0.25)  # type: ignore[union-attr]
    assert await store.finish(first.id, "w1", "done", results={"json": "/x"})
    done = await store.get(first.id)
    assert done is not None and done.state == "done" and done.progress == 1.0
    assert done.results == {"json": "/x"}
    # a cancelled queued job is skipped by claim
    await store.cancel(jobs[1].id, owner=None)
    nxt = await store.claim("w1", 0.5)
    assert nxt is not None and nxt.id == jobs[2].id
    assert await store.claim("w1", 0.1) is None
    counts = await store.counts()
    assert counts == {"queued": 0, "running": 1, "done": 1, "failed": 0, "cancelled": 1}


@pytest.mark.parametrize(
    ("per_owner", "total", "error_scope"),
    [(2, 10, "key"), (10, 3, "global"), (None, None, None)],
)
async def test_quota_is_checked_on_submit(
    store: JobStore, tmp_path: Path, per_owner: int | None, total: int | None, error_scope: str
) -> None:
    await store.submit(make_job(tmp_path, owner="k_a"))
    await store.submit(make_job(tmp_path, owner="k_a"))
    await store.submit(make_job(tmp_path, owner="k_b"))
    extra = make_job(tmp_path, owner="k_a")
    if error_scope is None:
        await store.submit(extra, max_active_per_owner=per_owner, max_active_total=total)
        return
    with pytest.raises(JobQuotaExceeded) as info:
        await store.submit(extra, max_active_per_owner=per_owner, max_active_total=total)
    assert info.value.scope == error_scope
    assert await store.get(extra.id) is None
    # finished jobs free their slot
    claimed = await store.claim("w", 0.5)
    assert claimed is not None
    await store.finish(claimed.id, "w", "failed", error="x")
    await store.submit(extra, max_active_per_owner=per_owner, max_active_total=total)


async def test_runner_runs_jobs_and_reports_failures(store: JobStore, tmp_path: Path) -> None:
    async def process(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        if job.options.render:  # used here as "make this one fail"
            raise VideoInputError("corrupt", "The video data is damaged; re-encode it.")
        if job.input_path.endswith("boom"):
            raise RuntimeError("secret internal detail /srv/x")
        return await quick(job, progress)

    ok, bad = make_job(tmp_path), make_job(tmp_path, render=True)
    boom = Job.new(owner="k_a", upload_dir=tmp_path / "uploads", input_name="boom")
    Path(boom.work_dir).mkdir(parents=True)
    Path(boom.input_path).write_bytes(b"x")
    runner = runner_for(store, process, tmp_path, workers=2)
    await runner.start()
    for j in (ok, bad, boom):
        await store.submit(j)
    for j in (ok, bad, boom):
        await wait_for(lambda j=j: _finished(store, j.id))
    got = {j.id: await store.get(j.id) for j in (ok, bad, boom)}
    assert got[ok.id].state == "done" and "json" in got[ok.id].results  # type: ignore[union-attr]
    assert got[bad.id].error == "The video data is damaged; re-encode it."  # type: ignore[union-attr]
    assert "secret" not in got[boom.id].error and boom.id in got[boom.id].error  # type: ignore[union-attr,operator]
    # delete removes the record and the files
    assert await runner.delete(ok.id, owner=ok.owner)
    assert not Path(ok.work_dir).exists()
    await runner.drain(1.0)


async def _finished(store: JobStore, job_id: str) -> bool:
    job = await store.get(job_id)
    return job is not None and job.finished


async def test_cancel_running_job(store: JobStore, tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        started.set()
        await asyncio.sleep(30)
        return {}

    runner = runner_for(store, slow, tmp_path)
    await runner.start()
    job = make_job(tmp_path)
    await store.submit(job)
    await asyncio.wait_for(started.wait(), 5)
    assert await runner.cancel(job.id, owner="k_owner_a") == "running"
    await wait_for(lambda: _gone_from_runner(runner, job.id))
    assert await state_of(store, job.id) == "cancelled"
    await runner.drain(1.0)


async def _gone_from_runner(runner: JobRunner, job_id: str) -> bool:
    return job_id not in runner.running_jobs


async def test_retention_deletes_old_jobs_and_files(store: JobStore, tmp_path: Path) -> None:
    runner = runner_for(store, quick, tmp_path, retention_s=0.0, heartbeat_ttl_s=0.3)
    await runner.start()
    job = make_job(tmp_path)
    await store.submit(job)
    await wait_for(lambda: _deleted(store, job.id))
    assert not Path(job.work_dir).exists()
    await runner.drain(1.0)


async def _deleted(store: JobStore, job_id: str) -> bool:
    return await store.get(job_id) is None


# ------------------------------------------------------------------ drain


async def test_drain_finishes_quick_jobs_and_requeues_slow_ones(
    store: JobStore, tmp_path: Path
) -> None:
    release_fast = asyncio.Event()
    started: set[str] = set()

    async def process(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        started.add(job.id)
        if job.options.render:  # the slow one
            await asyncio.sleep(30)
        await release_fast.wait()
        return {"json": "r"}

    fast, slow, waiting = make_job(tmp_path), make_job(tmp_path, render=True), make_job(tmp_path)
    runner = runner_for(store, process, tmp_path, workers=2)
    await store.submit(fast)
    await store.submit(slow)
    await runner.start()
    await wait_for(lambda: _started(started, 2))
    await store.submit(waiting)  # queued behind: must stay queued through the drain
    drain = asyncio.create_task(runner.drain(0.5))
    await asyncio.sleep(0.1)
    assert not runner.accepting
    release_fast.set()
    report = await drain
    assert report.finished == [fast.id]
    assert report.requeued == [slow.id]
    assert await state_of(store, fast.id) == "done"
    again = await store.get(slow.id)
    assert again is not None and again.state == "queued"
    assert again.attempts == 0  # a drain does not charge an attempt
    assert await state_of(store, waiting.id) == "queued"
    # The interrupted job is first in line for the next runner.
    nxt = await store.claim("next", 0.5)
    assert nxt is not None and nxt.id == slow.id


async def _started(started: set[str], n: int) -> bool:
    return len(started) >= n


# ------------------------------------------------------------------ Redis: restarts and crashes


async def test_queued_job_survives_restart(redis_server: Any, tmp_path: Path) -> None:
    first = RedisJobStore(redis_server.url)
    job = make_job(tmp_path)
    await first.submit(job)
    await first.close()  # the process that accepted the upload goes away

    store = RedisJobStore(redis_server.url)
    runner = runner_for(store, quick, tmp_path)
    await runner.start()
    await wait_for(lambda: _finished(store, job.id))
    assert await state_of(store, job.id) == "done"
    await runner.drain(1.0)
    await store.close()


@pytest.mark.parametrize(("max_attempts", "final"), [(2, "done"), (1, "failed")])
async def test_running_job_of_crashed_worker_is_retried_or_failed(
    redis_server: Any, tmp_path: Path, max_attempts: int, final: str
) -> None:
    # Worker "dead" claims a job and dies mid-run: no finish, no requeue, heartbeat expires.
    dead = RedisJobStore(redis_server.url)
    await dead.heartbeat("dead", ttl_s=0.2)
    job = make_job(tmp_path)
    await dead.submit(job)
    claimed = await dead.claim("dead", 1.0)
    assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
    await dead.close()
    await asyncio.sleep(0.3)

    store = RedisJobStore(redis_server.url)
    runner = runner_for(store, quick, tmp_path, max_attempts=max_attempts)
    report = await runner.start()
    assert (report.requeued, report.failed) == (
        ([job.id], []) if final == "done" else ([], [job.id])
    )
    await wait_for(lambda: _finished(store, job.id))
    after = await store.get(job.id)
    assert after is not None and after.state == final
    if final == "failed":
        assert after.error is not None and "stopped unexpectedly" in after.error
    else:
        assert after.attempts == 2
    await runner.drain(1.0)
    await store.close()


async def test_live_worker_jobs_are_not_stolen(redis_server: Any, tmp_path: Path) -> None:
    alive = RedisJobStore(redis_server.url)
    await alive.heartbeat("alive", ttl_s=30)
    job = make_job(tmp_path)
    await alive.submit(job)
    assert await alive.claim("alive", 1.0) is not None
    other = RedisJobStore(redis_server.url)
    report = await other.recover("other", max_attempts=3)
    assert report.requeued == [] and report.failed == []
    assert await state_of(other, job.id) == "running"
    await alive.close()
    await other.close()


async def test_two_replicas_recovering_at_once_requeue_once(
    redis_server: Any, tmp_path: Path
) -> None:
    dead = RedisJobStore(redis_server.url)
    await dead.heartbeat("dead", ttl_s=0.1)
    job = make_job(tmp_path)
    await dead.submit(job)
    await dead.claim("dead", 1.0)
    await asyncio.sleep(0.2)
    a, b = RedisJobStore(redis_server.url), RedisJobStore(redis_server.url)
    ra, rb = await asyncio.gather(a.recover("a", max_attempts=3), b.recover("b", max_attempts=3))
    assert sorted(ra.requeued + rb.requeued) == [job.id]
    claimed = await a.claim("a", 0.5)
    assert claimed is not None and claimed.id == job.id
    assert await a.claim("a", 0.1) is None  # not queued twice
    for s in (dead, a, b):
        await s.close()


async def test_delete_on_another_replica_stops_the_run(redis_server: Any, tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        started.set()
        await asyncio.sleep(30)
        return {}

    store = RedisJobStore(redis_server.url)
    runner = runner_for(store, slow, tmp_path)
    await runner.start()
    job = make_job(tmp_path)
    await store.submit(job)
    await asyncio.wait_for(started.wait(), 5)
    elsewhere = RedisJobStore(redis_server.url)
    assert await elsewhere.delete(job.id, owner="k_owner_a") is not None
    await wait_for(lambda: _gone_from_runner(runner, job.id))
    assert not Path(job.work_dir).exists()  # the running replica cleaned up its files
    await runner.drain(1.0)
    await store.close()
    await elsewhere.close()


async def test_job_error_message_is_kept(tmp_path: Path) -> None:
    store = InMemoryJobStore()

    async def process(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        raise JobError("The bundle cannot render this resolution; ask without render.")

    runner = runner_for(store, process, tmp_path)
    await runner.start()
    job = make_job(tmp_path)
    await store.submit(job)
    await wait_for(lambda: _finished(store, job.id))
    got = await store.get(job.id)
    assert got is not None and got.error is not None and got.error.startswith("The bundle")
    await runner.drain(0.1)


async def test_missing_input_fails_with_a_message(tmp_path: Path) -> None:
    store = InMemoryJobStore()
    runner = runner_for(store, quick, tmp_path)
    await runner.start()
    job = Job.new(owner="k", upload_dir=tmp_path / "uploads")  # no file written
    await store.submit(job)
    await wait_for(lambda: _finished(store, job.id))
    got = await store.get(job.id)
    assert got is not None and got.state == "failed" and "shared storage" in (got.error or "")
    await runner.drain(0.1)


# ------------------------------------------------------------------ cancellation


class _CancelToErrorStore(InMemoryJobStore):
    """A store whose heartbeat turns a cancellation into an ordinary error, as a client
    library may when the cancel lands inside a network call."""

    def __init__(self) -> None:
        super().__init__()
        self.in_call = asyncio.Event()

    async def expired(self, finished_before: float, *, limit: int = 100) -> list[Job]:
        self.in_call.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("connection reset while reading the reply") from None


async def test_drain_returns_when_a_store_call_swallows_the_cancellation(tmp_path: Path) -> None:
    """Once seen in CI: housekeeping caught the converted cancel as a store error, retried
    forever, and drain() never returned. The loops now re-raise when their task is
    cancelling, and drain's wait for its tasks is bounded."""
    store = _CancelToErrorStore()
    runner = runner_for(store, quick, tmp_path, heartbeat_ttl_s=0.03)
    await runner.start()
    await asyncio.wait_for(store.in_call.wait(), 5.0)
    report = await asyncio.wait_for(runner.drain(0.1), 10.0)
    assert report.requeued == [] and report.finished == []
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("job-"))

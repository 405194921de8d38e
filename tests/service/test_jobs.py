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
    JobMeta,
    JobOptions,
    JobQuotaExceeded,
    JobRunner,
    JobStore,
    ProgressFn,
    RedisJobStore,
    is_job_id,
    read_meta,
    write_meta,
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


# ------------------------------------------------------------------ workers never die silently
# Issue 16 item 2: a store error while recording a finished job used to escape JobRunner._run
# into the worker loop, ending the worker without a log line: the job stayed `running` (kept
# alive by the process heartbeat) and every later job stayed `queued`.


class _FinishFailsStore(InMemoryJobStore):
    """``finish`` raises ``error`` for the first ``failures`` calls (a stalled Redis)."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.calls = 0

    async def finish(self, job_id: str, worker_id: str, state: Any, **kw: Any) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await super().finish(job_id, worker_id, state, **kw)


@pytest.mark.parametrize("error", ["timeout", "bug"])
async def test_finish_errors_are_retried_and_the_worker_goes_on(tmp_path: Path, error: str) -> None:
    import redis.exceptions

    exc: Exception = (
        redis.exceptions.TimeoutError("Timeout reading from socket")
        if error == "timeout"
        else RuntimeError("unexpected reply")
    )
    store = _FinishFailsStore(3, exc)
    # finish_retry_s=0.3 gives up after 2-3 attempts for the first job; housekeeping then
    # records it late. Either way both jobs end done and the worker lives.
    runner = runner_for(store, quick, tmp_path, finish_retry_s=0.3, heartbeat_ttl_s=0.3)
    await runner.start()
    first, second = make_job(tmp_path), make_job(tmp_path)
    await store.submit(first)
    await store.submit(second)
    for j in (first, second):
        await wait_for(lambda j=j: _finished(store, j.id))
        assert await state_of(store, j.id) == "done"
    assert runner.errors["finish"] == 3
    assert runner.worker_states() == {"healthy": 1, "stuck": 0, "dead": 0}
    await runner.drain(0.5)


async def test_redis_stall_across_finish_ends_the_job_and_later_jobs_run(
    redis_server: Any, tmp_path: Path
) -> None:
    """The real thing on a private redis-server: SIGSTOP as the job finishes, for 4 s (8 times
    the store's socket timeout); the job still ends done and the next job runs."""
    stalled = asyncio.Event()

    async def process(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        if not stalled.is_set():
            stalled.set()
            redis_server.pause()
            asyncio.get_running_loop().call_later(4.0, redis_server.resume)
        return await quick(job, progress)

    store = RedisJobStore(redis_server.url, socket_timeout_s=0.5, connect_timeout_s=0.5)
    runner = runner_for(store, process, tmp_path, heartbeat_ttl_s=30.0)
    try:
        await runner.start()
        first, second = make_job(tmp_path), make_job(tmp_path)
        await store.submit(first)
        await store.submit(second)
        await wait_for(lambda: _finished_when_reachable(store, second.id), timeout_s=20)
        for j in (first, second):
            got = await store.get(j.id)
            assert got is not None and got.state == "done", got
        assert runner.errors["finish"] >= 1  # the stall was really hit
        assert runner.workers_ok
        await runner.drain(0.5)
    finally:
        redis_server.resume()
        await store.close()


async def _finished_when_reachable(store: JobStore, job_id: str) -> bool:
    try:
        return await _finished(store, job_id)
    except Exception:  # noqa: BLE001 - the test's own reads fail while Redis is stopped
        return False


async def test_dead_worker_is_reported_then_replaced(tmp_path: Path) -> None:
    store = InMemoryJobStore()
    runner = runner_for(store, quick, tmp_path, heartbeat_ttl_s=0.6)
    await runner.start()
    assert runner.workers_ok
    runner._workers[0].cancel()  # a worker task ends (here: cancelled from outside)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert runner.worker_states()["dead"] == 1 and not runner.workers_ok
    await wait_for(lambda: _ok(runner), timeout_s=3)  # housekeeping started a new one
    assert runner.errors["worker"] == 1
    job = make_job(tmp_path)
    await store.submit(job)
    await wait_for(lambda: _finished(store, job.id))
    await runner.drain(0.5)


async def _ok(runner: JobRunner) -> bool:
    return runner.workers_ok


class _HangingClaimStore(InMemoryJobStore):
    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        await asyncio.sleep(3600)  # a client call that never returns
        return None


async def test_stuck_worker_is_reported(tmp_path: Path) -> None:
    runner = runner_for(_HangingClaimStore(), quick, tmp_path, stuck_after_s=0.2)
    runner.heartbeat_ttl_s = 0.3
    await runner.start()
    await asyncio.sleep(0.5)
    assert runner.worker_states()["stuck"] == 1 and not runner.workers_ok
    assert runner.errors["stuck"] >= 1
    await runner.drain(0.1)


async def test_job_held_by_no_worker_is_requeued_not_kept_alive(
    redis_server: Any, tmp_path: Path
) -> None:
    """A job in this process's processing list that no worker runs (its worker died, or its
    finish was lost) used to stay `running` forever behind the process's heartbeat."""
    store = RedisJobStore(redis_server.url)
    runner = runner_for(store, quick, tmp_path, heartbeat_ttl_s=0.3, max_attempts=2)
    lost = make_job(tmp_path)
    await store.submit(lost)
    # Claimed under the runner's own id, as by a worker that then vanished.
    assert await store.claim(runner.worker_id, 1.0) is not None
    await runner.start()
    await wait_for(lambda: _finished(store, lost.id), timeout_s=5)
    got = await store.get(lost.id)
    assert got is not None and got.state == "done" and got.attempts == 2
    await runner.drain(0.5)
    await store.close()


async def test_progress_moves_updated_at_only_when_it_changes(
    store: JobStore, tmp_path: Path
) -> None:
    job = make_job(tmp_path)
    await store.submit(job)
    claimed = await store.claim("w", 0.5)
    assert claimed is not None
    await store.set_progress(job.id, 0.5)
    first = (await store.get(job.id)).updated_at  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    await store.set_progress(job.id, 0.5)  # no progress: a hung job stays visibly stale
    assert (await store.get(job.id)).updated_at == first  # type: ignore[union-attr]
    queued = make_job(tmp_path)
    await store.submit(queued)
    ages = await store.oldest(first + 100)
    assert ages["running"] == pytest.approx(100, abs=0.01)
    assert 99 < ages["queued"] < 100
    assert await store.held("w") == [job.id]


# ------------------------------------------------------------------ a Redis restarted empty


async def test_redis_restarted_empty_is_noticed_and_cleaned_up(
    redis_server: Any, tmp_path: Path
) -> None:
    started = asyncio.Event()

    async def slow(job: Job, progress: ProgressFn) -> Mapping[str, str]:
        started.set()
        for i in range(300):
            progress(i / 300)
            await asyncio.sleep(0.05)
        return {}

    store = RedisJobStore(redis_server.url, socket_timeout_s=0.5, connect_timeout_s=0.5)
    runner = runner_for(store, slow, tmp_path, heartbeat_ttl_s=0.3, orphan_grace_s=0.0)
    await runner.start()
    running, queued = make_job(tmp_path), make_job(tmp_path)
    await store.submit(running)
    await asyncio.wait_for(started.wait(), 5)
    await store.submit(queued)
    redis_server.restart()  # no persistence: every record is gone
    # The runner notices: its running job vanished (stopped, files removed), the reset is
    # counted, and the queued job's upload folder, which no record owns now, is removed.
    runner.orphan_sweep_s = 0.0
    await wait_for(lambda: _no_dirs(running, queued), timeout_s=10)
    await wait_for(lambda: _gone_from_runner(runner, running.id))
    await wait_for(lambda: _resets(runner))
    assert store.reset_at is not None
    # And it goes on with new jobs.
    fresh = make_job(tmp_path)
    await store.submit(fresh)
    await wait_for(lambda: _state_is(store, fresh.id, "running"), timeout_s=5)
    await runner.drain(0.1)
    await store.close()


async def _no_dirs(*jobs: Job) -> bool:
    return not any(Path(j.work_dir).exists() for j in jobs)


async def _resets(runner: JobRunner) -> bool:
    return runner.store_resets == 1


async def _state_is(store: JobStore, job_id: str, state: str) -> bool:
    return await state_of(store, job_id) == state


async def test_orphaned_upload_folders_are_swept_at_start_up(tmp_path: Path) -> None:
    store = InMemoryJobStore()
    kept = make_job(tmp_path)
    await store.submit(kept)
    old, recent = make_job(tmp_path), make_job(tmp_path)  # no records: orphans
    os_utime_back(Path(old.work_dir), 3600)
    other = tmp_path / "uploads" / "not-a-job"
    other.mkdir()
    os_utime_back(other, 3600)
    runner = runner_for(store, quick, tmp_path, orphan_grace_s=600)
    runner.claim_timeout_s = 0.05
    await runner.start()
    assert not Path(old.work_dir).exists()  # orphaned and untouched for an hour
    assert Path(recent.work_dir).exists()  # maybe an upload still streaming in
    assert other.exists()  # not ours to judge
    assert runner.orphans_removed == 1
    await runner.drain(0.1)


def os_utime_back(folder: Path, seconds: float) -> None:
    import os
    import time

    t = time.time() - seconds
    for p in (*folder.iterdir(), folder):
        os.utime(p, (t, t))


async def test_job_meta_round_trips_and_bad_meta_reads_as_none(tmp_path: Path) -> None:
    meta = JobMeta(video_id="clip", duration_s=12.5, width=640, height=360, fps=25.0)
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path) == meta
    assert read_meta(tmp_path / "missing") is None
    for bad in ("not json", "[1, 2]", '{"duration_s": "long"}'):
        (tmp_path / "meta.json").write_text(bad, encoding="utf-8")
        assert read_meta(tmp_path) is None, bad

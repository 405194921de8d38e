"""The in-process job store: the embedded default, jobs live and die with this process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from service.jobs.record import (
    ACTIVE_STATES,
    JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobQuotaExceeded,
    JobState,
    RecoveryReport,
    RequeueOutcome,
    crash_message,
)


class InMemoryJobStore:
    """The embedded default: jobs live and die with this process (nothing to recover after a
    restart, so ``recover`` only matters for API parity)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []  # FIFO: pop(0) is the oldest
        self._processing: dict[str, list[str]] = {}
        self._arrived = asyncio.Condition()
        self._finished_at: dict[str, float] = {}
        self.reset_at: float | None = None

    def _transition(self, job: Job, state: JobState, **changes: Any) -> Job:
        now = time.time()
        new = job.model_copy(update={"state": state, "updated_at": now, **changes})
        self._jobs[job.id] = new
        if state in TERMINAL_STATES:
            self._finished_at[job.id] = now
        return new

    def _active(self, owner: str | None = None) -> int:
        return sum(
            1
            for j in self._jobs.values()
            if j.state in ACTIVE_STATES and (owner is None or j.owner == owner)
        )

    async def submit(
        self,
        job: Job,
        *,
        max_active_per_owner: int | None = None,
        max_active_total: int | None = None,
    ) -> None:
        if max_active_per_owner is not None and self._active(job.owner) >= max_active_per_owner:
            raise JobQuotaExceeded("key", max_active_per_owner)
        if max_active_total is not None and self._active() >= max_active_total:
            raise JobQuotaExceeded("global", max_active_total)
        self._jobs[job.id] = job.model_copy(update={"state": "queued"})
        self._queue.append(job.id)
        async with self._arrived:
            self._arrived.notify()

    async def get(self, job_id: str, *, owner: str | None = None) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    async def list_jobs(self, owner: str, *, limit: int = 100) -> list[Job]:
        mine = [j for j in self._jobs.values() if j.owner == owner]
        return sorted(mine, key=lambda j: j.created_at, reverse=True)[:limit]

    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        deadline = time.monotonic() + timeout_s
        while True:
            while self._queue:
                job_id = self._queue.pop(0)
                job = self._jobs.get(job_id)
                if job is None or job.state != "queued":
                    continue
                self._processing.setdefault(worker_id, []).append(job_id)
                return self._transition(job, "running", attempts=job.attempts + 1)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            async with self._arrived:
                if not self._queue:  # checked under the lock: no wake-up is missed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), remaining)

    async def set_progress(self, job_id: str, progress: float) -> JobState | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        p = min(max(progress, 0.0), 1.0)
        if job.state == "running" and p != job.progress:  # updated_at: when it last moved
            self._jobs[job_id] = job.model_copy(update={"progress": p, "updated_at": time.time()})
        return job.state

    def _unclaim(self, job_id: str, worker_id: str) -> bool:
        held = self._processing.get(worker_id, [])
        if job_id in held:
            held.remove(job_id)
            return True
        return False

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: Mapping[str, str] | None = None,
    ) -> bool:
        self._unclaim(job_id, worker_id)
        job = self._jobs.get(job_id)
        if job is None or job.state in TERMINAL_STATES:
            return False
        progress = 1.0 if state == "done" else job.progress
        self._transition(job, state, error=error, results=dict(results or {}), progress=progress)
        return True

    async def requeue(
        self, job_id: str, worker_id: str, *, charge_attempt: bool, max_attempts: int
    ) -> RequeueOutcome:
        if not self._unclaim(job_id, worker_id):
            return "gone"
        job = self._jobs.get(job_id)
        if job is None or job.state in TERMINAL_STATES:
            return "gone"
        if charge_attempt and job.state == "running" and job.attempts >= max_attempts:
            self._transition(job, "failed", error=crash_message(job.attempts))
            return "failed"
        attempts = job.attempts
        if not charge_attempt and job.state == "running":
            attempts = max(0, attempts - 1)
        self._transition(job, "queued", attempts=attempts, progress=0.0)
        self._queue.insert(0, job_id)  # head of the queue: it already waited its turn
        async with self._arrived:
            self._arrived.notify()
        return "requeued"

    async def cancel(self, job_id: str, *, owner: str | None) -> JobState | None:
        job = await self.get(job_id, owner=owner)
        if job is None:
            return None
        if job.state in ACTIVE_STATES:
            if job_id in self._queue:
                self._queue.remove(job_id)
            self._transition(job, "cancelled")
        return job.state

    async def delete(self, job_id: str, *, owner: str | None) -> Job | None:
        job = await self.get(job_id, owner=owner)
        if job is None:
            return None
        del self._jobs[job_id]
        self._finished_at.pop(job_id, None)
        if job_id in self._queue:
            self._queue.remove(job_id)
        return job

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        self._processing.setdefault(worker_id, [])

    async def recover(self, worker_id: str, *, max_attempts: int) -> RecoveryReport:
        return RecoveryReport()  # workers of this store die with it

    async def release_worker(self, worker_id: str) -> list[str]:
        out = []
        for job_id in list(self._processing.get(worker_id, [])):
            if await self.requeue(job_id, worker_id, charge_attempt=False, max_attempts=0) == (
                "requeued"
            ):
                out.append(job_id)
        self._processing.pop(worker_id, None)
        return out

    async def counts(self) -> dict[JobState, int]:
        out: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.values():
            out[job.state] += 1
        return out

    async def expired(self, finished_before: float, *, limit: int = 100) -> list[Job]:
        ids = [i for i, t in self._finished_at.items() if t < finished_before][:limit]
        return [self._jobs[i] for i in ids if i in self._jobs]

    async def oldest(self, now: float) -> dict[str, float]:
        out = {"queued": 0.0, "running": 0.0}
        for job in self._jobs.values():
            if job.state in out:
                out[job.state] = max(out[job.state], now - job.updated_at)
        return out

    async def held(self, worker_id: str) -> list[str]:
        return list(self._processing.get(worker_id, []))

    async def check_reset(self) -> bool:
        return False  # lives and dies with this process

    async def close(self) -> None:
        return None

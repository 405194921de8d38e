"""Video jobs: the record, two stores (in-process and Redis) and the worker pool that runs them.

::

    POST /v1/jobs -> admit_job -> store.submit --> [queue] --claim--> [processing:<worker>]
                                                                         |  JobRunner worker
                                                                         |  process(job, progress)
                                                   finished (done|failed|cancelled) <--'
    housekeeping (every few s): heartbeat, recover dead workers' jobs, delete expired jobs

States: ``queued -> running -> done | failed``, and ``queued|running -> cancelled``.

Never silently lost
-------------------
With Redis the queue is a *reliable queue*: ``claim`` moves a job id atomically from the shared
queue list into this worker's ``processing:<worker_id>`` list (``BLMOVE``), and only
``finish``/``requeue`` take it out. Each worker keeps a heartbeat key with a TTL. When a process
dies, its heartbeat expires and any runner's ``recover`` (run at start-up and periodically)
finds the dead worker's processing list and puts each job back in the queue, or marks it
``failed`` with a message once it has used up ``max_attempts`` starts (a video that crashes the
process must not crash every replica in turn). A graceful drain re-queues unfinished jobs
without charging an attempt.

Workers never die silently. Whatever a job raises ends it ``failed`` with a reason; recording
the outcome is retried with backoff while the store is unreachable (a Redis stall), then left
to housekeeping, and the worker takes the next job. Housekeeping also restarts a worker task
that ended, stops (and fails) the job of a worker that stopped coming round its loop, and
re-queues any job the store lists under this process that no worker here runs, so the
process's heartbeat cannot keep such a job ``running`` forever. Each event is logged and
counted (``JobRunner.errors``); dead or stuck workers turn readiness to 503.

A Redis restarted without persistence loses every job. The store notices (a random ``epoch``
key that never expires disappears or changes): running jobs whose records vanished are stopped
and their files removed, upload folders no record owns are swept, and the API's 404 says the
store lost its data. Persistence (AOF) is what keeps queued jobs across a Redis restart.

All Redis keys share one hash tag (``{avaserve:jobs}``), so the multi-key Lua scripts that
make each transition atomic stay valid on Redis Cluster. Jobs are few and small; one slot holds
them easily.

Files: a job owns ``work_dir`` (the upload and every result live inside it). The runner deletes
it on DELETE and when the job expires after ``retention_s``. With several replicas sharing Redis,
``work_dir`` must be on storage they all mount (a job may run on any replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.errors import VideoInputError

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})

_JOB_ID_RE = re.compile(r"^j_[A-Za-z0-9_\-]{24}$")
_INTERNAL_ERROR = "Internal error while processing this video; retrying will not help. Job {id}."


def new_job_id() -> str:
    """Server-generated, unguessable: 144 random bits (a job id is a capability to nothing,
    ownership is checked, but ids must still not be enumerable)."""
    return "j_" + secrets.token_urlsafe(18)


def is_job_id(value: str) -> bool:
    """Shape check for ids from URLs (answer 404 for anything else without touching a store)."""
    return bool(_JOB_ID_RE.match(value))


class JobOptions(BaseModel):
    """What the client asked for at upload time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render: bool = Field(
        default=False, description="Also write an MP4 with boxes and actions drawn."
    )


class Job(BaseModel):
    """One uploaded video and what became of it. Paths are server-internal: never return them
    to clients (routes expose ``id``, ``state``, ``progress``, ``error``, times, result kinds)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    owner: str = Field(description="Key id (auth.key_fingerprint) of the key that submitted it.")
    state: JobState = "queued"
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    error: str | None = Field(default=None, description="User-facing reason when state == failed.")
    created_at: float = Field(description="Unix time.")
    updated_at: float
    input_path: str
    work_dir: str
    options: JobOptions = JobOptions()
    results: dict[str, str] = Field(
        default_factory=dict, description="Result kind (json, csv, video) -> file path."
    )
    attempts: int = Field(default=0, ge=0, description="Times a worker started it.")

    @classmethod
    def new(
        cls,
        *,
        owner: str,
        upload_dir: Path,
        options: JobOptions | None = None,
        input_name: str = "input",
    ) -> Job:
        """A queued job with a fresh id; ``work_dir = upload_dir/<id>``. Creates no files:
        the upload handler creates ``work_dir`` and writes ``input_path``."""
        job_id = new_job_id()
        work_dir = Path(upload_dir) / job_id
        now = time.time()
        return cls(
            id=job_id,
            owner=owner,
            created_at=now,
            updated_at=now,
            input_path=str(work_dir / input_name),
            work_dir=str(work_dir),
            options=options or JobOptions(),
        )

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


class JobQuotaExceeded(Exception):
    """``submit`` refused: the owner (``scope='key'``) or the service (``'global'``) already
    has ``limit`` unfinished jobs. ``admission.admit_job`` maps it to 429/503."""

    def __init__(self, scope: Literal["key", "global"], limit: int) -> None:
        super().__init__(f"{scope} job limit {limit} reached")
        self.scope: Literal["key", "global"] = scope
        self.limit = limit


class JobError(Exception):
    """Raised by a ``process`` function for a failure the user should read (the message is
    stored as the job's error). Anything else becomes a generic internal-error message."""


@dataclass
class RecoveryReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


RequeueOutcome = Literal["requeued", "failed", "gone"]


class JobStore(Protocol):
    """Where jobs live. All methods are coroutines; ``owner`` filters enforce isolation (a key
    never sees, cancels or deletes another key's job: such calls behave as if it did not exist).
    """

    async def submit(
        self,
        job: Job,
        *,
        max_active_per_owner: int | None = None,
        max_active_total: int | None = None,
    ) -> None:
        """Store and enqueue, atomically checking the unfinished-job caps
        (``JobQuotaExceeded``)."""
        ...

    async def get(self, job_id: str, *, owner: str | None = None) -> Job | None: ...

    async def list_jobs(self, owner: str, *, limit: int = 100) -> list[Job]:
        """The owner's jobs, newest first."""
        ...

    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        """Take the oldest queued job for ``worker_id`` (state -> running, attempts + 1), or
        None after ``timeout_s``. Queued jobs cancelled meanwhile are skipped."""
        ...

    async def set_progress(self, job_id: str, progress: float) -> JobState | None:
        """Record progress of a running job; returns its current state (None = deleted), so a
        worker learns about a cancel or delete in the same round trip."""
        ...

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: Mapping[str, str] | None = None,
    ) -> bool:
        """Running -> done/failed. False when the job was cancelled or deleted meanwhile."""
        ...

    async def requeue(
        self, job_id: str, worker_id: str, *, charge_attempt: bool, max_attempts: int
    ) -> RequeueOutcome:
        """Put a claimed job back at the head of the queue. With ``charge_attempt`` (a crash)
        a job that already had ``max_attempts`` starts is marked failed instead; without it
        (a graceful drain) the interrupted start is not counted."""
        ...

    async def cancel(self, job_id: str, *, owner: str | None) -> JobState | None:
        """Queued/running -> cancelled. Returns the state before (None: no such job)."""
        ...

    async def delete(self, job_id: str, *, owner: str | None) -> Job | None:
        """Remove the record (any state). Returns it, so the caller can delete its files."""
        ...

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        """Announce that ``worker_id`` is alive for the next ``ttl_s`` seconds."""
        ...

    async def recover(self, worker_id: str, *, max_attempts: int) -> RecoveryReport:
        """Re-queue (or fail) jobs held by workers whose heartbeat expired. ``worker_id`` is the
        caller, never treated as dead."""
        ...

    async def release_worker(self, worker_id: str) -> list[str]:
        """Graceful exit: re-queue what ``worker_id`` still holds (no attempt charged) and
        forget the worker. Returns the re-queued ids."""
        ...

    async def counts(self) -> dict[JobState, int]:
        """Jobs per state (all owners; with Redis, all replicas)."""
        ...

    async def oldest(self, now: float) -> dict[str, float]:
        """``{"queued": s, "running": s}``: seconds since the longest-waiting queued job was
        queued, and since the stalest running job last made progress (0 when none)."""
        ...

    async def held(self, worker_id: str) -> list[str]:
        """Ids the store lists as claimed by ``worker_id`` (its processing list)."""
        ...

    async def check_reset(self) -> bool:
        """True when the store was emptied since this object first looked (a Redis restarted
        without persistence): then ``reset_at`` holds when that was noticed."""
        ...

    async def expired(self, finished_before: float, *, limit: int = 100) -> list[Job]:
        """Finished jobs whose last update is older than ``finished_before`` (unix time)."""
        ...

    async def close(self) -> None: ...


# ====================================================================== in-process store


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
            self._transition(job, "failed", error=_crash_message(job.attempts))
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


def _text(value: Any) -> str:
    """redis-py returns bytes (no decode_responses); accept str too."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _crash_message(attempts: int) -> str:
    return (
        f"The worker processing this video stopped unexpectedly {attempts} time(s); giving up. "
        "If the video is unusual (very long, very large), try a shorter or smaller version."
    )


# ====================================================================== Redis store

# Each script is one atomic transition. They build key names from the prefix (ARGV[1]); every
# key carries the same hash tag, so on a Redis Cluster they all live in one slot.
_LUA_COMMON = """
local p = ARGV[1]
local function move_state(id, owner, old, new)
  if old then redis.call('SREM', p .. ':state:' .. old, id) end
  redis.call('SADD', p .. ':state:' .. new, id)
  if new == 'done' or new == 'failed' or new == 'cancelled' then
    redis.call('SREM', p .. ':active:' .. owner, id)
    redis.call('SREM', p .. ':active', id)
  end
end
"""

# ARGV: p, id, owner, max_owner (0 = none), max_total, created_at, field, value, ...
_SUBMIT = (
    _LUA_COMMON
    + """
local id, owner = ARGV[2], ARGV[3]
local max_owner, max_total = tonumber(ARGV[4]), tonumber(ARGV[5])
if max_owner > 0 and redis.call('SCARD', p .. ':active:' .. owner) >= max_owner then
  return 'key'
end
if max_total > 0 and redis.call('SCARD', p .. ':active') >= max_total then return 'global' end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', p .. ':job:' .. id, unpack(fields))
redis.call('ZADD', p .. ':owner:' .. owner, ARGV[6], id)
redis.call('SADD', p .. ':active:' .. owner, id)
redis.call('SADD', p .. ':active', id)
move_state(id, owner, false, 'queued')
redis.call('LPUSH', p .. ':queue', id)
return 'ok'
"""
)

# After BLMOVE put the id in processing:<worker>. ARGV: p, id, worker, now
_START = (
    _LUA_COMMON
    + """
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
local k = p .. ':job:' .. id
local st = redis.call('HGET', k, 'state')
if st ~= 'queued' then
  redis.call('LREM', p .. ':processing:' .. worker, 0, id)
  return 0
end
move_state(id, redis.call('HGET', k, 'owner'), st, 'running')
redis.call('HSET', k, 'state', 'running', 'updated_at', now, 'progress', '0')
redis.call('HINCRBY', k, 'attempts', 1)
return 1
"""
)

# ARGV: p, id, progress, now -> current state or false. updated_at moves only with progress,
# so "running and not updated for long" means stuck (the AvaserveJobStuckRunning alert).
_PROGRESS = """
local k = ARGV[1] .. ':job:' .. ARGV[2]
local st = redis.call('HGET', k, 'state')
if st == 'running' and redis.call('HGET', k, 'progress') ~= ARGV[3] then
  redis.call('HSET', k, 'progress', ARGV[3], 'updated_at', ARGV[4])
end
return st
"""

# ARGV: p, id, worker, state, now, error, results_json, has_error
_FINISH = (
    _LUA_COMMON
    + """
local id, worker, new, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
redis.call('LREM', p .. ':processing:' .. worker, 0, id)
local k = p .. ':job:' .. id
local st = redis.call('HGET', k, 'state')
if (not st) or st == 'done' or st == 'failed' or st == 'cancelled' then return 0 end
move_state(id, redis.call('HGET', k, 'owner'), st, new)
redis.call('HSET', k, 'state', new, 'updated_at', now, 'results', ARGV[7])
if ARGV[8] == '1' then redis.call('HSET', k, 'error', ARGV[6]) end
if new == 'done' then redis.call('HSET', k, 'progress', '1') end
redis.call('ZADD', p .. ':finished', now, id)
return 1
"""
)

# ARGV: p, id, worker, now, charge (1/0), max_attempts, fail_message
_REQUEUE = (
    _LUA_COMMON
    + """
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
-- Whoever removes the id from the processing list owns the recovery: a second replica
-- recovering the same dead worker at the same moment finds nothing and backs off.
if redis.call('LREM', p .. ':processing:' .. worker, 0, id) == 0 then return 'gone' end
local k = p .. ':job:' .. id
local st = redis.call('HGET', k, 'state')
if (not st) or st == 'done' or st == 'failed' or st == 'cancelled' then return 'gone' end
local owner = redis.call('HGET', k, 'owner')
local attempts = tonumber(redis.call('HGET', k, 'attempts') or '0')
if st == 'running' then
  if ARGV[5] == '1' then
    if attempts >= tonumber(ARGV[6]) then
      move_state(id, owner, st, 'failed')
      redis.call('HSET', k, 'state', 'failed', 'updated_at', now, 'error', ARGV[7])
      redis.call('ZADD', p .. ':finished', now, id)
      return 'failed'
    end
  elseif attempts > 0 then
    redis.call('HSET', k, 'attempts', attempts - 1)
  end
end
move_state(id, owner, st, 'queued')
redis.call('HSET', k, 'state', 'queued', 'updated_at', now, 'progress', '0')
redis.call('RPUSH', p .. ':queue', id)
return 'requeued'
"""
)

# ARGV: p, id, owner ('' = any), now -> previous state or false
_CANCEL = (
    _LUA_COMMON
    + """
local id, owner, now = ARGV[2], ARGV[3], ARGV[4]
local k = p .. ':job:' .. id
local st = redis.call('HGET', k, 'state')
if not st then return false end
local job_owner = redis.call('HGET', k, 'owner')
if owner ~= '' and job_owner ~= owner then return false end
if st == 'queued' or st == 'running' then
  redis.call('LREM', p .. ':queue', 0, id)
  move_state(id, job_owner, st, 'cancelled')
  redis.call('HSET', k, 'state', 'cancelled', 'updated_at', now)
  redis.call('ZADD', p .. ':finished', now, id)
end
return st
"""
)

# ARGV: p, id, owner ('' = any) -> 1 deleted / 0
_DELETE = """
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local k = p .. ':job:' .. id
local job_owner = redis.call('HGET', k, 'owner')
if not job_owner then return 0 end
if owner ~= '' and job_owner ~= owner then return 0 end
local st = redis.call('HGET', k, 'state')
redis.call('SREM', p .. ':state:' .. st, id)
redis.call('SREM', p .. ':active:' .. job_owner, id)
redis.call('SREM', p .. ':active', id)
redis.call('ZREM', p .. ':owner:' .. job_owner, id)
redis.call('ZREM', p .. ':finished', id)
redis.call('LREM', p .. ':queue', 0, id)
redis.call('DEL', k)
return 1
"""


class RedisJobStore:
    """JobStore on Redis: shared by replicas, survives their restarts.

    url / client: ``redis://host:port/db`` or an existing ``redis.asyncio.Redis`` (it must not
        use ``decode_responses``).
    prefix: key prefix; the braces make it a Redis Cluster hash tag (keep them).
    socket_timeout_s: bound on every command, so a hung Redis turns into errors (the runner
        retries; routes answer 503) instead of requests that never return. ``claim`` blocks in
        ``BLMOVE`` for at most ``socket_timeout_s - 1`` (half of it below 2 s) per call, so it
        never trips it. The API path uses a store with a short one (``api_store_for``).
        redis-py's own retries are limited to one immediate retry on a connection error (a
        pooled connection that a Redis restart closed): a timeout is never retried here, the
        caller decides (the runner retries with backoff, the API answers 503 at once).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        prefix: str = "{avaserve:jobs}",
        connect_timeout_s: float = 2.0,
        socket_timeout_s: float = 5.0,
    ) -> None:
        if socket_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("RedisJobStore: socket_timeout_s and connect_timeout_s must be > 0")
        if client is None:
            if url is None:
                raise ValueError("RedisJobStore: give a url (redis://host:port/db) or a client")
            client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=socket_timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
            )
        self._max_block_s = (
            socket_timeout_s - 1.0 if socket_timeout_s >= 2.0 else socket_timeout_s / 2
        )
        self._epoch: str | None = None
        self.reset_at: float | None = None
        self._client = client
        self.prefix = prefix
        self._submit = client.register_script(_SUBMIT)
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._finish = client.register_script(_FINISH)
        self._requeue = client.register_script(_REQUEUE)
        self._cancel = client.register_script(_CANCEL)
        self._delete = client.register_script(_DELETE)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -------------------------------------------------------- encoding
    @staticmethod
    def _fields(job: Job) -> list[str]:
        flat = {
            "id": job.id,
            "owner": job.owner,
            "state": job.state,
            "progress": repr(job.progress),
            "created_at": repr(job.created_at),
            "updated_at": repr(job.updated_at),
            "input_path": job.input_path,
            "work_dir": job.work_dir,
            "options": job.options.model_dump_json(),
            "results": json.dumps(job.results),
            "attempts": str(job.attempts),
        }
        if job.error is not None:
            flat["error"] = job.error
        return [x for kv in flat.items() for x in kv]

    @staticmethod
    def _decode(raw: Mapping[Any, Any]) -> Job | None:
        if not raw:
            return None
        d = {_text(k): _text(v) for k, v in raw.items()}
        return Job(
            id=d["id"],
            owner=d["owner"],
            state=cast(JobState, d["state"]),  # validated by pydantic
            progress=float(d.get("progress", 0.0)),
            error=d.get("error"),
            created_at=float(d["created_at"]),
            updated_at=float(d["updated_at"]),
            input_path=d["input_path"],
            work_dir=d["work_dir"],
            options=JobOptions.model_validate_json(d.get("options") or "{}"),
            results=json.loads(d.get("results") or "{}"),
            attempts=int(d.get("attempts", 0)),
        )

    # -------------------------------------------------------- JobStore
    async def submit(
        self,
        job: Job,
        *,
        max_active_per_owner: int | None = None,
        max_active_total: int | None = None,
    ) -> None:
        queued = job.model_copy(update={"state": "queued"})
        out = await self._submit(
            args=[
                self.prefix,
                job.id,
                job.owner,
                max_active_per_owner or 0,
                max_active_total or 0,
                repr(job.created_at),
                *self._fields(queued),
            ]
        )
        out = _text(out)
        if out == "key":
            raise JobQuotaExceeded("key", int(max_active_per_owner or 0))
        if out == "global":
            raise JobQuotaExceeded("global", int(max_active_total or 0))

    async def get(self, job_id: str, *, owner: str | None = None) -> Job | None:
        job = self._decode(await self._client.hgetall(self.key("job", job_id)))
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    async def list_jobs(self, owner: str, *, limit: int = 100) -> list[Job]:
        ids = await self._client.zrevrange(self.key("owner", owner), 0, limit - 1)
        if not ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(self.key("job", _text(i)))
            raws = await pipe.execute()
        return [j for j in map(self._decode, raws) if j is not None and j.owner == owner]

    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Oldest first: submit LPUSHes, so the oldest id is at the right end.
            raw = await self._client.blmove(
                self.key("queue"),
                self.key("processing", worker_id),
                max(min(remaining, self._max_block_s), 0.01),  # type: ignore[arg-type]  # float s
                src="RIGHT",
                dest="LEFT",
            )
            if raw is None:
                return None
            job_id = _text(raw)
            started = await self._start(args=[self.prefix, job_id, worker_id, repr(time.time())])
            if started:
                return await self.get(job_id)
            # cancelled or deleted while queued: already dropped from processing; next one

    async def set_progress(self, job_id: str, progress: float) -> JobState | None:
        p = min(max(progress, 0.0), 1.0)
        st = await self._progress(args=[self.prefix, job_id, repr(p), repr(time.time())])
        return None if st is None else cast(JobState, _text(st))

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: Mapping[str, str] | None = None,
    ) -> bool:
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish: {state!r} is not a final state")
        done = await self._finish(
            args=[
                self.prefix,
                job_id,
                worker_id,
                state,
                repr(time.time()),
                error or "",
                json.dumps(dict(results or {})),
                "1" if error is not None else "0",
            ]
        )
        return bool(done)

    async def requeue(
        self, job_id: str, worker_id: str, *, charge_attempt: bool, max_attempts: int
    ) -> RequeueOutcome:
        out = await self._requeue(
            args=[
                self.prefix,
                job_id,
                worker_id,
                repr(time.time()),
                "1" if charge_attempt else "0",
                max_attempts,
                _crash_message(max_attempts),
            ]
        )
        return cast(RequeueOutcome, _text(out))

    async def cancel(self, job_id: str, *, owner: str | None) -> JobState | None:
        st = await self._cancel(args=[self.prefix, job_id, owner or "", repr(time.time())])
        return None if st is None else cast(JobState, _text(st))

    async def delete(self, job_id: str, *, owner: str | None) -> Job | None:
        job = await self.get(job_id, owner=owner)
        if job is None:
            return None
        deleted = await self._delete(args=[self.prefix, job_id, owner or ""])
        return job if deleted else None

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.key("workers"), worker_id)
            pipe.set(self.key("hb", worker_id), "1", px=int(ttl_s * 1000))
            await pipe.execute()

    async def recover(self, worker_id: str, *, max_attempts: int) -> RecoveryReport:
        report = RecoveryReport()
        for raw in await self._client.smembers(self.key("workers")):
            other = _text(raw)
            if other == worker_id or await self._client.exists(self.key("hb", other)):
                continue
            held = await self._client.lrange(self.key("processing", other), 0, -1)
            for job_raw in held:
                job_id = _text(job_raw)
                outcome = await self.requeue(
                    job_id, other, charge_attempt=True, max_attempts=max_attempts
                )
                if outcome == "requeued":
                    report.requeued.append(job_id)
                elif outcome == "failed":
                    report.failed.append(job_id)
            if not await self._client.llen(self.key("processing", other)):
                await self._client.srem(self.key("workers"), other)
        return report

    async def release_worker(self, worker_id: str) -> list[str]:
        out = []
        for raw in await self._client.lrange(self.key("processing", worker_id), 0, -1):
            job_id = _text(raw)
            if (
                await self.requeue(job_id, worker_id, charge_attempt=False, max_attempts=0)
                == "requeued"
            ):
                out.append(job_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(self.key("workers"), worker_id)
            pipe.delete(self.key("hb", worker_id))
            await pipe.execute()
        return out

    async def counts(self) -> dict[JobState, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for st in JOB_STATES:
                pipe.scard(self.key("state", st))
            values = await pipe.execute()
        return {st: int(n) for st, n in zip(JOB_STATES, values, strict=True)}

    async def expired(self, finished_before: float, *, limit: int = 100) -> list[Job]:
        ids = await self._client.zrangebyscore(
            self.key("finished"), "-inf", finished_before, start=0, num=limit
        )
        jobs = [await self.get(_text(i)) for i in ids]
        return [j for j in jobs if j is not None]

    async def oldest(self, now: float) -> dict[str, float]:
        out = {"queued": 0.0, "running": 0.0}
        for state in out:
            ids = await self._client.smembers(self.key("state", state))
            if not ids:
                continue
            async with self._client.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hget(self.key("job", _text(i)), "updated_at")
                stamps = await pipe.execute()
            ages = [now - float(_text(t)) for t in stamps if t is not None]
            out[state] = max([0.0, *ages])
        return out

    async def held(self, worker_id: str) -> list[str]:
        return [
            _text(i) for i in await self._client.lrange(self.key("processing", worker_id), 0, -1)
        ]

    async def check_reset(self) -> bool:
        """The store's identity is a random ``epoch`` key written once (SET NX) and never
        expiring; a Redis that comes back without it (or with another) lost every job."""
        key = self.key("epoch")
        raw = await self._client.get(key)
        if raw is None:
            await self._client.set(key, secrets.token_hex(8), nx=True)
            raw = await self._client.get(key)
        epoch = None if raw is None else _text(raw)
        if self._epoch is None or epoch == self._epoch:
            self._epoch = epoch
            return False
        self._epoch = epoch
        self.reset_at = time.time()
        return True

    async def close(self) -> None:
        await self._client.aclose()


# ====================================================================== the worker pool

ProgressFn = Callable[[float], None]
"""``progress(fraction)``: cheap and synchronous (it only records the number; the runner
writes it to the store every ``progress_interval_s``), callable from any thread."""

ProcessFn = Callable[[Job, ProgressFn], Awaitable[Mapping[str, str]]]
"""``async process(job, progress) -> {result kind: path}``: annotate ``job.input_path``, write
results inside ``job.work_dir`` (e.g. ``{"json": ..., "csv": ..., "video": ...}``). Raise
``VideoInputError`` or ``JobError`` for failures the user should read about."""


@dataclass
class DrainReport:
    finished: list[str] = field(default_factory=list)  # in flight at drain, finished in grace
    requeued: list[str] = field(default_factory=list)  # interrupted and put back in the queue


RUNNER_ERROR_STEPS: tuple[str, ...] = (
    "claim",  # taking the next job failed (store unreachable)
    "progress",  # recording progress failed (best effort)
    "finish",  # recording a finished job failed (retried)
    "process",  # a job raised an unexpected exception (it ends failed, internal error)
    "worker",  # an exception escaped a job's handling, or a worker task ended (restarted)
    "stuck",  # a worker did not come round its loop for stuck_after_s
    "housekeeping",  # a heartbeat/recovery/expiry step failed (retried next interval)
)
"""The ``step`` label of ``avaserve_job_runner_errors_total``: where a runner error happened."""

# Backstop on any single store call made by the runner: the store's own socket timeouts fire
# first; this only turns a call that never returns (a client bug) into a retried error.
_STORE_CALL_TIMEOUT_S = 30.0


def _reraise_if_cancelling() -> None:
    """Inside an ``except Exception`` of a retry loop: re-raise CancelledError when this task
    is being cancelled, whatever the exception the cancellation surfaced as."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class JobRunner:
    """A bounded pool of asyncio workers that run jobs from a ``JobStore``.

    workers: jobs run concurrently by this process. Each pulls the next job only when free.
    worker_id: this process's identity in the store (its processing list and heartbeat). Must
        be unique per live process; the default (hostname + random) is.
    max_attempts: starts allowed per job across crashes (drains do not count).
    heartbeat_ttl_s: how long after a crash its jobs become recoverable. Shorter -> faster
        recovery, but a process stalled (GC, swapping) for longer is declared dead while still
        running its jobs, and they run twice. Heartbeats are sent every ttl/3.
    retention_s: finished jobs and their files are deleted this long after finishing.
    files_root: work dirs are only ever deleted inside it (a corrupt record cannot point the
        runner at another directory). Folders in it that no job record owns are removed once
        untouched for ``orphan_grace_s`` (at start-up and every few minutes).
    progress_interval_s: how often progress goes to the store and cancellations are noticed.
    control_store: the store ``cancel``/``delete`` use (the API's, with short timeouts);
        defaults to ``store``.
    finish_retry_s: how long a worker keeps retrying to record a finished job while the store
        is unreachable (backoff 0.25 s doubling to 4 s). After that the result is kept in memory
        and housekeeping retries it; the worker moves on.
    stuck_after_s: a worker that has not come round its loop for this long is reported stuck
        (readiness 503) and its job, if any, is stopped and failed.
    orphan_grace_s: an upload folder with no job record is removed only when nothing in it
        changed for this long (an upload still streaming in has a folder but no record yet).

    Failures never end a worker silently: whatever a job raises ends it ``failed`` with a
    reason, a store outage is retried, and each such event is logged and counted in
    ``errors`` (by step; exported as ``avaserve_job_runner_errors_total``).
    """

    def __init__(
        self,
        store: JobStore,
        process: ProcessFn,
        *,
        workers: int = 1,
        worker_id: str | None = None,
        max_attempts: int = 2,
        heartbeat_ttl_s: float = 30.0,
        retention_s: float = 24 * 3600,
        files_root: Path | None = None,
        progress_interval_s: float = 0.5,
        claim_timeout_s: float = 1.0,
        control_store: JobStore | None = None,
        finish_retry_s: float = 120.0,
        stuck_after_s: float = 120.0,
        orphan_grace_s: float = 900.0,
        orphan_sweep_s: float = 300.0,
    ) -> None:
        if workers < 1 or max_attempts < 1 or heartbeat_ttl_s <= 0:
            raise ValueError("JobRunner: workers and max_attempts >= 1, heartbeat_ttl_s > 0")
        if finish_retry_s < 0 or stuck_after_s <= 0 or orphan_grace_s < 0:
            raise ValueError(
                "JobRunner: finish_retry_s >= 0, stuck_after_s > 0, orphan_grace_s >= 0"
            )
        self.store = store
        self.control_store = control_store or store
        self.process = process
        self.workers = workers
        self.worker_id = worker_id or f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}"
        self.max_attempts = max_attempts
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.retention_s = retention_s
        self.files_root = None if files_root is None else Path(files_root).resolve()
        self.progress_interval_s = progress_interval_s
        self.claim_timeout_s = claim_timeout_s
        self.finish_retry_s = finish_retry_s
        self.stuck_after_s = stuck_after_s
        self.orphan_grace_s = orphan_grace_s
        self.orphan_sweep_s = orphan_sweep_s
        # Read by metrics at scrape time (refreshed by housekeeping; with Redis: cluster-wide).
        self.state_counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        # Seconds since the oldest queued job was queued / the stalest running job last moved.
        self.oldest_s: dict[str, float] = {"queued": 0.0, "running": 0.0}
        self.errors: Counter[str] = Counter({step: 0 for step in RUNNER_ERROR_STEPS})
        self.orphans_removed = 0
        self.store_resets = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._tick: dict[int, float] = {}  # worker index -> monotonic time it last came round
        self._job_of: dict[int, str] = {}  # worker index -> job id it runs
        self._running: dict[str, asyncio.Task[Mapping[str, str]]] = {}
        self._stop_reason: dict[str, str] = {}  # job id -> drain|cancelled|deleted|stuck
        # Finished jobs the store could not record in time: job id -> (state, error, results).
        self._unrecorded: dict[str, tuple[JobState, str | None, dict[str, str]]] = {}
        self._suspects: set[str] = set()  # held in the store, run by no worker (last audit)
        self._last_sweep = 0.0
        self._stopping = False
        self._started = False

    @property
    def accepting(self) -> bool:
        """False once draining: the app should answer new uploads with 503."""
        return self._started and not self._stopping

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    def worker_states(self) -> dict[str, int]:
        """Workers by state: ``healthy``, ``stuck`` (has not come round its loop for
        ``stuck_after_s``) or ``dead`` (its task ended while the runner is not stopping);
        a stopped housekeeping task counts as one dead worker (no heartbeat, no recovery)."""
        out = {"healthy": 0, "stuck": 0, "dead": 0}
        if not self._started or self._stopping:
            return out
        now = time.monotonic()
        for index, task in self._workers.items():
            if task.done():
                out["dead"] += 1
            elif now - self._tick.get(index, now) > self.stuck_after_s:
                out["stuck"] += 1
            else:
                out["healthy"] += 1
        if self._housekeeper is not None and self._housekeeper.done():
            out["dead"] += 1
        return out

    @property
    def workers_ok(self) -> bool:
        """For readiness: every worker (and housekeeping) alive and coming round its loop."""
        states = self.worker_states()
        return states["stuck"] == 0 and states["dead"] == 0

    async def start(self) -> RecoveryReport:
        """Register, recover dead workers' jobs, remove orphaned upload folders, and start the
        workers and housekeeping."""
        if self._started:
            raise RuntimeError("JobRunner already started")
        self._started = True
        await self.store.heartbeat(self.worker_id, self.heartbeat_ttl_s)
        await self.store.check_reset()  # learn the store's identity (see housekeeping)
        report = await self.store.recover(self.worker_id, max_attempts=self.max_attempts)
        if report.requeued or report.failed:
            log.warning(
                "recovered jobs of stopped workers: %d re-queued, %d failed after %d attempts",
                len(report.requeued),
                len(report.failed),
                self.max_attempts,
            )
        self.state_counts = await self.store.counts()
        try:
            await self.sweep_orphans()
        except Exception:  # noqa: BLE001 - start-up goes on; housekeeping sweeps again
            log.warning("could not sweep orphaned upload folders at start-up", exc_info=True)
        self._last_sweep = time.monotonic()
        loop = asyncio.get_running_loop()
        for i in range(self.workers):
            self._spawn_worker(i)
        self._housekeeper = loop.create_task(self._housekeeping(), name="job-housekeeping")
        return report

    def _spawn_worker(self, index: int) -> None:
        self._tick[index] = time.monotonic()
        task = asyncio.get_running_loop().create_task(
            self._worker(index), name=f"job-worker-{index}"
        )
        self._workers[index] = task

    @property
    def _all_tasks(self) -> list[asyncio.Task[None]]:
        tasks = list(self._workers.values())
        if self._housekeeper is not None:
            tasks.append(self._housekeeper)
        return tasks

    async def drain(self, grace_s: float) -> DrainReport:
        """Stop taking jobs; give running ones ``grace_s`` to finish; re-queue the rest.

        Idle workers stop within ``claim_timeout_s``. Afterwards nothing of this runner is left
        in the store: interrupted jobs are back at the head of the queue for another replica
        (or this one after restart), with no attempt charged.
        """
        self._stopping = True
        report = DrainReport()
        in_flight = dict(self._running)
        workers = [t for t in self._workers.values() if not t.done()]
        pending: set[asyncio.Task[None]] = set()
        if workers:
            _, pending = await asyncio.wait(workers, timeout=max(grace_s, 0.0))
        for job_id, task in in_flight.items():
            if task.done() and not task.cancelled():
                report.finished.append(job_id)
            elif not task.done():
                self._stop_reason[job_id] = "drain"
                task.cancel()
        # Each worker re-queues its own interrupted job (a few store calls); give it a moment
        # before cutting it off. release_worker below catches anything it could not do.
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        tasks = self._all_tasks
        for t in tasks:
            t.cancel()
        if tasks:
            # Bounded: a task that swallowed its cancellation must not hold the shutdown.
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            for t in stuck:
                log.warning("job runner task %s did not stop within 5 s", t.get_name())
        self._workers = {}
        self._housekeeper = None
        # Results the store never took: one last try each (else the job is re-queued below).
        for job_id in list(self._unrecorded):
            await self._record_unrecorded(job_id)
        # Whatever is still listed under this worker (e.g. a job claimed as the drain began).
        leftover = await self.store.release_worker(self.worker_id)
        report.requeued = sorted(
            {j for j, why in self._stop_reason.items() if why == "drain"} | set(leftover)
        )
        self._stop_reason.clear()
        log.info(
            "job runner drained: %d finished in grace, %d re-queued",
            len(report.finished),
            len(report.requeued),
        )
        return report

    async def cancel(self, job_id: str, *, owner: str | None) -> JobState | None:
        """Cancel a queued or running job (a running one stops within a progress interval on
        whichever replica runs it). Returns the state before, None when not found."""
        before = await self.control_store.cancel(job_id, owner=owner)
        if before == "running" and job_id in self._running:
            self._stop_reason[job_id] = "cancelled"
            self._running[job_id].cancel()
        return before

    async def delete(self, job_id: str, *, owner: str | None) -> bool:
        """Cancel if needed, remove the record and delete the job's files."""
        task = self._running.get(job_id)
        job = await self.control_store.delete(job_id, owner=owner)
        if job is None:
            return False
        if task is not None:
            self._stop_reason[job_id] = "deleted"
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=5.0)
        self._remove_files(job)
        return True

    async def sweep_orphans(self) -> int:
        """Remove upload folders (``files_root/<job id>``) that no job record owns and that
        nothing touched for ``orphan_grace_s``: left by a Redis that restarted empty, a crash
        between upload and submit, or a store that lost a record. Returns how many. Raises when
        the store cannot be asked (nothing is removed on a guess)."""
        root = self.files_root
        if root is None or not root.is_dir():
            return 0
        now = time.time()
        removed = 0
        for entry in list(os.scandir(root)):
            if not is_job_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name in self._running or entry.name in self._unrecorded:
                continue
            if now - _newest_mtime(Path(entry.path)) < self.orphan_grace_s:
                continue
            if await self.store.get(entry.name) is not None:
                continue
            await asyncio.to_thread(shutil.rmtree, entry.path, True)
            removed += 1
            log.info("removed upload folder %s: no job record owns it", entry.name)
        self.orphans_removed += removed
        return removed

    # ---------------------------------------------------------------- internals
    def _count(self, step: str) -> None:
        self.errors[step] += 1

    async def _worker(self, index: int) -> None:
        while not self._stopping:
            self._tick[index] = time.monotonic()
            try:
                async with asyncio.timeout(self.claim_timeout_s + _STORE_CALL_TIMEOUT_S):
                    job = await self.store.claim(self.worker_id, self.claim_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store outage must not kill the pool
                _reraise_if_cancelling()
                self._count("claim")
                log.warning("job store unavailable while claiming (%r); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            if job is None:
                continue
            if self._stopping:  # claimed just as the drain began: hand it back untouched
                with contextlib.suppress(Exception):  # release_worker re-queues it otherwise
                    await self.store.requeue(
                        job.id, self.worker_id, charge_attempt=False, max_attempts=0
                    )
                self._stop_reason[job.id] = "drain"
                return
            self._job_of[index] = job.id
            try:
                await self._run(job, index)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the job fails, the worker goes on
                _reraise_if_cancelling()
                self._count("worker")
                log.exception("job %s: unexpected error in its worker; marking it failed", job.id)
                await self._finish(
                    job.id, "failed", error=_INTERNAL_ERROR.format(id=job.id), index=index
                )
            finally:
                self._job_of.pop(index, None)
                self._running.pop(job.id, None)

    async def _run(self, job: Job, index: int | None = None) -> None:
        latest = [0.0]

        def progress(fraction: float) -> None:
            latest[0] = fraction

        if not Path(job.input_path).is_file():
            await self._finish(
                job.id,
                "failed",
                error="The uploaded file is not available to this server (with several "
                "replicas, the upload directory must be shared storage). Upload it again.",
                index=index,
            )
            return
        log.info("job %s started (attempt %d, owner %s)", job.id, job.attempts, job.owner)
        task: asyncio.Task[Mapping[str, str]] = asyncio.ensure_future(self.process(job, progress))
        self._running[job.id] = task
        try:
            await self._watch(job.id, task, latest, index)
            results = await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            await self._stopped(job, index)
            if me is not None and me.cancelling():
                raise  # the worker itself is being stopped, not just this job
            return
        except (VideoInputError, JobError) as exc:
            message = exc.message if isinstance(exc, VideoInputError) else str(exc)
            log.info("job %s failed: %s", job.id, message)
            await self._finish(job.id, "failed", error=message, index=index)
        except Exception:  # noqa: BLE001 - the job fails, the worker lives on
            self._count("process")
            log.exception("job %s crashed", job.id)
            await self._finish(
                job.id, "failed", error=_INTERNAL_ERROR.format(id=job.id), index=index
            )
        else:
            recorded = await self._finish(job.id, "done", results=results, index=index)
            if recorded:
                log.info("job %s done", job.id)
            elif recorded is False:
                await self._forget_if_vanished(job)
        finally:
            self._running.pop(job.id, None)

    async def _finish(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: Mapping[str, str] | None = None,
        index: int | None = None,
    ) -> bool | None:
        """``store.finish``, retried with backoff while the store is unreachable (a Redis that
        stalls or restarts), for up to ``finish_retry_s``. Returns what the store said (False:
        the job was cancelled, deleted or lost meanwhile), or None when it gave up: the outcome
        is then kept in ``_unrecorded`` and housekeeping retries it. Never raises (but for
        the worker's own cancellation)."""
        deadline = time.monotonic() + self.finish_retry_s
        delay = 0.25
        attempt = 0
        while True:
            attempt += 1
            if index is not None:
                self._tick[index] = time.monotonic()
            try:
                async with asyncio.timeout(_STORE_CALL_TIMEOUT_S):
                    recorded = await self.store.finish(
                        job_id, self.worker_id, state, error=error, results=results
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, then handed to housekeeping
                _reraise_if_cancelling()
                self._count("finish")
                if time.monotonic() + delay > deadline:
                    log.error(
                        "job %s: could not record it as %s after %d attempt(s) (%r); "
                        "housekeeping keeps retrying",
                        job_id,
                        state,
                        attempt,
                        exc,
                    )
                    self._unrecorded[job_id] = (state, error, dict(results or {}))
                    return None
                log.warning(
                    "job %s: job store unavailable while recording it as %s (%r); retry in %.2f s",
                    job_id,
                    state,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            if attempt > 1:
                log.info("job %s: recorded as %s after %d attempts", job_id, state, attempt)
            self._unrecorded.pop(job_id, None)
            return recorded

    async def _record_unrecorded(self, job_id: str) -> None:
        state, error, results = self._unrecorded[job_id]
        try:
            async with asyncio.timeout(_STORE_CALL_TIMEOUT_S):
                await self.store.finish(job_id, self.worker_id, state, error=error, results=results)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - next round
            _reraise_if_cancelling()
            self._count("finish")
            log.warning("job %s: still cannot record it as %s (%r)", job_id, state, exc)
            return
        self._unrecorded.pop(job_id, None)
        log.info("job %s: recorded as %s (late)", job_id, state)

    async def _forget_if_vanished(self, job: Job) -> None:
        """The store refused to finish ``job``: if its record is gone (deleted on another
        replica, or a Redis that restarted empty), remove its files, which nobody else will."""
        try:
            gone = await self.store.get(job.id) is None
        except Exception:  # noqa: BLE001 - the orphan sweep removes them later
            return
        if gone:
            log.warning(
                "job %s vanished from the job store while running (deleted elsewhere, or the "
                "store lost its data); its files were removed",
                job.id,
            )
            self._remove_files(job)

    async def _watch(
        self,
        job_id: str,
        task: asyncio.Task[Mapping[str, str]],
        latest: list[float],
        index: int | None = None,
    ) -> None:
        """Until ``task`` ends: push progress, and stop the task when the job was cancelled or
        deleted elsewhere (another replica served the DELETE), or its record vanished."""
        while not task.done():
            if index is not None:
                self._tick[index] = time.monotonic()
            await asyncio.wait({task}, timeout=self.progress_interval_s)
            if task.done():
                return
            try:
                async with asyncio.timeout(_STORE_CALL_TIMEOUT_S):
                    state = await self.store.set_progress(job_id, latest[0])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - progress is best effort
                _reraise_if_cancelling()
                self._count("progress")
                log.warning("could not record progress of job %s", job_id, exc_info=True)
                continue
            if state is None or state == "cancelled":
                self._stop_reason[job_id] = "deleted" if state is None else "cancelled"
                task.cancel()

    async def _stopped(self, job: Job, index: int | None = None) -> None:
        """The job's task was cancelled: act on why."""
        why = self._stop_reason.get(job.id, "drain")
        task = self._running.get(job.id)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if why == "drain":
            self._stop_reason[job.id] = "drain"
            try:
                await self.store.requeue(
                    job.id, self.worker_id, charge_attempt=False, max_attempts=self.max_attempts
                )
            except Exception:  # noqa: BLE001 - drain's release_worker re-queues it
                log.warning("job %s: could not re-queue it now; drain will", job.id)
            else:
                log.info("job %s interrupted by shutdown; re-queued", job.id)
        elif why == "deleted":
            self._stop_reason.pop(job.id, None)
            await self._finish(job.id, "cancelled", index=index)  # drops it from processing
            log.info("job %s was deleted or vanished from the job store; stopped", job.id)
            self._remove_files(job)
        elif why == "stuck":
            self._stop_reason.pop(job.id, None)
            await self._finish(
                job.id,
                "failed",
                error=f"Processing stopped making progress for over {self.stuck_after_s:.0f} s "
                f"and was stopped. Job {job.id}; retrying may help.",
                index=index,
            )
        else:
            await self._finish(job.id, "cancelled", index=index)
            self._stop_reason.pop(job.id, None)
            log.info("job %s cancelled", job.id)

    async def _housekeeping(self) -> None:
        # Loops until cancelled. A client library may turn a cancellation that lands inside
        # a Redis call into an ordinary error (seen as a drain that never returned in CI),
        # so the error branches ask the task itself before retrying. Each step is tried on its
        # own: an outage of one store call must not skip the others (the heartbeat above all).
        interval = self.heartbeat_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            self._supervise()
            for step in (
                self._beat,
                self._check_reset,
                self._recover,
                self._retry_unrecorded,
                self._audit,
                self._expire,
                self._sweep,
                self._refresh_counts,
            ):
                try:
                    async with asyncio.timeout(max(interval, _STORE_CALL_TIMEOUT_S)):
                        await step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - retried next interval
                    _reraise_if_cancelling()
                    self._count("housekeeping")
                    log.warning("job housekeeping (%s) failed; retrying", step.__name__,
                                exc_info=True)  # fmt: skip

    def _supervise(self) -> None:
        """Restart dead workers; stop the job of a stuck one (it is failed with a reason)."""
        if self._stopping:
            return
        now = time.monotonic()
        for index, task in list(self._workers.items()):
            if task.done():
                exc = None if task.cancelled() else task.exception()
                self._count("worker")
                log.error("job worker %d ended (%r); starting a new one", index, exc)
                job_id = self._job_of.pop(index, None)
                orphan = self._running.pop(job_id, None) if job_id is not None else None
                if orphan is not None:
                    orphan.cancel()  # nobody awaits it any more; the audit re-queues the job
                self._spawn_worker(index)
            elif now - self._tick.get(index, now) > self.stuck_after_s:
                self._count("stuck")
                job_id = self._job_of.get(index)
                log.error(
                    "job worker %d has not come round its loop for %.0f s (job %s)",
                    index,
                    now - self._tick[index],
                    job_id,
                )
                job_task = self._running.get(job_id) if job_id else None
                if job_id and job_task is not None and not job_task.done():
                    self._stop_reason[job_id] = "stuck"
                    job_task.cancel()

    async def _beat(self) -> None:
        await self.store.heartbeat(self.worker_id, self.heartbeat_ttl_s)

    async def _check_reset(self) -> None:
        if await self.store.check_reset():
            self.store_resets += 1
            self._last_sweep = 0.0  # the lost jobs' folders are orphans now: sweep this round
            log.error(
                "the job store lost its data (Redis restarted without persistence?): every "
                "queued and finished job is gone; running jobs stop and their files are removed"
            )

    async def _recover(self) -> None:
        await self.store.recover(self.worker_id, max_attempts=self.max_attempts)

    async def _retry_unrecorded(self) -> None:
        for job_id in list(self._unrecorded):
            await self._record_unrecorded(job_id)

    async def _audit(self) -> None:
        """Jobs the store lists under this worker that no worker here runs (a worker died, or
        its finish was lost) would stay ``running`` forever behind this process's heartbeat:
        seen in two audits in a row, they are re-queued (charging an attempt) or failed."""
        held = set(await self.store.held(self.worker_id))
        orphans = held - set(self._running) - set(self._unrecorded)
        for job_id in orphans & self._suspects:
            outcome = await self.store.requeue(
                job_id, self.worker_id, charge_attempt=True, max_attempts=self.max_attempts
            )
            log.error("job %s was held by no worker of this process: %s", job_id, outcome)
        self._suspects = orphans - self._suspects

    async def _expire(self) -> None:
        for job in await self.store.expired(time.time() - self.retention_s):
            if await self.store.delete(job.id, owner=None) is not None:
                self._remove_files(job)

    async def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < self.orphan_sweep_s:
            return
        self._last_sweep = time.monotonic()
        await self.sweep_orphans()

    async def _refresh_counts(self) -> None:
        self.state_counts = await self.store.counts()
        self.oldest_s = await self.store.oldest(time.time())

    def _remove_files(self, job: Job) -> None:
        work_dir = Path(job.work_dir).resolve()
        if self.files_root is not None and not work_dir.is_relative_to(self.files_root):
            log.error("job %s: refusing to delete %s outside %s", job.id, work_dir, self.files_root)
            return
        shutil.rmtree(work_dir, ignore_errors=True)


def _newest_mtime(folder: Path) -> float:
    """The latest modification time of a folder and the files directly in it."""
    newest = folder.stat().st_mtime
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest

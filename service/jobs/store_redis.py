"""The Redis job store: shared by replicas, survives their restarts. Every transition is one
Lua script; all keys share one hash tag (see the package docstring)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.jobs.record import (
    JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobOptions,
    JobQuotaExceeded,
    JobState,
    RecoveryReport,
    RequeueOutcome,
    crash_message,
)


def _text(value: Any) -> str:
    """redis-py returns bytes (no decode_responses); accept str too."""
    return value.decode() if isinstance(value, bytes) else str(value)


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
                crash_message(max_attempts),
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

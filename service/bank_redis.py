"""Feature bank in Redis (redis-py asyncio), so a stream's context outlives a process.

Layout: one sorted set per stream, ``{prefix}:{<stream_id>}:sec``; member = one packed second
(header + int64 track ids + float16 features, raw bytes), score = the second. The ``{...}`` hash
tag keeps every key of a stream in one Redis Cluster slot (only the tagged part is hashed).

One round trip per keyframe: a MULTI/EXEC pipeline (atomic, single-slot, so Cluster-safe) that
  1. replaces second t (ZREMRANGEBYSCORE t t, ZADD) - plus any seconds a Redis outage left
     unsynced,
  2. trims seconds older than the retention (ZREMRANGEBYSCORE -inf (cutoff),
  3. refreshes the TTL (EXPIRE) so an abandoned stream disappears after ``ttl_s``,
  4. reads the part of the window this process does not already hold (ZRANGEBYSCORE), and
  5. ZCARD, to notice a Redis that restarted empty (then everything held is re-sent on the
     next call).
A pipeline was chosen over a Lua script: no script cache to reload after a Redis restart
(NOSCRIPT costs an extra round trip exactly when Redis is recovering), and every step is a
plain O(log n + m) command.

Write-through local cache. The process keeps the retained seconds it wrote or fetched (the
same ``StreamStore`` as the in-process bank) and knows from which second on it is
authoritative. So the window read in step 4 usually fetches nothing: the full 61-second window
(1.4 MB at D=2304) is read from Redis only when a stream arrives at this process (a reconnect to
another replica). This assumes one writer per stream at a time, the pipeline's contract.

Degradation. Socket timeouts are short (default 100 ms) and redis-py's own retries are off, so
a dead or stopped Redis costs at most one timeout. Then a circuit breaker skips Redis for
``backoff_initial_s``, doubling to ``backoff_max_s`` while failures continue; the next call after
the pause is the probe. Calls never raise; they return the local cache's window, flagged
``degraded=True`` only when that window may lack seconds: when part of it lies before what the
cache is authoritative for (a stream new to this process, or a window reaching further back) and
Redis could not supply it. A stream whose window the cache covers (every stream this process
wrote from its start, e.g. a file job, declared with ``new_stream``) is not degraded by an outage:
its writes wait in ``unsynced`` and are sent when Redis is back. Counters (``degraded``,
``redis_errors``, ``redis_skipped``) are attributes for the metrics layer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.defaults import BANK_RETENTION_S
from service.bank import (
    BankStats,
    BankWindow,
    Entry,
    StreamStore,
    _Stream,
    assemble,
    check_stream_id,
    check_window,
    prepare_rows,
)

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<qII")  # second (int64), rows n (uint32), dim D (uint32)
# Key expiry beyond the retention: a live stream may pause this long and keep its context.
TTL_MARGIN_S = 60
_EVERYTHING = -(2**62)  # known_from of a stream new to this process: nothing precedes it


def pack_second(t: int, ids: np.ndarray, feats16: np.ndarray) -> bytes:
    """One second -> bytes: header, ids (n,) little-endian int64, features (n, D) float16."""
    n, d = feats16.shape
    return (
        _HEADER.pack(t, n, d)
        + ids.astype("<i8", copy=False).tobytes()
        + feats16.astype("<f2", copy=False).tobytes()
    )


def unpack_second(blob: bytes) -> tuple[int, Entry]:
    t, n, d = _HEADER.unpack_from(blob)
    off = _HEADER.size
    if len(blob) != off + n * 8 + n * d * 2:
        raise ValueError(f"bank blob for second {t}: {len(blob)} bytes does not match n={n} D={d}")
    ids = np.frombuffer(blob, "<i8", n, off).astype(np.int64)
    feats = np.frombuffer(blob, "<f2", n * d, off + n * 8).reshape(n, d).astype(np.float16)
    return t, (ids, feats)


class RedisBank:
    """FeatureBank on Redis. See the module docstring for the protocol.

    url / client: where Redis is (``redis://host:port/db``); or an existing client.
    retention_s: seconds kept behind the newest (as StreamStore).
    ttl_s: key expiry, refreshed at each call; None = retention_s + TTL_MARGIN_S. Shorter ->
        an abandoned stream is freed sooner; it must exceed the longest pause of a live stream
        you still want to resume.
    socket_timeout_s / connect_timeout_s: per-command bounds. A keyframe budget is about 1 s,
        so 100 ms is the most context is allowed to cost; too short -> false "degraded" on a
        busy Redis.
    backoff_initial_s / backoff_max_s: how long to skip Redis after a failure (doubling).
        Longer -> fewer wasted timeouts while Redis is down, slower recovery.
    max_streams / idle_ttl_s: bound the local cache (as StreamStore).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        key_prefix: str = "avaserve:bank",
        retention_s: int = BANK_RETENTION_S,
        ttl_s: int | None = None,
        socket_timeout_s: float = 0.1,
        connect_timeout_s: float = 0.1,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 5.0,
        max_streams: int = 1024,
        idle_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("RedisBank: give a url (redis://host:port/db) or a client")
            client = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                # redis-py retries 3x with backoff by default: that would turn one dead-Redis
                # timeout into several per keyframe. The breaker below does the waiting.
                retry=Retry(NoBackoff(), 0),
            )
        if ttl_s is None:
            ttl_s = retention_s + TTL_MARGIN_S
        if ttl_s <= retention_s:
            raise ValueError(f"RedisBank: ttl_s ({ttl_s}) must exceed retention_s ({retention_s})")
        self._client = client
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        # Backstop for the whole round trip (connect + send + read), beyond the socket timeouts.
        self._call_timeout_s = connect_timeout_s + 2 * socket_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self.store = StreamStore(
            retention_s=retention_s, max_streams=max_streams, idle_ttl_s=idle_ttl_s, clock=clock
        )
        self._failures = 0
        self._skip_until = 0.0
        # Counters (the metrics layer exports them).
        self.calls = 0
        self.degraded = 0
        self.redis_errors = 0
        self.redis_skipped = 0
        self.round_trips = 0

    async def connect(self) -> bool:
        """Open a pooled connection now, as a server does at startup, so that the first
        keyframe does not pay the TCP connect and handshake (several ms, a few % of a keyframe
        on a short upload). False when Redis is unreachable; nothing raises and the breaker is
        left alone (the first keyframe then finds out and degrades as usual)."""
        try:
            await asyncio.wait_for(self._client.ping(), self._call_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a warm-up must never fail the caller
            log.debug("feature bank: Redis not reachable at connect (%r)", exc)
            return False
        return True

    def key(self, stream_id: str) -> str:
        return f"{self.key_prefix}:{{{check_stream_id(stream_id)}}}:sec"

    async def write_and_read(
        self,
        stream_id: str,
        t: int,
        track_ids: np.ndarray,
        features: np.ndarray,
        window: tuple[int, int],
        max_per_second: int,
        *,
        scores: npt.ArrayLike | None = None,
    ) -> BankWindow:
        key = self.key(stream_id)
        check_window(window, self.store.retention_s, max_per_second)
        ids, feats16 = prepare_rows(track_ids, features, scores, max_per_second)
        t = int(t)
        st = self.store.stream(stream_id)
        self.store.put(st, t, ids, feats16)
        st.unsynced.add(t)
        return await self._window(st, key, t, window, max_per_second)

    async def read_window(
        self, stream_id: str, t: int, window: tuple[int, int], max_per_second: int
    ) -> BankWindow:
        key = self.key(stream_id)
        check_window(window, self.store.retention_s, max_per_second)
        st = self.store.stream(stream_id)
        return await self._window(st, key, int(t), window, max_per_second)

    def new_stream(self, stream_id: str) -> None:
        """A stream id this process made up (nothing of it is in Redis): the local cache is
        authoritative for all of it, so an outage never degrades its windows."""
        self.store.drop(check_stream_id(stream_id))
        self.store.stream(stream_id).known_from = _EVERYTHING

    async def drop_stream(self, stream_id: str) -> None:
        key = self.key(stream_id)
        self.store.drop(stream_id)
        if self._breaker_open():
            return
        try:
            await asyncio.wait_for(self._client.delete(key), self._call_timeout_s)
            self.round_trips += 1
        except Exception as exc:  # noqa: BLE001 - the TTL frees it anyway
            self._failed(exc)

    def stats(self) -> BankStats:
        streams, secs, nbytes = self.store.totals()
        return BankStats(
            streams,
            secs,
            nbytes,
            self.calls,
            self.degraded,
            self.redis_errors,
            self.redis_skipped,
            self.round_trips,
        )

    async def close(self) -> None:
        self.store.clear()
        await self._client.aclose()

    # ------------------------------------------------------------ internals

    async def _window(
        self, st: _Stream, key: str, t: int, window: tuple[int, int], max_per_second: int
    ) -> BankWindow:
        self.calls += 1
        lo, hi = t + window[0], t + window[1]
        # The cache holds every second >= known_from (one writer per stream): a window inside
        # that is complete whatever Redis does; a failed round trip then only delays the sync.
        complete = st.known_from is not None and lo >= st.known_from
        ok = await self._round_trip(st, key, lo)
        degraded = not ok and not complete
        if degraded:
            self.degraded += 1
        entries = self.store.window(st, lo, hi, max_per_second)
        return assemble(entries, st.dim, degraded=degraded)

    def _breaker_open(self) -> bool:
        if self._clock() < self._skip_until:
            self.redis_skipped += 1
            return True
        return False

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self._failures += 1
        pause = min(self.backoff_initial_s * 2 ** (self._failures - 1), self.backoff_max_s)
        self._skip_until = self._clock() + pause
        if self._failures == 1:
            log.warning("feature bank: Redis unavailable (%r); serving local context", exc)

    async def _round_trip(self, st: _Stream, key: str, lo: int) -> bool:
        """Sync unsynced seconds, trim, refresh TTL, fetch what is missing. False on failure."""
        # Fetch [lo, +inf) the first time (so the cache becomes authoritative from lo on),
        # later only seconds older than what is already known.
        fetch: tuple[int, float] | None
        if st.known_from is None:
            fetch = (lo, float("inf"))
        elif lo < st.known_from:
            fetch = (lo, st.known_from - 1)
        else:
            fetch = None
        if not st.unsynced and fetch is None:
            return True  # nothing to say to Redis: zero round trips
        if self._breaker_open():
            return False

        sending = sorted(s for s in st.unsynced if s in st.seconds)
        pipe = self._client.pipeline(transaction=True)
        for s in sending:
            ids, feats16 = st.seconds[s]
            pipe.zremrangebyscore(key, s, s)
            pipe.zadd(key, {pack_second(s, ids, feats16): s})
        if st.newest is not None:
            pipe.zremrangebyscore(key, "-inf", f"({st.newest - self.store.retention_s}")
        pipe.expire(key, self.ttl_s)
        if fetch is not None:
            pipe.zrangebyscore(key, fetch[0], "+inf" if fetch[1] == float("inf") else fetch[1])
        pipe.zcard(key)
        try:
            # asyncio.timeout, not wait_for: no extra task (and loop hops) per call.
            async with asyncio.timeout(self._call_timeout_s):
                results = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "degraded", never raise
            self._failed(exc)
            return False
        finally:
            await pipe.reset()
        self.round_trips += 1
        if self._failures:
            log.info("feature bank: Redis back after %d failed calls", self._failures)
        self._failures = 0

        st.unsynced.difference_update(sending)
        if fetch is not None:
            cutoff = (st.newest if st.newest is not None else lo) - self.store.retention_s
            for blob in results[-2]:
                s, entry = unpack_second(blob)
                # Seconds this process wrote are newer than anything stored: keep them.
                if s in st.seconds or s < cutoff:
                    continue
                d = int(entry[1].shape[1])
                if st.dim and d != st.dim:
                    continue  # rows from a different model's features: unusable here
                st.dim = d
                st.seconds[s] = entry
                st.newest = s if st.newest is None else max(st.newest, s)
            st.known_from = fetch[0] if st.known_from is None else min(st.known_from, fetch[0])
        # A Redis that restarted empty holds fewer seconds than this process synced: re-send
        # everything held on the next call (same single round trip).
        if int(results[-1]) < len(st.seconds):
            st.unsynced = set(st.seconds)
        return True

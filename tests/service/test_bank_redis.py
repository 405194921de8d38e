"""Redis feature bank against a real redis-server (started per test by the fixture)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from service.bank import FILE_WINDOW, LIVE_WINDOW, BankWindow, FeatureBank, InProcessBank
from service.bank_redis import RedisBank, pack_second, unpack_second

D = 16


def rows(t: int, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """0-7 persons, deterministic per second (some seconds have nobody)."""
    rng = np.random.default_rng(t)
    n = int(rng.integers(0, 8))
    return np.arange(1, n + 1) + 100 * t, rng.standard_normal((n, d)).astype(np.float32)


def assert_same(a: BankWindow, b: BankWindow) -> None:
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.track_ids, b.track_ids)
    np.testing.assert_array_equal(a.features, b.features)


def fast_bank(url: str, **kw: Any) -> RedisBank:
    kw = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, **kw}
    return RedisBank(url, **kw)


def test_blob_round_trip() -> None:
    ids, f = np.array([3, 9]), np.arange(8, dtype=np.float16).reshape(2, 4)
    t, (ids2, f2) = unpack_second(pack_second(42, ids, f))
    assert t == 42 and ids2.tolist() == [3, 9]
    np.testing.assert_array_equal(f2, f)
    with pytest.raises(ValueError, match="does not match"):
        unpack_second(pack_second(42, ids, f)[:-1])


@pytest.mark.asyncio
async def test_same_windows_as_in_process_and_one_round_trip(redis_server: Any) -> None:
    ref = InProcessBank()
    bank = fast_bank(redis_server.url)
    assert isinstance(bank, FeatureBank)
    for t in range(90):
        ids, f = rows(t)
        got = await bank.write_and_read("cam-1", t, ids, f, LIVE_WINDOW, 5)
        want = await ref.write_and_read("cam-1", t, ids, f, LIVE_WINDOW, 5)
        assert not got.degraded
        assert_same(got, want)
    assert bank.round_trips == 90  # exactly one per keyframe
    # A fresh process (empty cache) sees the same contents: Redis holds the bank.
    other = fast_bank(redis_server.url)
    for t in [40, 59, 75]:
        assert_same(
            await other.read_window("cam-1", t, FILE_WINDOW, 5),
            await ref.read_window("cam-1", t, FILE_WINDOW, 5),
        )
    await bank.close()
    await other.close()


@pytest.mark.asyncio
async def test_keys_hash_tag_ttl_trim_fp16(redis_server: Any) -> None:
    bank = fast_bank(redis_server.url, retention_s=60, ttl_s=120)
    f32 = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32)
    for t in range(90):
        w = await bank.write_and_read("cam-7", t, np.array([1, 2]), f32, LIVE_WINDOW, 5)
    r = aioredis.Redis.from_url(redis_server.url)
    keys = await r.keys("*")
    assert keys == [b"avaserve:bank:{cam-7}:sec"]  # {hash tag}: one Cluster slot per stream
    assert 110_000 < await r.pttl(keys[0]) <= 120_000
    assert await r.zcard(keys[0]) == 61  # seconds 29..89
    assert (await r.zrange(keys[0], 0, 0, withscores=True))[0][1] == 29.0
    # fp16 round trip: exactly the float16 rounding, relative error < 1e-3
    np.testing.assert_array_equal(w.features[-2:], f32.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(w.features[-2:], f32, rtol=1e-3, atol=1e-4)
    await bank.drop_stream("cam-7")
    assert await r.keys("*") == []
    await r.aclose()
    await bank.close()


@pytest.mark.asyncio
async def test_abandoned_stream_expires(redis_server: Any) -> None:
    bank = fast_bank(redis_server.url, retention_s=0, ttl_s=1)
    await bank.write_and_read("gone", 0, *rows(3), (0, 0), 5)
    r = aioredis.Redis.from_url(redis_server.url)
    assert await r.exists("avaserve:bank:{gone}:sec")
    await asyncio.sleep(1.2)
    assert not await r.exists("avaserve:bank:{gone}:sec")
    await r.aclose()
    await bank.close()


@pytest.mark.asyncio
async def test_stream_moves_to_another_replica(redis_server: Any) -> None:
    a, b = fast_bank(redis_server.url), fast_bank(redis_server.url)
    ref = InProcessBank()
    for t in range(30):
        await a.write_and_read("cam", t, *rows(t), LIVE_WINDOW, 5)
        await ref.write_and_read("cam", t, *rows(t), LIVE_WINDOW, 5)
    got = await b.write_and_read("cam", 30, *rows(30), LIVE_WINDOW, 5)
    assert_same(got, await ref.write_and_read("cam", 30, *rows(30), LIVE_WINDOW, 5))
    assert b.round_trips == 1  # the 30 s of context came back in the same round trip
    await a.close()
    await b.close()


async def run_outage(bank: RedisBank, ref: InProcessBank, ts: range) -> list[BankWindow]:
    out = []
    for t in ts:
        ids, f = rows(t)
        start = time.monotonic()
        got = await bank.write_and_read("cam", t, ids, f, LIVE_WINDOW, 5)
        assert time.monotonic() - start < 0.5  # bounded by the socket timeouts
        # Context in hand is still the full window (this process wrote it).
        assert_same(got, await ref.write_and_read("cam", t, ids, f, LIVE_WINDOW, 5))
        out.append(got)
        await asyncio.sleep(0.02)
    return out


@pytest.mark.asyncio
@pytest.mark.parametrize("failure", ["sigstop", "kill"])
async def test_redis_outage_degrades_then_resumes(redis_server: Any, failure: str) -> None:
    bank, ref = fast_bank(redis_server.url), InProcessBank()
    await run_outage(bank, ref, range(0, 10))
    assert bank.degraded == 0

    if failure == "sigstop":
        redis_server.pause()
    else:
        redis_server.kill()
    during = await run_outage(bank, ref, range(10, 20))
    # Every window was complete (run_outage checks it against the reference): this process
    # holds every second of the stream since it first synced, so none is flagged degraded
    # (issue 16 item 7: a 3 s stall flagged 520 of 841 records whose scores were all exact).
    assert not any(w.degraded for w in during)
    assert bank.degraded == 0 and bank.redis_errors >= 1 and bank.redis_skipped >= 1
    # The breaker spared most calls a timeout.
    assert bank.redis_errors < 10

    if failure == "sigstop":
        redis_server.resume()
    else:
        redis_server.restart()  # comes back empty
    await asyncio.sleep(0.25)  # past the breaker's longest pause
    after = await run_outage(bank, ref, range(20, 25))
    assert not any(w.degraded for w in after)
    # Seconds written during the outage (and, after a restart, everything held) were re-sent:
    # a new process sees the same bank as the in-process reference.
    other = fast_bank(redis_server.url)
    assert_same(
        await other.read_window("cam", 24, LIVE_WINDOW, 5),
        await ref.read_window("cam", 24, LIVE_WINDOW, 5),
    )
    await bank.close()
    await other.close()


@pytest.mark.asyncio
async def test_outage_degrades_only_windows_that_lack_seconds(redis_server: Any) -> None:
    """A stream arriving at another replica during an outage really lacks its history: that
    window, and only that one, is flagged."""
    a, b = fast_bank(redis_server.url), fast_bank(redis_server.url)
    for t in range(10):
        await a.write_and_read("cam", t, *rows(t), LIVE_WINDOW, 5)
    redis_server.pause()
    try:
        on_a = await a.write_and_read("cam", 10, *rows(10), LIVE_WINDOW, 5)
        on_b = await b.write_and_read("cam", 11, *rows(11), LIVE_WINDOW, 5)
    finally:
        redis_server.resume()
    assert not on_a.degraded and sorted(set(on_a.times.tolist())) == list(range(11))
    assert on_b.degraded and set(on_b.times.tolist()) == {11}
    assert (a.degraded, b.degraded) == (0, 1)
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_new_stream_is_never_degraded(redis_server: Any) -> None:
    """A file job's stream (an id made up by this process) needs nothing from Redis: an
    outage from its very first second degrades none of its windows, and its seconds reach
    Redis once it is back."""
    redis_server.kill()
    bank = fast_bank(redis_server.url)
    bank.new_stream("file-1")
    for t in range(5):
        w = await bank.write_and_read("file-1", t, *rows(t), (0, 0), 5)
        assert not w.degraded
    w = await bank.read_window("file-1", 2, (-30, 30), 5)
    assert not w.degraded and sorted(set(w.times.tolist())) == list(range(5))
    redis_server.start()
    await asyncio.sleep(0.6)  # past the breaker's pause
    await bank.write_and_read("file-1", 5, *rows(5), (0, 0), 5)
    other = fast_bank(redis_server.url)
    assert sorted(set((await other.read_window("file-1", 5, (-30, 30), 5)).times.tolist())) == (
        list(range(6))
    )
    assert bank.degraded == 0
    await bank.close()
    await other.close()


@pytest.mark.asyncio
async def test_redis_down_from_the_start(redis_server: Any) -> None:
    redis_server.kill()
    bank = fast_bank(redis_server.url)
    w = await bank.write_and_read("cam", 5, *rows(5), LIVE_WINDOW, 5)
    assert w.degraded and w.times.tolist() == [5] * len(rows(5)[0])
    assert bank.stats().degraded == 1
    await bank.close()


@pytest.mark.asyncio
async def test_connect_warms_up_without_tripping_the_breaker(redis_server: Any) -> None:
    bank = fast_bank(redis_server.url)
    assert await bank.connect()
    assert bank.round_trips == 0 and bank.stats().redis_errors == 0
    await bank.close()
    redis_server.kill()
    down = fast_bank(redis_server.url)
    assert not await down.connect()  # reported, never raised
    assert down.stats().redis_errors == 0 and down.stats().redis_skipped == 0
    await down.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("dim", [2304, 256])
async def test_memory_per_stream_minute(redis_server: Any, dim: int) -> None:
    """60 s of 5 persons/s, then 4 more minutes: memory tracks the payload and stays bounded."""
    bank = fast_bank(redis_server.url, retention_s=60)
    r = aioredis.Redis.from_url(redis_server.url)
    key = "avaserve:bank:{cam}:sec"
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, dim)).astype(np.float32)
    used: dict[int, int] = {}
    for t in range(300):
        await bank.write_and_read("cam", t, np.arange(5), feats + t, LIVE_WINDOW, 5)
        if t + 1 in (60, 300):
            used[t + 1] = int(await r.memory_usage(key, samples=0) or 0)
    raw = 60 * 5 * dim * 2
    print(f"\nRedis bytes/stream-minute D={dim}: {used[60]} (raw {raw}); at 5 min {used[300]}")
    # Overhead: jemalloc rounds each blob up to its size class (about 6% at D=2304, 17% at
    # D=256) plus the sorted set's own entries.
    assert raw <= used[60] <= 1.3 * raw + 8192
    assert used[300] <= used[60] * 61 / 60 + 4096  # trimmed to 61 seconds: bounded
    await r.aclose()
    await bank.close()

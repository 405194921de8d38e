"""Batching policy: cuts, routing, errors, live drops, upload backpressure, close."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from service.batching import Batcher, BatcherClosed, Dropped


class Recorder:
    """Async batch function that records batches and can be held to keep the queue full."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        return [("done", i) for i in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_cut_by_size() -> None:
    rec = Recorder()
    async with Batcher(rec, max_batch_size=4, max_wait_ms=5000) as b:
        start = time.monotonic()
        out = await asyncio.gather(*(b.submit(i, stream_id="s") for i in range(8)))
        assert time.monotonic() - start < 1.0  # never waited for max_wait
    assert [len(x) for x in rec.batches] == [4, 4]
    assert out == [("done", i) for i in range(8)]
    assert b.batch_size_counts == {4: 2} and b.completed == 8 and b.queue_depth == 0


@pytest.mark.asyncio
async def test_cut_by_wait() -> None:
    rec = Recorder()
    async with Batcher(rec, max_batch_size=8, max_wait_ms=60) as b:
        await asyncio.gather(*(b.submit(i, kind="upload", stream_id="s") for i in range(3)))
    # Three uploads never fill a batch of 8: only the wait limit can have cut this batch
    # (without it the gather would never finish), and all three waited for it together.
    assert rec.batches == [[0, 1, 2]]
    assert b.batch_size_counts == {3: 1}


@pytest.mark.asyncio
async def test_live_items_do_not_wait_for_company() -> None:
    rec = Recorder()
    async with Batcher(rec, max_batch_size=8, max_wait_ms=60_000) as b:
        # An upload alone would wait a minute for company; a live item runs at once and
        # takes the queued upload along.
        upload = asyncio.ensure_future(b.submit("u", kind="upload", stream_id="file"))
        await settle()
        assert rec.batches == []
        live = await asyncio.wait_for(b.submit("l", kind="live", stream_id="cam"), timeout=5)
        assert live == ("done", "l") and (await upload) == ("done", "u")
    assert rec.batches == [["u", "l"]]


@pytest.mark.asyncio
async def test_streams_share_batches_and_results_are_routed() -> None:
    async def fn(items: list[tuple[str, int]]) -> list[str]:
        return [f"{s}:{i * 10}" for s, i in items]

    async with Batcher(fn, max_batch_size=16, max_wait_ms=20) as b:
        calls = [b.submit((s, i), stream_id=s) for s in "abc" for i in range(3)]
        out = await asyncio.gather(*calls)
    assert out == [f"{s}:{i * 10}" for s in "abc" for i in range(3)]
    assert b.batch_size_counts == {9: 1}


@pytest.mark.asyncio
async def test_sync_fn_runs_off_the_event_loop() -> None:
    threads: list[str] = []

    def fn(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        time.sleep(0.1)  # a blocking runtime call
        return [i + 1 for i in items]

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    async with Batcher(fn, name="det", max_batch_size=2, max_wait_ms=1) as b:
        out = await asyncio.gather(b.submit(1, stream_id="s"), b.submit(2, stream_id="s"))
    assert out == [2, 3]
    t.cancel()
    assert threads[0].startswith("batch-det") and ticks >= 5


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fn_result", "error"),
    [("raise", ValueError), ("short", RuntimeError)],
)
async def test_batch_errors_reach_every_caller(fn_result: str, error: type) -> None:
    def fn(items: list[int]) -> list[int]:
        if fn_result == "raise":
            raise ValueError("bad input")
        return items[:-1]

    async with Batcher(fn, max_batch_size=3, max_wait_ms=50) as b:
        out = await asyncio.gather(
            *(b.submit(i, stream_id=str(i)) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(e, error) for e in out)
        assert b.failed == 3
    # A failed batch does not stop the batcher.
    async with Batcher(lambda xs: xs, max_batch_size=1) as b2:
        assert await b2.submit(5, stream_id="s") == 5


async def fill(b: Batcher[Any, Any], rec: Recorder, items: list[tuple[str, str]]) -> list[Any]:
    """Hold the consumer on a first batch, then queue (kind, stream) items behind it."""
    rec.gate.clear()
    first = asyncio.create_task(b.submit("first", stream_id="x"))
    await rec.started.wait()
    tasks = [
        asyncio.create_task(b.submit(f"{s}{k}", kind=kind, stream_id=s))  # type: ignore[arg-type]
        for k, (kind, s) in enumerate(items)
    ]
    await settle()
    return [first, *tasks]


@pytest.mark.asyncio
async def test_live_drops_oldest_of_same_stream() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=3)
    first, a0, a1, b2 = await fill(b, rec, [("live", "a"), ("live", "a"), ("live", "b")])
    assert b.queue_depth == 3
    a3 = asyncio.create_task(b.submit("a3", kind="live", stream_id="a"))
    await settle()
    assert a0.done() and isinstance(a0.exception(), Dropped)
    assert a0.exception().reason == "live_behind"
    # Stream c has nothing pending: its new item is refused rather than evicting another's.
    with pytest.raises(Dropped, match="queue_full"):
        await b.submit("c0", kind="live", stream_id="c")
    rec.gate.set()
    assert await asyncio.gather(first, a1, b2, a3) == [
        ("done", "first"), ("done", "a1"), ("done", "b2"), ("done", "a3"),
    ]  # fmt: skip
    assert b.dropped == {"live_behind": 1, "queue_full": 1}
    await b.close()


@pytest.mark.asyncio
async def test_live_backlog_cap_per_stream() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=4, max_wait_ms=0, max_queue=10, live_max_pending=2)
    first, *live = await fill(b, rec, [("live", "a")] * 3 + [("live", "b")])
    assert isinstance(live[0].exception(), Dropped)
    assert b.dropped == {"live_backlog": 1}
    rec.gate.set()
    await asyncio.gather(first, *live[1:])
    await b.close()


@pytest.mark.asyncio
async def test_uploads_wait_instead_of_dropping() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=2)
    tasks = await fill(b, rec, [("upload", "f")] * 4)
    assert b.queue_depth == 2 and not any(t.done() for t in tasks)
    rec.gate.set()
    out = await asyncio.gather(*tasks)
    assert [o[1] for o in out] == ["first", "f0", "f1", "f2", "f3"]  # all ran, in order
    assert not b.dropped
    await b.close()


@pytest.mark.asyncio
async def test_close_fails_pending_and_waiting() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=1)
    first, queued, waiting = await fill(b, rec, [("upload", "f"), ("upload", "f")])
    close = asyncio.create_task(b.close())
    await settle()
    assert isinstance(queued.exception(), BatcherClosed)
    assert isinstance(waiting.exception(), BatcherClosed)
    rec.gate.set()  # the running batch finishes normally
    await close
    assert await first == ("done", "first")
    with pytest.raises(BatcherClosed):
        await b.submit(1, stream_id="s")


@pytest.mark.asyncio
async def test_cancelled_caller_leaves_the_queue() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=4, max_wait_ms=0, max_queue=4)
    first, gone, kept = await fill(b, rec, [("upload", "f"), ("upload", "f")])
    gone.cancel()
    await settle()
    assert b.queue_depth == 1
    rec.gate.set()
    await asyncio.gather(first, kept)
    assert rec.batches[-1] == ["f1"]
    await b.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"live_max_pending": 0}, "live_max_pending"),
    ],
)
def test_settings(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Batcher(lambda xs: xs, **kwargs)


@pytest.mark.asyncio
async def test_bad_kind() -> None:
    async with Batcher(lambda xs: xs) as b:
        with pytest.raises(ValueError, match="kind"):
            await b.submit(1, kind="batch", stream_id="s")  # type: ignore[arg-type]

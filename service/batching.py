"""Dynamic batching for one model graph (detector, backbone or head).

One ``Batcher`` per graph owns a bounded queue and a single consumer task::

    submit(item, kind, stream_id) --> [ bounded FIFO queue ] --> consumer task
         awaits its own future            |                     cut a batch: max_batch_size
                                          |                     items, or the oldest item has
                                          |                     waited max_wait_ms
                                          '-------------------> fn(items) in a worker thread
                                                                 -> resolve each future

Callers never share a lock: each request carries its own future (text-generation-inference's
queue design). Batches mix streams, in arrival order (FIFO, so uploads cannot starve).

When the queue is full:
  * ``kind="upload"``: the caller waits for space (backpressure up to the file reader).
  * ``kind="live"``: the oldest pending live item **of the same stream** is dropped (its caller
    gets ``Dropped("live_behind")``): a live stream that falls behind loses its stalest keyframe,
    not another stream's work. If that stream has nothing pending, the new item itself is
    refused with ``Dropped("queue_full")`` (a live caller must never block).
  * optionally ``live_max_pending`` caps each live stream's pending items even below a full
    queue (``Dropped("live_backlog")``), so one slow stream cannot fill the shared queue.

Gauges and counters are plain attributes updated where the state changes; the metrics layer
reads them (queue_depth, batch_size_counts, dropped, submitted, completed, failed).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, cast

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Kind = Literal["live", "upload"]

BatchFn = Callable[[list[Req]], Sequence[Resp]] | Callable[[list[Req]], Awaitable[Sequence[Resp]]]


class Dropped(Exception):
    """A live item was dropped before it ran; ``reason`` is also the counter's label."""

    def __init__(self, reason: str, stream_id: str) -> None:
        super().__init__(f"live item of stream {stream_id!r} dropped: {reason}")
        self.reason = reason
        self.stream_id = stream_id


class BatcherClosed(RuntimeError):
    """The batcher was closed before this item ran."""


@dataclass(eq=False)
class _Pending(Generic[Req, Resp]):
    item: Req
    kind: Kind
    stream_id: str
    future: asyncio.Future[Resp]
    enqueued_at: float


@dataclass(eq=False)  # identity semantics: a batcher owns a task and a queue
class Batcher(Generic[Req, Resp]):
    """Batches requests for one graph across streams.

    fn: runs one batch, ``fn(items) -> results`` (same length, same order). A plain function
        runs in this batcher's worker thread (ONNX Runtime releases the GIL, the event loop
        keeps serving); an ``async def`` is awaited on the loop.
    max_batch_size: larger -> better accelerator throughput, more latency per item and more
        memory per run. Use the graph's exported maximum batch.
    max_wait_ms: how long the oldest upload item may wait for company. Larger -> fuller
        batches under light load, but that wait is added latency; 0 runs whatever is queued at
        once. Live items never wait: a batch with one runs at once with whatever is queued.
    max_queue: pending items before backpressure/dropping. Larger absorbs bursts but lets a
        live stream fall further behind before anything is dropped.
    live_max_pending: optional per-live-stream cap on pending items (None = only the shared
        bound applies). 1-2 keeps a live stream's latency at about one batch.
    executor: worker for sync ``fn``; default: one thread owned by this batcher (one batch runs
        at a time, and the runtime parallelises inside it).
    """

    fn: BatchFn[Req, Resp]
    name: str = "batcher"
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    live_max_pending: int | None = None
    executor: Executor | None = None
    # gauges / counters
    queue_depth: int = field(default=0, init=False)
    batch_size_counts: Counter[int] = field(default_factory=Counter, init=False)
    dropped: Counter[str] = field(default_factory=Counter, init=False)
    submitted: Counter[str] = field(default_factory=Counter, init=False)
    completed: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError(
                f"Batcher {self.name}: need max_batch_size >= 1, max_queue >= 1, "
                f"max_wait_ms >= 0, got {self.max_batch_size}, {self.max_queue}, {self.max_wait_ms}"
            )
        if self.live_max_pending is not None and self.live_max_pending < 1:
            raise ValueError(f"Batcher {self.name}: live_max_pending must be >= 1 or None")
        # An object with `async def __call__` counts as async too.
        self._is_async = inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(
            type(self.fn).__call__
        )
        self._own_executor = self.executor is None and not self._is_async
        if self._own_executor:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{self.name}")
        self._queue: deque[_Pending[Req, Resp]] = deque()
        self._arrived = asyncio.Event()
        self._space = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------ callers

    async def submit(self, item: Req, *, kind: Kind = "live", stream_id: str) -> Resp:
        """Queue one item and wait for its result.

        Raises ``Dropped`` (live items only), ``BatcherClosed``, or whatever ``fn`` raised for
        the batch the item ran in.
        """
        if kind not in ("live", "upload"):
            raise ValueError(f"Batcher.submit: kind must be 'live' or 'upload', got {kind!r}")
        self._check_open()
        self._ensure_started()
        loop = asyncio.get_running_loop()
        self.submitted[kind] += 1
        if kind == "upload":
            if len(self._queue) >= self.max_queue:
                async with self._space:
                    await self._space.wait_for(
                        lambda: self._closed or len(self._queue) < self.max_queue
                    )
                self._check_open()
        else:
            self._make_room_for_live(stream_id)
        pending: _Pending[Req, Resp] = _Pending(
            item, kind, stream_id, loop.create_future(), loop.time()
        )
        self._queue.append(pending)
        self.queue_depth = len(self._queue)
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller gave up (e.g. its stream closed): do not spend a batch slot on it.
            if pending in self._queue:
                self._queue.remove(pending)
                self.queue_depth = len(self._queue)
            raise

    async def close(self) -> None:
        """Fail every pending item with BatcherClosed, let a running batch finish, stop."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(BatcherClosed(f"batcher {self.name} closed"))
        self._arrived.set()
        async with self._space:
            self._space.notify_all()
        if self._task is not None:
            await self._task
        if self._own_executor and self.executor is not None:
            self.executor.shutdown(wait=False)

    async def __aenter__(self) -> Batcher[Req, Resp]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise BatcherClosed(f"batcher {self.name} is closed")

    def _ensure_started(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}"
            )

    def _drop(self, victim: _Pending[Req, Resp], reason: str) -> None:
        self._queue.remove(victim)
        self.queue_depth = len(self._queue)
        self.dropped[reason] += 1
        if not victim.future.done():
            victim.future.set_exception(Dropped(reason, victim.stream_id))

    def _make_room_for_live(self, stream_id: str) -> None:
        mine = [p for p in self._queue if p.kind == "live" and p.stream_id == stream_id]
        if self.live_max_pending is not None and len(mine) >= self.live_max_pending:
            self._drop(mine[0], "live_backlog")
            return
        if len(self._queue) < self.max_queue:
            return
        if mine:
            self._drop(mine[0], "live_behind")
            return
        self.dropped["queue_full"] += 1
        raise Dropped("queue_full", stream_id)

    def _fail_all(self, exc: BaseException) -> None:
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(exc)
        self.queue_depth = 0

    async def _next_batch(self) -> list[_Pending[Req, Resp]]:
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._closed:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        # The wait budget counts from the oldest item's arrival, not from when this task got
        # to it: items that queued behind a running batch have already waited. A live item
        # never waits for company: the graph is idle, and every millisecond here is lag (under
        # load live batches still form, from the items that queue while a batch runs).
        while (
            len(self._queue) < self.max_batch_size
            and self._queue
            and not self._closed
            and not any(p.kind == "live" for p in self._queue)
        ):
            remaining = self._queue[0].enqueued_at + self.max_wait_ms / 1000 - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        n = min(len(self._queue), self.max_batch_size)
        batch = [self._queue.popleft() for _ in range(n)]
        self.queue_depth = len(self._queue)
        if batch:
            async with self._space:
                self._space.notify(len(batch))
        return batch

    async def _run_batch(self, batch: list[_Pending[Req, Resp]]) -> None:
        items = [p.item for p in batch]
        self.batch_size_counts[len(batch)] += 1
        try:
            if self._is_async:
                coro = cast(Callable[[list[Req]], Awaitable[Sequence[Resp]]], self.fn)(items)
                results = await coro
            else:
                sync_fn = cast(Callable[[list[Req]], Sequence[Resp]], self.fn)
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self.executor, sync_fn, items)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batcher {self.name}: batch function returned {len(results)} results "
                    f"for {len(batch)} items"
                )
        except Exception as exc:  # noqa: BLE001 - delivered to every caller of the batch
            self.failed += len(batch)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self.completed += len(batch)
        for p, r in zip(batch, results, strict=True):
            if not p.future.done():  # a caller may have been cancelled meanwhile
                p.future.set_result(r)

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch:
                    await self._run_batch(batch)
                elif self._closed:
                    return
        except asyncio.CancelledError:
            self._closed = True
            self._fail_all(BatcherClosed(f"batcher {self.name} cancelled"))
            raise
        except Exception as exc:
            # A bug here must not leave callers awaiting forever.
            log.exception("batcher %s: consumer stopped", self.name)
            self._closed = True
            self._fail_all(BatcherClosed(f"batcher {self.name} stopped: {exc!r}"))
            raise

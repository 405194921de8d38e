"""Long-term feature bank: the interface, its records, and the in-process implementation.

For every keyframe second ``t`` of a stream the pipeline stores the persons' RoI features
(``(N, D)``, ``N <= max_per_second``) under ``(stream_id, t)`` and reads back a window of
seconds around ``t`` for the LFB head (Wu et al., CVPR 2019; DESIGN.md "Bank"):

* live streams, causal:    ``window = (-60, 0)``  -> seconds ``[t-60, t]``
* files, second pass:      ``window = (-30, 30)`` -> seconds ``[t-30, t+30]``

``write_and_read`` does the write and the window read in one call, because the Redis bank must
do both in one round trip. Features are stored as float16 (half the bytes; the LFB head's
attention is insensitive to fp16 rounding of its inputs) and returned as float32.

Persons per second are capped at ``max_per_second`` when written: with ``scores`` given the
highest-scoring rows are kept, otherwise the first rows (callers pass persons sorted by detector
score, so both keep the most confident people). Kept rows stay in the caller's order.

Times ``t`` are integer seconds and must be consistent for a stream id across reconnects (for
live streams use wall-clock seconds), since a reconnected stream reads what was stored before.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from core.bank_layout import file_window, layout_window, live_window
from core.defaults import BANK_RETENTION_S

# A 61 s bundle's windows, by core.bank_layout's rule (the engine takes its own from the
# manifest's bank.live_window / bank.file_window).
LIVE_WINDOW = live_window(61)  # causal [t-60, t]
FILE_WINDOW = file_window(61)  # second pass [t-30, t+30], as in training

_STREAM_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,200}$")


@dataclass(frozen=True)
class BankWindow:
    """Bank rows of the seconds in a window, oldest second first.

    features: (W, D) float32; times: (W,) int64 absolute seconds; track_ids: (W,) int64.
    degraded: True when the window may lack seconds: part of it had to come from the shared
    store, which could not be reached, so it holds only what this process had in hand. A failed
    write-through alone does not degrade a window (this process holds what it wrote).
    """

    features: np.ndarray
    times: np.ndarray
    track_ids: np.ndarray
    degraded: bool = False

    @property
    def num_valid(self) -> int:
        return int(self.times.shape[0])

    def slotted(
        self, t: int, origin_s: int, seconds: int, persons: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The time-aware head's input: (seconds * persons, D) slot-aligned, and its mask.

        The same layout function as training's bank reader (core.bank_layout).
        """
        return layout_window(self.times, self.features, t, origin_s, seconds, persons)

    def padded(self, capacity: int) -> tuple[np.ndarray, np.ndarray]:
        """Fixed-size head input: (capacity, D) float32 zero-padded and (capacity,) bool mask.

        Keeps the newest rows when the window holds more than ``capacity``.
        """
        d = self.features.shape[1]
        out = np.zeros((capacity, d), dtype=np.float32)
        mask = np.zeros(capacity, dtype=bool)
        rows = self.features[-capacity:] if capacity else self.features[:0]
        out[: len(rows)] = rows
        mask[: len(rows)] = True
        return out, mask


@dataclass(frozen=True)
class BankStats:
    streams: int  # streams held in this process
    seconds: int  # seconds held in this process
    feature_bytes: int  # fp16 feature bytes held in this process
    calls: int  # write_and_read + read_window calls
    degraded: int  # calls answered with degraded=True (the window may lack seconds)
    redis_errors: int = 0  # failed Redis round trips (timeouts, connection errors)
    redis_skipped: int = 0  # calls that skipped Redis while the breaker was open
    round_trips: int = 0  # Redis round trips made


@runtime_checkable
class FeatureBank(Protocol):
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
        """Store second ``t``'s persons (features (N, D) float32) and return the window."""
        ...

    async def read_window(
        self, stream_id: str, t: int, window: tuple[int, int], max_per_second: int
    ) -> BankWindow:
        """Window around ``t`` without writing (the file second pass)."""
        ...

    async def drop_stream(self, stream_id: str) -> None: ...

    def new_stream(self, stream_id: str) -> None:
        """Declare ``stream_id`` new: made up by this process (a file job's generated id),
        so nothing of it is stored anywhere else and its windows never need the shared store."""
        ...

    def stats(self) -> BankStats: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- shared helpers


def check_stream_id(stream_id: str) -> str:
    # The id goes into a Redis key inside a {hash tag}: braces would break the tag.
    if not _STREAM_ID.match(stream_id):
        raise ValueError(
            f"bank: stream_id {stream_id!r} must be 1-200 characters of [A-Za-z0-9._:-]"
        )
    return stream_id


def check_window(window: tuple[int, int], retention_s: int, max_per_second: int) -> None:
    lo, hi = window
    if lo > hi:
        raise ValueError(f"bank: window {window} must be (lo, hi) with lo <= hi")
    if -lo > retention_s:
        raise ValueError(
            f"bank: window {window} reaches {-lo} s back but the bank keeps {retention_s} s; "
            "raise retention_s"
        )
    if max_per_second < 1:
        raise ValueError(f"bank: max_per_second must be >= 1, got {max_per_second}")


def prepare_rows(
    track_ids: np.ndarray,
    features: np.ndarray,
    scores: npt.ArrayLike | None,
    max_per_second: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and cap one second's rows -> (ids (n,) int64, features (n, D) float16)."""
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"bank: features must be (N, D), got shape {feats.shape}")
    ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != feats.shape[0]:
        raise ValueError(f"bank: {ids.shape[0]} track ids for {feats.shape[0]} feature rows")
    keep = np.arange(ids.shape[0])
    if ids.shape[0] > max_per_second:
        if scores is None:
            keep = keep[:max_per_second]
        else:
            s = np.asarray(scores, dtype=np.float64).reshape(-1)
            keep = np.sort(np.argsort(-s, kind="stable")[:max_per_second])
    return ids[keep], feats[keep].astype(np.float16)


Entry = tuple[np.ndarray, np.ndarray]  # (ids (n,) int64, features (n, D) float16)


def assemble(entries: list[tuple[int, Entry]], dim: int, *, degraded: bool) -> BankWindow:
    """Concatenate (second, entry) pairs sorted by second into a BankWindow."""
    entries = sorted(entries, key=lambda e: e[0])
    if not entries:
        return BankWindow(
            np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), degraded
        )
    feats = np.concatenate([f for _, (_, f) in entries]).astype(np.float32)  # (W, D)
    times = np.concatenate([np.full(len(i), s, np.int64) for s, (i, _) in entries])
    ids = np.concatenate([i for _, (i, _) in entries])
    return BankWindow(feats, times, ids, degraded)


@dataclass
class _Stream:
    seconds: dict[int, Entry] = field(default_factory=dict)
    dim: int = 0
    newest: int | None = None
    last_access: float = 0.0
    # Used by RedisBank only: the cache is authoritative for seconds >= known_from
    # (None: never synced), and seconds written here but not yet stored in Redis.
    known_from: int | None = None
    unsynced: set[int] = field(default_factory=set)


class StreamStore:
    """Per-stream second -> rows, trimmed to ``retention_s``, bounded in streams.

    Synchronous core shared by ``InProcessBank`` and the Redis bank's local cache.
    retention_s: seconds kept behind the newest written second. Must cover the widest window
        read (60 for a 61 s bundle: live reads 60 s back and the file pass runs 30 s behind the
        first). Default core.defaults.BANK_RETENTION_S. More -> memory.
    max_streams: streams held; the least recently used is evicted beyond it. Bounds memory
        when many short streams come and go.
    idle_ttl_s: a stream not touched for this long is evicted at the next access to the store
        (an abandoned live stream costs nothing after it).
    """

    def __init__(
        self,
        *,
        retention_s: int = BANK_RETENTION_S,
        max_streams: int = 1024,
        idle_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retention_s < 0 or max_streams < 1 or idle_ttl_s <= 0:
            raise ValueError(
                "StreamStore: need retention_s >= 0, max_streams >= 1, idle_ttl_s > 0, got "
                f"{retention_s}, {max_streams}, {idle_ttl_s}"
            )
        self.retention_s = retention_s
        self.max_streams = max_streams
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def stream(self, stream_id: str) -> _Stream:
        """Get (or create) a stream, marking it most recently used; evicts idle/LRU streams."""
        now = self._clock()
        st = self._streams.pop(stream_id, None)
        if st is None:
            st = _Stream()
        st.last_access = now
        self._streams[stream_id] = st
        # Oldest-first order: stop at the first stream that is recent enough.
        while self._streams:
            sid, old = next(iter(self._streams.items()))
            if len(self._streams) > self.max_streams or now - old.last_access > self.idle_ttl_s:
                del self._streams[sid]
            else:
                break
        return st

    def put(self, st: _Stream, t: int, ids: np.ndarray, feats16: np.ndarray) -> int:
        """Store second t (replacing it); trims old seconds. Returns the trim cutoff."""
        d = int(feats16.shape[1])
        if st.dim and d != st.dim:
            raise ValueError(f"bank: feature dim {d} differs from this stream's {st.dim}")
        st.dim = d
        st.seconds[t] = (ids, feats16)
        st.newest = t if st.newest is None else max(st.newest, t)
        cutoff = st.newest - self.retention_s
        for s in [s for s in st.seconds if s < cutoff]:
            del st.seconds[s]
        st.unsynced = {s for s in st.unsynced if s >= cutoff}
        return cutoff

    @staticmethod
    def window(st: _Stream, lo: int, hi: int, max_per_second: int) -> list[tuple[int, Entry]]:
        # Rows were capped when written; the slice only matters if a reader asks for fewer.
        return [
            (s, (ids[:max_per_second], f[:max_per_second]))
            for s, (ids, f) in st.seconds.items()
            if lo <= s <= hi
        ]

    def drop(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    def clear(self) -> None:
        self._streams.clear()

    def totals(self) -> tuple[int, int, int]:
        """(streams, seconds, fp16 feature bytes) held."""
        secs = sum(len(st.seconds) for st in self._streams.values())
        nbytes = sum(f.nbytes for st in self._streams.values() for _, f in st.seconds.values())
        return len(self._streams), secs, nbytes


class InProcessBank:
    """The embedded default: the bank lives in this process's memory (see StreamStore knobs).

    Memory per stream is bounded by retention: (retention_s + 1) * max_per_second * D * 2 bytes,
    e.g. 121 * 5 * 2304 * 2 = 2.8 MB for SlowFast R50 features.
    """

    def __init__(
        self,
        *,
        retention_s: int = BANK_RETENTION_S,
        max_streams: int = 1024,
        idle_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = StreamStore(
            retention_s=retention_s, max_streams=max_streams, idle_ttl_s=idle_ttl_s, clock=clock
        )
        self.calls = 0

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
        check_stream_id(stream_id)
        check_window(window, self.store.retention_s, max_per_second)
        ids, feats16 = prepare_rows(track_ids, features, scores, max_per_second)
        self.calls += 1
        st = self.store.stream(stream_id)
        self.store.put(st, int(t), ids, feats16)
        entries = self.store.window(st, t + window[0], t + window[1], max_per_second)
        return assemble(entries, st.dim, degraded=False)

    async def read_window(
        self, stream_id: str, t: int, window: tuple[int, int], max_per_second: int
    ) -> BankWindow:
        check_stream_id(stream_id)
        check_window(window, self.store.retention_s, max_per_second)
        self.calls += 1
        st = self.store.stream(stream_id)
        entries = self.store.window(st, t + window[0], t + window[1], max_per_second)
        return assemble(entries, st.dim, degraded=False)

    async def drop_stream(self, stream_id: str) -> None:
        self.store.drop(stream_id)

    def new_stream(self, stream_id: str) -> None:
        self.store.drop(check_stream_id(stream_id))

    def stats(self) -> BankStats:
        streams, secs, nbytes = self.store.totals()
        return BankStats(streams, secs, nbytes, self.calls, 0)

    async def close(self) -> None:
        self.store.clear()

"""In-process feature bank: windows, trimming, caps, bounds, validation."""

from __future__ import annotations

import numpy as np
import pytest

from core.defaults import BANK_RETENTION_S
from service.bank import FILE_WINDOW, LIVE_WINDOW, BankWindow, FeatureBank, InProcessBank


def rows(t: int, n: int, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (track ids (n,), features (n, d) float32) for second t."""
    rng = np.random.default_rng(t)
    return np.arange(1, n + 1) + 100 * t, rng.standard_normal((n, d)).astype(np.float32)


def fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def test_is_a_feature_bank() -> None:
    assert isinstance(InProcessBank(), FeatureBank)


@pytest.mark.asyncio
async def test_live_window_is_causal_and_ordered() -> None:
    bank = InProcessBank()
    for t in range(5):
        ids, f = rows(t, 2)
        w = await bank.write_and_read("cam", t, ids, f, LIVE_WINDOW, 5)
    assert w.times.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert w.track_ids.tolist()[-2:] == [401, 402]
    assert w.features.dtype == np.float32 and w.features.shape == (10, 8)
    np.testing.assert_array_equal(w.features[-2:], fp16(rows(4, 2)[1]))
    assert not w.degraded and w.num_valid == 10


@pytest.mark.asyncio
async def test_file_second_pass_reads_both_sides() -> None:
    bank = InProcessBank()
    for t in range(100):
        await bank.write_and_read("file", t, *rows(t, 1), LIVE_WINDOW, 5)
    # The second pass runs 30 s behind the first, so t+30 exists and t-30 is retained.
    w = await bank.read_window("file", 69, FILE_WINDOW, 5)
    assert w.times.tolist() == list(range(39, 99 + 1))


@pytest.mark.asyncio
async def test_trimmed_to_retention() -> None:
    bank = InProcessBank(retention_s=60)
    for t in range(100):
        await bank.write_and_read("cam", t, *rows(t, 1), LIVE_WINDOW, 5)
    assert bank.stats().seconds == 61
    w = await bank.read_window("cam", 99, (-60, 0), 5)
    assert w.times[0] == 39 and w.num_valid == 61


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("scores", "kept"),
    [
        (None, [0, 1, 2]),  # first rows (callers sort by detector score)
        ([0.1, 0.9, 0.5, 0.8, 0.2], [1, 2, 3]),  # highest scores, caller's order kept
    ],
)
async def test_cap_per_second(scores: list[float] | None, kept: list[int]) -> None:
    bank = InProcessBank()
    ids, f = np.arange(5), np.arange(5, dtype=np.float32)[:, None].repeat(4, 1)
    w = await bank.write_and_read("cam", 0, ids, f, LIVE_WINDOW, 3, scores=scores)
    assert w.track_ids.tolist() == kept


@pytest.mark.asyncio
async def test_rewrite_replaces_second_and_empty_second() -> None:
    bank = InProcessBank()
    await bank.write_and_read("cam", 0, *rows(0, 3), LIVE_WINDOW, 5)
    w = await bank.write_and_read("cam", 0, *rows(7, 1), LIVE_WINDOW, 5)
    assert w.track_ids.tolist() == [701]
    w = await bank.write_and_read("cam", 1, np.zeros(0), np.zeros((0, 8)), LIVE_WINDOW, 5)
    assert w.features.shape == (1, 8)
    empty = await bank.read_window("unknown", 0, LIVE_WINDOW, 5)
    assert empty.num_valid == 0


@pytest.mark.asyncio
async def test_streams_bounded_lru_and_idle_ttl() -> None:
    now = [0.0]
    bank = InProcessBank(max_streams=2, idle_ttl_s=10.0, clock=lambda: now[0])
    for sid in ["a", "b", "c"]:
        await bank.write_and_read(sid, 0, *rows(0, 1), LIVE_WINDOW, 5)
    assert bank.stats().streams == 2
    assert (await bank.read_window("a", 0, LIVE_WINDOW, 5)).num_valid == 0  # evicted (LRU)
    now[0] = 100.0  # everything idle past the TTL
    await bank.write_and_read("d", 0, *rows(0, 1), LIVE_WINDOW, 5)
    assert bank.stats().streams == 1
    await bank.drop_stream("d")
    assert bank.stats().streams == 0


def test_padded_window() -> None:
    w = BankWindow(np.ones((3, 4), np.float32), np.arange(3), np.arange(3))
    feats, mask = w.padded(5)
    assert feats.shape == (5, 4) and mask.tolist() == [True, True, True, False, False]
    feats, mask = w.padded(2)  # newest rows kept
    assert mask.all() and feats.shape == (2, 4)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("stream_id", "ids", "feats", "window", "cap", "error"),
    [
        ("cam{1}", [1], np.zeros((1, 8)), LIVE_WINDOW, 5, "stream_id"),
        ("", [1], np.zeros((1, 8)), LIVE_WINDOW, 5, "stream_id"),
        ("cam", [1], np.zeros(8), LIVE_WINDOW, 5, r"\(N, D\)"),
        ("cam", [1, 2], np.zeros((1, 8)), LIVE_WINDOW, 5, "2 track ids for 1"),
        ("cam", [1], np.zeros((1, 8)), (0, -1), 5, "lo <= hi"),
        ("cam", [1], np.zeros((1, 8)), (-BANK_RETENTION_S - 1, 0), 5, "retention_s"),
        ("cam", [1], np.zeros((1, 8)), LIVE_WINDOW, 0, "max_per_second"),
        ("cam", [1], np.zeros((1, 9)), LIVE_WINDOW, 5, "dim 9"),
    ],
)
async def test_validation(
    stream_id: str, ids: list[int], feats: np.ndarray, window: tuple[int, int], cap: int, error: str
) -> None:
    bank = InProcessBank()
    await bank.write_and_read("cam", 0, *rows(0, 1), LIVE_WINDOW, 5)  # sets D = 8
    with pytest.raises(ValueError, match=error):
        await bank.write_and_read(stream_id, 1, np.asarray(ids), feats, window, cap)

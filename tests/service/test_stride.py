"""Live keyframe stride (service/stride.py): the choice, its hysteresis, the engine's use of it,
and what the WebSocket status says (issue 18)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tiny_bundle as tb

from service.bank import BankWindow, InProcessBank
from service.decode import decode_frames
from service.engine import Engine, EngineSettings
from service.runtime import RuntimeSettings
from service.stride import StrideController, choose_stride, ordinal


@pytest.mark.parametrize(
    ("model_s", "want"),
    [(0.05, 1), (0.8, 1), (0.81, 2), (1.15, 2), (1.7, 3), (2.5, 4), (100.0, 10), (0.0, 1)],
)
def test_choose_stride_keeps_20_percent_slack(model_s: float, want: int) -> None:
    assert choose_stride(model_s, 1.0) == want


def test_choose_stride_follows_the_keyframe_period() -> None:
    assert choose_stride(1.0, 0.5) == 3  # 2 keyframes a second: 0.4 s of budget each
    with pytest.raises(ValueError, match="period_s"):
        choose_stride(1.0, 0.0)


def test_stride_goes_up_at_once_and_down_only_with_margin() -> None:
    c = StrideController()
    assert c.stride == 1 and c.keep(3.0)
    c.observe(1.15)  # an R50 keyframe on two cores
    assert c.stride == 2 and c.changes == 1
    assert [t for t in range(8) if c.keep(float(t))] == [0, 2, 4, 6]
    # Slightly faster keyframes would fit stride 1 by themselves but not with the margin.
    for _ in range(20):
        c.observe(0.7)
    assert c.stride == 2
    for _ in range(20):
        c.observe(0.3)
    assert c.stride == 1 and c.changes == 2
    status = c.status()
    assert status["keyframe_stride"] == 1 and status["stride_reason"] == "every keyframe annotated"


def test_ordinal() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd",
    ]  # fmt: skip


def test_seed_only_before_measurements() -> None:
    c = StrideController()
    c.seed(2.5)
    assert c.stride == 4
    assert "every 4th keyframe" in str(c.status()["stride_reason"])
    c.seed(0.01)  # ignored: there is an estimate already
    assert c.stride == 4


class _Bank(InProcessBank):
    def __init__(self) -> None:
        super().__init__(retention_s=120)
        self.writes: list[int] = []

    async def write_and_read(self, stream_id: str, t: int, *a: Any, **kw: Any) -> BankWindow:
        self.writes.append(t)
        return await super().write_and_read(stream_id, t, *a, **kw)


def test_live_stream_slower_than_real_time_annotates_every_kth_keyframe(tmp_path: Path) -> None:
    """A backbone that takes 0.25 s against a 0.1 s budget per keyframe (headroom 0.1 of a
    1 s period): after the first keyframe the stream annotates only multiples of the stride,
    skips the rest before detection, writes the bank only for annotated seconds and says so
    in its status; every keyframe is answered, skipped or counted as dropped."""
    bundle = tb.make_bundle(tmp_path / "b")
    video = tb.make_video(tmp_path / "v.mp4", seconds=12.1, fps=10, size=(160, 120))
    frames = [(f.pts_seconds, f.image) for f in decode_frames(video, isolated=False)]

    async def main() -> tuple[list[float], dict[str, Any], list[int], int]:
        bank = _Bank()
        settings = EngineSettings(
            runtime=RuntimeSettings(intra_op_threads=1), isolated_decode=False, live_max_pending=16
        )
        engine = Engine(bundle, settings=settings, bank=bank)
        engine.backbone = tb.SlowRuntime(engine.backbone, 0.25)  # type: ignore[assignment]
        live = engine.live_session("slow")
        live.stride.headroom = 0.1
        for pts, img in frames:
            await live.push_frame(img, pts)
            await live.keyframes_idle(2.0)  # a paced client: one keyframe at a time
        await live.end()
        got = [batch.time for batch in [x async for x in live.results()]]  # type: ignore[attr-defined]
        status = live.status()
        dropped = engine.stats.counters["keyframes_dropped"]
        assert engine.live_stride() == status["keyframe_stride"]
        await live.close()
        await engine.close()
        return got, status, bank.writes, dropped

    got, status, writes, dropped = asyncio.run(main())
    stride = status["keyframe_stride"]
    assert stride >= 3, status
    assert f"every {ordinal(stride)} keyframe" in status["stride_reason"]
    assert status["keyframes_skipped"] >= 6
    assert len(got) + status["keyframes_skipped"] + dropped == 13
    assert got[0] == 0.0 and all(t % stride == 0 for t in got[2:]), got
    assert sorted(writes) == [int(t) for t in got]  # the bank holds annotated seconds only


def test_status_message_states_the_stride_and_a_reading_client_is_not_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.routes import streams
    from service.settings import Settings

    monkeypatch.setattr(streams, "STATUS_EVERY_S", 0.01)
    stride = StrideController()
    stride.observe(2.0)
    session = SimpleNamespace(status=lambda: {**stride.status(), "keyframes_skipped": 7})
    engine = SimpleNamespace(
        manifest=SimpleNamespace(keyframe_rate=1.0), live_session=lambda *a, **k: session
    )
    service = SimpleNamespace(settings=Settings(live_max_lag_s=0.05), engine=engine, metrics=None)
    start = streams.StartMessage(type="start", input="jpeg")
    conn = streams._Connection(None, service, start, "bank", "s")  # type: ignore[arg-type]
    message = conn.status_message()
    assert message["type"] == "status" and message["keyframe_stride"] == 3
    assert message["keyframes_skipped"] == 7 and "every 3rd keyframe" in message["stride_reason"]
    # Far behind the stream (lag 30 s) but reading: the monitor keeps the connection open.
    conn.stats.lag_s = 30.0

    async def watch() -> None:
        task = asyncio.create_task(conn.monitor())
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()

    asyncio.run(watch())
    assert conn.close_code == streams.WS_NORMAL
    statuses = [m for m in conn.outbox if m["type"] == "status"]
    assert statuses and statuses[-1]["keyframe_stride"] == 3

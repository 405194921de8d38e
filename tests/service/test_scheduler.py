"""Keyframe scheduler: when a keyframe is due for detection and when its clip is complete."""

from __future__ import annotations

import re

import pytest

from service.scheduler import MAX_PTS_S, InvalidPts, KeyframeScheduler, PtsGap


def _run(s: KeyframeScheduler, pts: list[float]) -> list[tuple[float, list[float], list[float]]]:
    return [(p, *s.update(p)) for p in pts]


@pytest.mark.parametrize(
    ("after_s", "pts", "expect_detect", "expect_clip"),
    [
        # causal: detection and clip are due on the first frame at/after t
        (
            0.0,
            [0.0, 0.4, 0.8, 1.2, 1.6, 2.0],
            {0.0: 0.0, 1.0: 1.2, 2.0: 2.0},
            {0.0: 0.0, 1.0: 1.2, 2.0: 2.0},
        ),
        # center with half a clip (0.5 s): the clip waits for t + 0.5
        (0.5, [0.0, 0.4, 0.8, 1.2, 1.6, 2.0], {0.0: 0.0, 1.0: 1.2, 2.0: 2.0}, {0.0: 0.8, 1.0: 1.6}),
        # stream starting mid-second: first keyframe is the next whole second
        (0.2, [3.3, 3.7, 4.1, 4.5], {4.0: 4.1}, {4.0: 4.5}),
    ],
)
def test_due_times(
    after_s: float,
    pts: list[float],
    expect_detect: dict[float, float],
    expect_clip: dict[float, float],
) -> None:
    s = KeyframeScheduler(keyframe_rate=1.0, after_s=after_s)
    detect, clip = {}, {}
    for p, d, c in _run(s, pts):
        detect.update({t: p for t in d})
        clip.update({t: p for t in c})
    assert detect == expect_detect
    assert clip == expect_clip


def test_finish_releases_remaining_clips_in_order() -> None:
    s = KeyframeScheduler(keyframe_rate=1.0, after_s=1.0)
    _run(s, [i / 10 for i in range(0, 26)])  # 0.0 .. 2.5
    assert s.next_clip_time == 2.0  # clips of 0 and 1 due; 2 needs 3.0
    detect, clips = s.finish()
    assert detect == [] and clips == [2.0]
    with pytest.raises(RuntimeError):
        s.update(3.0)
    s.reset()
    assert s.update(0.0) == ([0.0], [])


def test_keyframe_rate_two_per_second() -> None:
    s = KeyframeScheduler(keyframe_rate=2.0, after_s=0.0)
    got = [t for _, d, _ in _run(s, [0.0, 0.3, 0.6, 0.9, 1.2]) for t in d]
    assert got == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(("rate", "after"), [(0.0, 0.0), (1.0, -0.1)])
def test_rejects_bad_settings(rate: float, after: float) -> None:
    with pytest.raises(ValueError):
        KeyframeScheduler(keyframe_rate=rate, after_s=after)


# -- bounded backlog: a pts jump is refused, never filled in keyframe by keyframe -------------


@pytest.mark.parametrize(
    ("bad", "expect"),
    [
        (float("nan"), "pts nan"),
        (float("inf"), "pts inf"),
        (-1.0, "pts -1.0"),
        (1e308, "pts 1e+308"),
        (MAX_PTS_S * 2, "4294967296"),
    ],
)
def test_invalid_pts_refused_without_changing_state(bad: float, expect: str) -> None:
    s = KeyframeScheduler(keyframe_rate=1.0, after_s=0.5)
    _run(s, [0.0, 0.4])
    with pytest.raises(InvalidPts, match=re.escape(expect)):
        s.update(bad)
    # The stream is not poisoned: the next valid frame carries on as if the bad one never came.
    assert s.update(1.0) == ([1.0], [0.0])


@pytest.mark.parametrize("jump", [10.5, 300.0, 1e6, MAX_PTS_S - 1.0])
def test_forward_jump_over_max_gap_is_refused(jump: float) -> None:
    s = KeyframeScheduler(keyframe_rate=1.0, after_s=0.5, max_gap_s=10.0)
    _run(s, [0.0, 0.4])
    with pytest.raises(PtsGap, match="max_gap_s=10"):
        s.update(0.4 + jump)
    assert s.update(1.0) == ([1.0], [0.0])  # state untouched


def test_jump_within_max_gap_fills_in_a_bounded_backlog() -> None:
    s = KeyframeScheduler(keyframe_rate=2.0, after_s=0.0, max_gap_s=10.0)
    s.update(0.0)
    detect, clips = s.update(10.0)
    assert detect == [i / 2 for i in range(1, 21)] and clips == detect  # 20 = gap * rate


def test_new_segment_after_a_gap_starts_at_the_new_frame() -> None:
    s = KeyframeScheduler(keyframe_rate=1.0, after_s=1.0, max_gap_s=10.0)
    _run(s, [0.0, 0.5, 1.0, 1.5])
    assert s.is_gap(300.0) and not s.is_gap(11.5)
    _, flushed = s.finish()  # what StreamSession does at a gap
    assert flushed == [1.0]
    s.reset()
    assert s.update(300.0) == ([300.0], [])
    assert s.update(301.0) == ([301.0], [300.0])


def test_max_gap_must_be_positive_and_finite() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_gap_s"):
            KeyframeScheduler(max_gap_s=bad)

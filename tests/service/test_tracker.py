"""ByteTracker on synthetic 1 Hz scenes, plus hand-made cases for the tracking metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from track_metrics import Row, evaluate_tracks

from core.boxes import iou_matrix
from service.tracker import ByteTracker
from service.types import Detections, TrackedPersons


@dataclass
class Walker:
    gt_id: int
    x: float  # box centre at t=0, pixels
    y: float
    vx: float  # pixels per second
    vy: float
    h: float = 200.0  # box height; width = 0.4 h (a standing person)


def walker_box(w: Walker, t: float) -> np.ndarray:
    cx, cy = w.x + w.vx * t, w.y + w.vy * t
    half_w, half_h = 0.2 * w.h, 0.5 * w.h
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def run_scene(
    walkers: list[Walker],
    seconds: int,
    *,
    missing: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
    low: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
    noise_px: float = 2.0,
    tracker: ByteTracker | None = None,
) -> tuple[list[Row], list[Row], list[TrackedPersons]]:
    """Run the tracker at 1 Hz. (gt_id, t) in `missing` -> no detection; in `low` -> score 0.3."""
    rng = np.random.default_rng(0)
    tracker = tracker or ByteTracker()
    gt: list[Row] = []
    pred: list[Row] = []
    outs: list[TrackedPersons] = []
    for t in range(seconds):
        boxes, scores = [], []
        for w in walkers:
            box = walker_box(w, t)
            gt.append((t, w.gt_id, box.tolist()))
            if (w.gt_id, t) in missing:
                continue
            boxes.append(box + rng.normal(0, noise_px, 4))
            scores.append(0.3 if (w.gt_id, t) in low else 0.9)
        dets = Detections(
            np.asarray(boxes).reshape(-1, 4), np.asarray(scores), np.zeros(len(boxes))
        )
        out = tracker.update(dets, float(t))
        outs.append(out)
        pred.extend((t, int(i), b.tolist()) for i, b in zip(out.track_ids, out.boxes, strict=True))
    return gt, pred, outs


def ids_of(gt: list[Row], pred: list[Row], gt_id: int) -> list[int]:
    """Predicted ids that matched gt_id (IoU >= 0.5), in time order."""
    found = []
    for t, g, box in gt:
        if g != gt_id:
            continue
        cands = [(p, pb) for (pt, p, pb) in pred if pt == t]
        for p, pb in cands:
            if iou_matrix(np.asarray([box]), np.asarray([pb]))[0, 0] >= 0.5:
                found.append(p)
    return found


def test_linear_walkers_keep_ids() -> None:
    # Lateral walkers move 0.8 box heights per keyframe: disjoint boxes on the first step.
    walkers = [
        Walker(1, 100, 300, 160, 0),
        Walker(2, 1500, 320, -150, 10),
        Walker(3, 800, 200, 0, 60),
        Walker(4, 700, 700, 5, -3),  # nearly standing still
    ]
    gt, pred, _ = run_scene(walkers, 8)
    m = evaluate_tracks(gt, pred)
    assert m.id_switches == 0
    assert m.idf1 == pytest.approx(1.0)
    assert m.misses == 0 and m.false_positives == 0


def test_crossing_paths_no_switch() -> None:
    # Two people walking towards each other; their boxes overlap heavily around t = 4-5.
    walkers = [Walker(1, 200, 400, 150, 0), Walker(2, 1550, 420, -150, 0)]
    gt, pred, _ = run_scene(walkers, 10)
    m = evaluate_tracks(gt, pred)
    assert m.id_switches == 0
    assert m.idf1 == pytest.approx(1.0)
    assert len(set(ids_of(gt, pred, 1))) == 1 and len(set(ids_of(gt, pred, 2))) == 1


@pytest.mark.parametrize("gap", [1, 2])
def test_missing_detections_keep_id(gap: int) -> None:
    walkers = [Walker(1, 200, 400, 120, 0), Walker(2, 900, 400, 0, 40)]
    missing = {(1, 4 + k) for k in range(gap)}
    gt, pred, _ = run_scene(walkers, 10, missing=missing)
    assert len(set(ids_of(gt, pred, 1))) == 1
    assert evaluate_tracks(gt, pred).id_switches == 0


def test_low_score_during_occlusion_continues_track() -> None:
    walkers = [Walker(1, 200, 400, 120, 0)]
    low = {(1, 3), (1, 4)}
    gt, pred, outs = run_scene(walkers, 8, low=low)
    assert [len(o) for o in outs] == [1] * 8  # the low-score boxes are returned too
    assert len(set(ids_of(gt, pred, 1))) == 1


def test_low_score_never_starts_a_track() -> None:
    tr = ByteTracker()
    box = np.array([[10.0, 10.0, 50.0, 110.0]])
    for t in range(3):
        out = tr.update(Detections(box, [0.3], [0]), float(t))
        assert len(out) == 0
    assert tr.num_tracks == 0


def test_lost_beyond_max_lost_gets_new_id_and_ids_never_reused() -> None:
    tr = ByteTracker(max_lost=1)
    box = np.array([[100.0, 100.0, 180.0, 300.0]])
    det = Detections(box, [0.9], [0])
    none = Detections.empty()
    assert tr.update(det, 0.0).track_ids.tolist() == [1]
    tr.update(none, 1.0)
    tr.update(none, 2.0)  # lost for 2 > max_lost updates -> removed
    assert tr.update(det, 3.0).track_ids.tolist() == [2]
    tr.reset()
    assert tr.update(det, 0.0).track_ids.tolist() == [3]


def test_dropped_keyframe_uses_time_gap() -> None:
    # The batcher may drop a live keyframe: the Kalman step must use dt = 2 s.
    w = Walker(1, 200, 400, 150, 0)
    tr = ByteTracker()
    ids = []
    for t in [0, 1, 2, 4, 5, 7]:
        out = tr.update(Detections(walker_box(w, t)[None], [0.9], [0]), float(t))
        ids.extend(out.track_ids.tolist())
    assert ids == [1] * 6


def test_time_must_increase() -> None:
    tr = ByteTracker()
    tr.update(Detections.empty(), 1.0)
    with pytest.raises(ValueError, match="time_s must increase"):
        tr.update(Detections.empty(), 1.0)


def test_output_follows_detection_order() -> None:
    tr = ByteTracker()
    boxes = np.array([[0, 0, 40, 100], [500, 0, 540, 100], [900, 0, 940, 100.0]])
    out = tr.update(Detections(boxes, [0.9, 0.2, 0.8], [0, 0, 0]), 0.0)
    assert out.det_index.tolist() == [0, 2]
    np.testing.assert_array_equal(out.boxes, boxes[[0, 2]].astype(np.float32))
    assert [t.track_id for t in out] == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, None),
        ({"track_thresh": 0.7, "new_track_thresh": 0.6}, "new_track_thresh"),
        ({"max_lost": -1}, "max_lost"),
        ({"gate_chi2": 0.0}, "gate_chi2"),
    ],
)
def test_tracker_settings(kwargs: dict[str, float], error: str | None) -> None:
    if error is None:
        ByteTracker(**kwargs)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match=error):
            ByteTracker(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("boxes", "scores", "error"),
    [
        ([[0, 0, 1, 1]], [0.5], None),
        ([], [], None),
        ([[0, 0, 1]], [0.5], r"shape \(N, 4\)"),
        ([[0, 0, 1, 1]], [0.5, 0.6], "one per box"),
        ([[2, 0, 1, 1]], [0.5], "x2 >= x1"),
        ([[0, 0, np.nan, 1]], [0.5], "NaN"),
    ],
)
def test_detections_validation(boxes: list, scores: list, error: str | None) -> None:
    if error is None:
        d = Detections(np.asarray(boxes), scores, np.zeros(len(scores)))
        assert d.boxes.dtype == np.float32 and d.boxes.shape == (len(scores), 4)
    else:
        with pytest.raises(ValueError, match=error):
            Detections(np.asarray(boxes), scores, np.zeros(len(scores)))


def test_detections_mask_and_merge() -> None:
    d = Detections(np.array([[0, 0, 1, 1], [0, 0, 2, 2.0]]), [0.2, 0.9], [0, 0])
    hi = d[d.scores > 0.5]
    assert len(hi) == 1 and hi.scores[0] == pytest.approx(0.9)
    merged = Detections.merge([d, hi, Detections.empty()])
    assert len(merged) == 3 and merged.class_ids.dtype == np.int64
    assert len(Detections.merge([])) == 0
    assert len(d[1]) == 1 and d[1].scores[0] == pytest.approx(0.9)


def test_tracked_persons_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="unique"):
        TrackedPersons([1, 1], np.zeros((2, 4)), [0.9, 0.9], [0, 1])


# ---------------------------------------------------------------- metrics

B0 = [0.0, 0.0, 10.0, 10.0]
B1 = [100.0, 0.0, 110.0, 10.0]


def test_metrics_perfect() -> None:
    gt = [(t, 1, B0) for t in range(4)] + [(t, 2, B1) for t in range(4)]
    pred = [(t, 7, B0) for t in range(4)] + [(t, 9, B1) for t in range(4)]
    m = evaluate_tracks(gt, pred)
    assert (m.id_switches, m.idf1, m.mota, m.idtp) == (0, 1.0, 1.0, 8)


def test_metrics_one_fragmentation() -> None:
    # One person, the tracker changes id halfway: 1 switch, best pairing covers 2 of 4 frames.
    gt = [(t, 1, B0) for t in range(4)]
    pred = [(0, 1, B0), (1, 1, B0), (2, 2, B0), (3, 2, B0)]
    m = evaluate_tracks(gt, pred)
    assert m.id_switches == 1
    assert m.idtp == 2 and m.idfn == 2 and m.idfp == 2
    assert m.idf1 == pytest.approx(0.5)
    assert m.mota == pytest.approx(1 - 1 / 4)


def test_metrics_swap_between_two_people() -> None:
    gt = [(t, 1, B0) for t in range(4)] + [(t, 2, B1) for t in range(4)]
    pred = [(t, 1 if t < 2 else 2, B0) for t in range(4)]
    pred += [(t, 2 if t < 2 else 1, B1) for t in range(4)]
    m = evaluate_tracks(gt, pred)
    assert m.id_switches == 2
    assert m.idf1 == pytest.approx(0.5)
    assert m.mota == pytest.approx(1 - 2 / 8)


def test_metrics_misses_and_false_positives() -> None:
    gt = [(0, 1, B0), (1, 1, B0), (2, 1, B0)]
    pred = [(0, 5, B0), (1, 5, B1), (2, 5, B0)]  # frame 1: wrong place -> 1 FN + 1 FP
    m = evaluate_tracks(gt, pred)
    assert (m.misses, m.false_positives, m.id_switches) == (1, 1, 0)
    assert m.idf1 == pytest.approx(2 * 2 / 6)
    assert m.mota == pytest.approx(1 - 2 / 3)


def random_scene(seed: int, n: int = 10, seconds: int = 40) -> tuple[list[Row], list[Row]]:
    """n people with random speeds up to 160 px/s that turn a little every second; 5% of boxes
    missing, 5% low-score (occluded). Box heights 150-300 px."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([100, 200], [1800, 900], (n, 2))
    vel = rng.uniform(-1, 1, (n, 2)) * rng.uniform(0, 160, (n, 1))
    h = rng.uniform(150, 300, n)
    tracker = ByteTracker()
    gt: list[Row] = []
    pred: list[Row] = []
    for t in range(seconds):
        vel += rng.normal(0, 20, vel.shape)
        boxes, scores = [], []
        for i in range(n):
            (cx, cy), hh = pos[i], h[i]
            box = np.array([cx - 0.2 * hh, cy - 0.5 * hh, cx + 0.2 * hh, cy + 0.5 * hh])
            gt.append((t, i, box.tolist()))
            u = rng.random()
            if u < 0.05:
                continue
            boxes.append(box + rng.normal(0, 0.02 * hh, 4))
            scores.append(0.3 if u < 0.10 else rng.uniform(0.6, 1.0))
        pos += vel
        dets = Detections(
            np.asarray(boxes).reshape(-1, 4), np.asarray(scores), np.zeros(len(boxes))
        )
        out = tracker.update(dets, float(t))
        pred.extend((t, int(i), b.tolist()) for i, b in zip(out.track_ids, out.boxes, strict=True))
    return gt, pred


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_crowd_idf1(seed: int) -> None:
    # Measured (seeds 0-11): IDF1 0.936-0.982 (mean 0.967), ID switches 0-8 per 40 s scene of
    # 10 people. The switches happen in the first seconds, when every track is new and
    # overlapping people step in unknown directions (no appearance cue is used).
    m = evaluate_tracks(*random_scene(seed))
    assert m.idf1 >= 0.92 and m.false_positives == 0

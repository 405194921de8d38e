"""The world's script and labels, without rendering: geometry, imbalance, long-term rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.ava import AVA_NAMES, POSE_IDS
from training.world import classes as C
from training.world.figures import NUM_JOINTS, pose_at, skeleton
from training.world.generate import class_counts, imbalance_ratio, item_seed
from training.world.scenario import (
    FIRST_KEYFRAME,
    KeyframeLabel,
    Stage,
    VideoScript,
    WorldParams,
    _visible_fraction,
    annotate,
    make_classification_script,
    make_video_script,
)

STAGE = Stage(320, 240, 15)
# Half a 2.1 s clip plus margin: evidence must lie outside every labelled keyframe's clip.
CLIP_HALF = 1.5


def _world(
    n: int, seconds: int = 60, split: str = "train", seed: int = 0
) -> list[tuple[VideoScript, list[KeyframeLabel]]]:
    out = []
    for i in range(n):
        script = make_video_script(
            f"{split}_{i:03d}", item_seed(seed, split, i), STAGE, WorldParams(seconds, 2, 4)
        )
        out.append((script, annotate(script)))
    return out


@pytest.fixture(scope="module")
def default_train() -> list[tuple[VideoScript, list[KeyframeLabel]]]:
    """The train split of the default world (8 videos of 60 s, seed 0), unrendered."""
    return _world(8)


def test_classes_are_real_ava_ids() -> None:
    kinds = {c.kind for c in C.WORLD_CLASSES}
    assert kinds == {"pose", "interaction", "event", "long_term"}
    assert len(C.WORLD_CLASSES) >= 8
    assert sum(c.kind == "pose" for c in C.WORLD_CLASSES) >= 4
    assert sum(c.kind == "interaction" for c in C.WORLD_CLASSES) >= 2
    assert sum(c.kind == "long_term" for c in C.WORLD_CLASSES) >= 2
    for c in C.WORLD_CLASSES:
        assert c.name == AVA_NAMES[c.id - 1]


def test_imbalance_ratio_on_default_world(
    default_train: list[tuple[VideoScript, list[KeyframeLabel]]],
) -> None:
    counts = class_counts([k for _, labels in default_train for k in labels])
    assert all(counts[c.id] > 0 for c in C.WORLD_CLASSES), counts
    assert imbalance_ratio(counts) >= C.IMBALANCE_MIN_RATIO, counts


def test_exactly_one_pose_per_person_and_boxes_valid(
    default_train: list[tuple[VideoScript, list[KeyframeLabel]]],
) -> None:
    for script, labels in default_train:
        seen = set()
        for k in labels:
            assert sum(a in POSE_IDS for a in k.labels) == 1, k
            assert len(set(k.labels)) == len(k.labels)
            x1, y1, x2, y2 = k.box
            assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0, k
            assert FIRST_KEYFRAME <= k.timestamp <= script.seconds - FIRST_KEYFRAME
            assert (k.timestamp, k.person_id) not in seen
            seen.add((k.timestamp, k.person_id))


def test_long_term_labels_have_evidence_10s_before_and_outside_the_clip(
    default_train: list[tuple[VideoScript, list[KeyframeLabel]]],
) -> None:
    positives = 0
    for script, labels in default_train:
        assert {ev.state_id for ev in script.evidence} == set(C.LONG_TERM)
        for k in labels:
            for state_id in set(k.labels) & set(C.LONG_TERM):
                positives += 1
                evidence = [
                    ev
                    for ev in script.evidence
                    if ev.person_id == k.person_id and ev.state_id == state_id
                ]
                assert len(evidence) == 1, (script.video_id, k)
                ev = evidence[0]
                gap = k.timestamp - ev.time
                assert C.LONG_TERM_MIN_GAP <= gap <= C.LONG_TERM_MAX_GAP
                # The whole event (start .. prop vanishes) is outside the clip window.
                assert ev.time < k.timestamp - CLIP_HALF
                assert ev.event_id == C.LONG_TERM[state_id][0]
    assert positives > 50


def test_bank_window_sees_evidence_exactly_when_the_label_is_on(
    default_train: list[tuple[VideoScript, list[KeyframeLabel]]],
) -> None:
    # The design promise of the card: within +-30 s of a person's evidence, every annotated
    # keyframe of theirs is either labelled or shows the event itself.
    for script, labels in default_train:
        for ev in script.evidence:
            for k in labels:
                if k.person_id != ev.person_id or abs(k.timestamp - ev.time) > 30:
                    continue
                assert ev.state_id in k.labels or ev.event_id in k.labels, (script.video_id, k)


def test_people_enter_leave_and_occlude(
    default_train: list[tuple[VideoScript, list[KeyframeLabel]]],
) -> None:
    partially_visible = 0
    for script, labels in default_train:
        ids = {p.person_id for p in script.persons}
        assert ids == set(range(len(script.persons)))
        partially_visible += sum(k.visible < 0.95 for k in labels)
        # Somebody enters after the start and somebody leaves before the end.
        firsts = [p.segments[0].t0 for p in script.persons]
        lasts = [p.segments[-1].t1 for p in script.persons]
        assert max(firsts) > 5 and min(lasts) < script.seconds - 5
    assert partially_visible > 20


def test_same_seed_same_labels_and_seeds_disjoint() -> None:
    a = _world(2, 30)
    b = _world(2, 30)
    assert [labels for _, labels in a] == [labels for _, labels in b]
    assert a[0][1] != a[1][1]


@pytest.mark.parametrize("base", [0, 1, 7, 12345])
def test_item_seeds_disjoint_across_splits(base: int) -> None:
    seeds = {
        split: {item_seed(base, split, i) for i in range(200)}
        for split in ("train", "val", "cls_train", "cls_val")
    }
    splits = list(seeds)
    for i, s in enumerate(splits):
        for t in splits[i + 1 :]:
            assert not seeds[s] & seeds[t], (s, t)


@pytest.mark.parametrize(
    ("base", "index", "error"),
    [(0, 0, None), (3, 9_999, None), (0, 10_000, ValueError), (-1, 0, ValueError)],
)
def test_item_seed_limits(base: int, index: int, error: type[Exception] | None) -> None:
    if error is None:
        assert item_seed(base, "val", index) >= 0
    else:
        with pytest.raises(error):
            item_seed(base, "val", index)


@pytest.mark.parametrize(
    ("box", "nearer", "expected"),
    [
        ((10, 10, 30, 50), [], 1.0),  # inside, nothing in front
        ((-10, 10, 10, 50), [], 0.5),  # half outside the left edge
        ((10, 10, 30, 50), [(0, 0, 100, 100)], 0.0),  # fully behind a nearer person
        ((10, 10, 30, 50), [(20, 0, 100, 100)], 0.5),  # half behind
        ((400, 10, 420, 50), [], 0.0),  # off screen
    ],
)
def test_visible_fraction(
    box: tuple[float, float, float, float],
    nearer: list[tuple[float, float, float, float]],
    expected: float,
) -> None:
    assert _visible_fraction(box, nearer, 320, 240) == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize(
    "activity",
    ["stand", "walk", "run", "jump", "bend", "fall", "lie", "getup", "talk", "watch", "shake",
     "pickup", "puton"],
)  # fmt: skip
def test_figures_stand_on_the_floor(activity: str) -> None:
    lowest, highest = [], []
    for tau in np.linspace(0, 1.95, 14):
        j = skeleton(pose_at(activity, float(tau), 2.0, 0.3))
        assert j.shape == (NUM_JOINTS, 2) and np.isfinite(j).all()
        lowest.append(j[:, 1].min())
        highest.append(j[:, 1].max())
    if activity == "jump":
        assert max(lowest) > 0.15  # airborne at some point
    else:
        assert max(lowest) < 0.06 and min(lowest) > -0.03  # grounded, never through the floor
    if activity == "lie":
        assert max(highest) < 0.3
    elif activity not in ("fall", "getup"):
        assert min(highest) > 0.5


def test_motion_differs_between_pose_classes() -> None:
    # Mean joint speed (body heights per second): the pose classes differ in motion.
    def speed(activity: str) -> float:
        js = [skeleton(pose_at(activity, t, 2.0, 0.0)) for t in np.arange(0, 2, 1 / 15)]
        return float(np.mean([np.abs(b - a).sum() for a, b in zip(js, js[1:], strict=False)]))

    s = {a: speed(a) for a in ("stand", "walk", "run", "jump")}
    assert s["stand"] < 0.3 * s["walk"] < s["walk"] < s["run"]
    assert s["jump"] > s["walk"]


@pytest.mark.parametrize("class_id", C.CLASSIFICATION_IDS)
def test_classification_script_keeps_person_in_frame(class_id: int) -> None:
    script = make_classification_script("c", 99 + class_id, STAGE, class_id)
    assert len(script.persons) == 1
    for i in range(0, script.num_frames, 5):
        state = script.persons[0].state_at(i / STAGE.fps, STAGE)
        assert state is not None
        x1, _, x2, _ = state.box
        cx = (x1 + x2) / 2 + int(script.camera[i, 0])
        assert 0 < cx < STAGE.width, (class_id, i, cx)
    assert not math.isnan(script.camera.sum())

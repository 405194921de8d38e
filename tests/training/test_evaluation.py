"""training.evaluation: frame-mAP with the ActivityNet AVA protocol, on hand-computed cases.

test_evaluation_official.py compares it with the official engine on random cases.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.ava import LabelMap, read_label_map_pbtxt
from core.ava_data import (
    AnnotationRow,
    DetectionRow,
    read_annotations,
    read_excluded_timestamps,
    read_results,
)
from core.boxes import iou_matrix
from training.evaluation import (
    average_precision,
    evaluate_frame_map,
    format_map_line,
    image_key,
)

LM = LabelMap.from_ids([11, 12, 80])  # sit, stand, watch (a person)
A = (0.0, 0.0, 0.4, 0.4)
B = (0.5, 0.5, 0.9, 0.9)


def gt(video: str, ts: int, box: tuple, action: int, person: int = 0) -> AnnotationRow:
    return AnnotationRow(video, ts, box, action, person, 0)


def det(video: str, ts: int, box: tuple, action: int, score: float) -> DetectionRow:
    return DetectionRow(video, ts, box, action, score, 0)


def ap_of(result, class_id: int) -> float:  # type: ignore[no-untyped-def]
    return result.per_class_ap[class_id]


def test_perfect_detections() -> None:
    g = [gt("v", 902, A, 12), gt("v", 902, B, 11)]
    d = [det("v", 902, A, 12, 0.9), det("v", 902, B, 11, 0.8)]
    r = evaluate_frame_map(g, d, LM)
    assert ap_of(r, 12) == 1.0 and ap_of(r, 11) == 1.0
    assert math.isnan(ap_of(r, 80)) and r.classes_without_gt == (80,)
    assert r.mean_ap == 1.0


def test_missed_box_halves_recall() -> None:
    # Two "stand" boxes, one found: P = [1], R = [0.5] -> AP = 0.5.
    g = [gt("v", 902, A, 12), gt("v", 902, B, 12, person=1)]
    r = evaluate_frame_map(g, [det("v", 902, A, 12, 0.9)], LM)
    assert ap_of(r, 12) == pytest.approx(0.5)


def test_duplicate_detections_of_one_box() -> None:
    # The second detection of an already matched box is a false positive; with a lower
    # score it comes after the TP, so AP stays 1.
    g = [gt("v", 902, A, 12)]
    d = [det("v", 902, A, 12, 0.9), det("v", 902, A, 12, 0.8)]
    r = evaluate_frame_map(g, d, LM)
    assert ap_of(r, 12) == 1.0
    assert r.classes[1].num_detections == 2 and r.classes[1].num_true_positives == 1


def _official_tie_ap(tp_flags: list[bool]) -> float:
    """AP of one GT box when every detection has the same score: 1 / the rank of the TP,
    the rank being what the official expression ``np.argsort(scores)[::-1]`` gives on this
    machine (numpy's default sort is not stable; it may differ between CPUs)."""
    order = np.argsort(np.full(len(tp_flags), 0.7))[::-1]
    return 1.0 / (1 + int(np.flatnonzero(np.array(tp_flags)[order])[0]))


def test_duplicate_detections_with_tied_scores() -> None:
    # Same score: matching in the keyframe makes the first one the TP; the global ranking
    # of the two tied detections is numpy's default argsort, as upstream.
    g = [gt("v", 902, A, 12)]
    d = [det("v", 902, A, 12, 0.7), det("v", 902, A, 12, 0.7)]
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == pytest.approx(_official_tie_ap([True, False]))


@pytest.mark.parametrize("tp_first", [True, False])
def test_tied_scores_across_keyframes(tp_first: bool) -> None:
    # A TP on keyframe 902 and an FP on 903 (listed by a "sit" box) share score 0.7; they
    # are collected in order of their keyframes' first appearance in the detections.
    g = [gt("v", 902, A, 12), gt("v", 903, B, 11)]
    tp, fp = det("v", 902, A, 12, 0.7), det("v", 903, A, 12, 0.7)
    d = [tp, fp] if tp_first else [fp, tp]
    expected = _official_tie_ap([True, False] if tp_first else [False, True])
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == pytest.approx(expected)


def test_voc_envelope_interpolation() -> None:
    # TP(0.9), FP(0.8), TP(0.7), 2 GT: P = [1, .5, .667], R = [.5, .5, 1]
    # envelope [1, .667, .667] -> AP = .5 * 1 + .5 * 2/3.
    g = [gt("v", 902, A, 12), gt("v", 903, A, 12)]
    d = [det("v", 902, A, 12, 0.9), det("v", 902, B, 12, 0.8), det("v", 903, A, 12, 0.7)]
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_excluded_timestamps_leave_both_sides() -> None:
    g = [gt("v", 902, A, 12), gt("v", 903, A, 12), gt("v", 904, B, 11)]  # 903: a miss
    d = [det("v", 902, A, 12, 0.9), det("v", 904, B, 12, 0.95)]  # 904's det: an FP
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == pytest.approx(0.25)
    r = evaluate_frame_map(g, d, LM, {("v", 903), ("v", 904)})
    assert ap_of(r, 12) == 1.0
    assert (r.num_excluded_gt_keyframes, r.num_excluded_detection_keyframes) == (2, 1)
    assert (r.rules.gt_excluded, r.rules.det_excluded) == (2, 1)


def test_detections_at_keyframes_the_gt_does_not_list_are_ignored() -> None:
    # 902: GT "stand" box. 903: listed only by a row of a class outside the map (74).
    # 905: not in the GT at all -> its detections are ignored, not false positives.
    g = [gt("v", 902, A, 12), gt("v", 903, A, 74)]
    d = [det("v", 905, A, 12, 0.99), det("v", 905, B, 80, 0.9), det("v", 902, A, 12, 0.8)]
    r = evaluate_frame_map(g, d, LM)
    assert ap_of(r, 12) == 1.0
    assert (r.rules.det_unlisted_keyframe, r.rules.unlisted_keyframes) == (2, 1)
    assert r.rules.gt_unknown_class == 1
    # At 903 the keyframe is listed, so a "stand" detection there is a false positive.
    r = evaluate_frame_map(g, [*d, det("v", 903, A, 12, 0.95)], LM)
    assert ap_of(r, 12) == pytest.approx(0.5) and r.rules.det_unlisted_keyframe == 2


@pytest.mark.parametrize(
    "box",
    [(0.4, 0.0, 0.0, 0.4), (0.0, 0.4, 0.4, 0.0), (0.2, 0.0, 0.2, 0.4), (math.nan, 0, 0.4, 0.4)],
)
def test_invalid_detection_boxes_are_dropped_after_the_cap(box: tuple) -> None:
    # x2 < x1, y2 < y1, x2 == x1, NaN: upstream drops such detections (neither TP nor FP),
    # after the 50-per-keyframe cap, in which they still take a place.
    g = [gt("v", 902, A, 12)]
    d = [det("v", 902, box, 12, 0.99), det("v", 902, A, 12, 0.5)]
    r = evaluate_frame_map(g, d, LM)
    assert ap_of(r, 12) == 1.0 and r.classes[1].num_detections == 1
    assert r.rules.det_invalid_box == 1
    crowded = [det("v", 902, box, 80, 0.9)] * 50 + [det("v", 902, A, 12, 0.5)]
    r = evaluate_frame_map(g, crowded, LM)
    assert ap_of(r, 12) == 0.0 and r.rules.det_over_cap == 1 and r.rules.det_invalid_box == 50


def test_inverted_gt_box_is_refused_unless_excluded() -> None:
    g = [gt("v", 902, (0.4, 0.0, 0.0, 0.4), 12)]
    with pytest.raises(ValueError, match="x2 < x1 or y2 < y1.*v,902.000000"):
        evaluate_frame_map(g, [det("v", 902, A, 12, 0.9)], LM)
    assert math.isnan(evaluate_frame_map(g, [], LM, {("v", 902)}).mean_ap)
    # Of a class outside the map: dropped before anything looks at the box.
    g = [gt("v", 902, (0.4, 0.0, 0.0, 0.4), 74), gt("v", 902, A, 12)]
    assert evaluate_frame_map(g, [det("v", 902, A, 12, 0.9)], LM).mean_ap == 1.0


def test_empty_gt_box_counts_but_never_matches() -> None:
    g = [gt("v", 902, (0.2, 0.0, 0.2, 0.4), 12), gt("v", 902, A, 12, person=1)]
    r = evaluate_frame_map(g, [det("v", 902, A, 12, 0.9)], LM)
    assert ap_of(r, 12) == pytest.approx(0.5) and r.classes[1].num_gt == 2


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("0902", "902", True), ("902.0", "902.000000", True), (902, "0902", True),
     ("902.0000004", "902", True), ("902.5", "902", False), ("903", "902", False)],
)  # fmt: skip
def test_image_key_is_the_official_one(a: str | int, b: str, same: bool) -> None:
    assert (image_key("v", a) == image_key("v", b)) is same
    assert image_key("v", "0902") == ("v", "902.000000")


def test_image_key_rejects_text() -> None:
    with pytest.raises(ValueError, match="'ts' is not a number"):
        image_key("v", "ts")


def test_mean_is_nanmean_over_class_ids() -> None:
    # Three classes with GT (APs 1, 0, 0.5) and one without: mean over the three.
    lm = LabelMap.from_ids([11, 12, 17, 80])
    g = [gt("v", 902, A, 11), gt("v", 902, A, 12), gt("v", 902, A, 17), gt("v", 902, B, 17)]
    d = [det("v", 902, A, 11, 0.9), det("v", 902, A, 17, 0.9)]
    r = evaluate_frame_map(g, d, lm)
    assert [ap_of(r, i) for i in (11, 12, 17)] == [1.0, 0.0, 0.5]
    assert r.mean_ap == pytest.approx(0.5) and r.classes_without_gt == (80,)


def test_class_without_ground_truth_is_left_out_of_the_mean() -> None:
    g = [gt("v", 902, A, 12), gt("v", 902, A, 11)]
    d = [det("v", 902, A, 12, 0.9), det("v", 902, B, 80, 0.99)]  # "watch" has no GT
    r = evaluate_frame_map(g, d, LM)
    assert math.isnan(ap_of(r, 80)) and r.classes_without_gt == (80,)
    assert ap_of(r, 11) == 0.0  # GT but no detection: AP 0, counted in the mean
    assert r.mean_ap == pytest.approx(0.5)
    assert r.to_json()["per_class"][2]["ap"] is None


def test_video_with_no_detections() -> None:
    g = [gt("v1", 902, A, 12), gt("v2", 902, A, 12), gt("v2", 903, B, 11)]
    d = [det("v1", 902, A, 12, 0.9)]
    r = evaluate_frame_map(g, d, LM)
    assert ap_of(r, 12) == pytest.approx(0.5) and ap_of(r, 11) == 0.0
    assert r.mean_ap == pytest.approx(0.25)


def test_pascal_matching_uses_the_best_gt_even_if_taken() -> None:
    # Two overlapping GT boxes; both detections overlap G1 best. The second is an FP even
    # though its IoU with the free G2 is 0.78 (VOC greedy argmax, as upstream).
    g1, g2 = (0.0, 0.0, 0.4, 0.4), (0.05, 0.0, 0.45, 0.4)
    assert iou_matrix(np.array([g1]), np.array([g2]))[0, 0] == pytest.approx(0.14 / 0.18)
    g = [gt("v", 902, g1, 12), gt("v", 902, g2, 12, person=1)]
    d = [det("v", 902, g1, 12, 0.9), det("v", 902, g1, 12, 0.8)]
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == pytest.approx(0.5)


def test_iou_threshold_is_inclusive() -> None:
    # Detection (0, 0, 0.4, 0.2) inside A (0, 0, 0.4, 0.4): IoU exactly 0.5.
    g = [gt("v", 902, A, 12)]
    d = [det("v", 902, (0.0, 0.0, 0.4, 0.2), 12, 0.9)]
    assert iou_matrix(np.array([A]), np.array([d[0].box]))[0, 0] == 0.5
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == 1.0
    d = [det("v", 902, (0.0, 0.0, 0.4, 0.19), 12, 0.9)]
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == 0.0


def test_classes_outside_the_label_map_are_ignored() -> None:
    g = [gt("v", 902, A, 12), gt("v", 902, A, 74)]
    d = [det("v", 902, A, 12, 0.9), det("v", 902, A, 74, 0.9)]
    r = evaluate_frame_map(g, d, LM)
    assert 74 not in r.per_class_ap and r.mean_ap == 1.0


def test_fifty_detections_per_keyframe_cap() -> None:
    # 50 higher-scoring "watch" detections crowd out the only "stand" detection.
    g = [gt("v", 902, A, 12)]
    d = [det("v", 902, B, 80, 0.9)] * 50 + [det("v", 902, A, 12, 0.1)]
    r = evaluate_frame_map(g, d, LM)
    assert ap_of(r, 12) == 0.0 and r.num_capped_detections == 1
    r = evaluate_frame_map(g, d, LM, max_detections_per_keyframe=0)
    assert ap_of(r, 12) == 1.0
    # Equal score does not replace a kept row; a strictly higher one does.
    d = [det("v", 902, B, 80, 0.5)] * 50 + [det("v", 902, A, 12, 0.5)]
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == 0.0
    d = [det("v", 902, B, 80, 0.5)] * 50 + [det("v", 902, A, 12, 0.6)]
    assert ap_of(evaluate_frame_map(g, d, LM), 12) == 1.0


def test_no_ground_truth_at_all_gives_nan() -> None:
    r = evaluate_frame_map([], [det("v", 902, A, 12, 0.9)], LM)
    assert math.isnan(r.mean_ap)
    assert format_map_line(r) == "mAP@0.5IOU: nan"


@pytest.mark.parametrize(
    ("scores", "tp", "num_gt", "expected"),
    [
        ([], [], 3, 0.0),
        ([0.5], [True], 0, math.nan),
        ([0.9, 0.8, 0.7, 0.6], [False, True, False, True], 2, 0.5 * 0.5 + 0.5 * 0.5),
        ([0.9, 0.8, 0.7], [True, True, True], 4, 0.75),
    ],
)
def test_average_precision_table(scores: list, tp: list, num_gt: int, expected: float) -> None:
    ap = average_precision(np.array(scores, dtype=float), np.array(tp, dtype=bool), num_gt)
    if math.isnan(expected):
        assert math.isnan(ap)
    else:
        assert ap == pytest.approx(expected)


@pytest.mark.parametrize("label_map", ["action_list_sample.pbtxt", "60"])
@pytest.mark.parametrize("use_excluded", [False, True])
def test_mmaction2_sample_against_itself(assets: Path, label_map: str, use_excluded: bool) -> None:
    ava = assets / "ava"
    name = "ava_action_list_v2.1_for_activitynet_2018.pbtxt" if label_map == "60" else label_map
    lm = read_label_map_pbtxt(ava / name)
    rows = read_annotations(ava / "ava_sample.csv", lm, unknown_classes="skip")
    # Read as results, the 8th column (person id 0) is the score: every score is 0.
    dets = read_results(ava / "ava_sample.csv", lm)
    excluded = (
        read_excluded_timestamps(ava / "ava_excluded_timestamps_sample.csv")
        if use_excluded
        else set()
    )
    r = evaluate_frame_map(rows, dets, lm, excluded)
    assert r.mean_ap == 1.0
    assert format_map_line(r) == "mAP@0.5IOU: 1.0"

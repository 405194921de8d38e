"""core.boxes: the one IoU and NMS, against brute-force references written here."""

from __future__ import annotations

import numpy as np
import pytest

from core.boxes import batched_nms, iou_matrix, nms


def _iou_scalar(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _brute_force_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_thr: float, score_thr: float, max_out: int
) -> list[int]:
    order = sorted(
        (i for i in range(len(scores)) if scores[i] > score_thr), key=lambda i: (-scores[i], i)
    )
    kept: list[int] = []
    for i in order:
        if len(kept) == max_out:
            break
        if all(_iou_scalar(boxes[i], boxes[j]) <= iou_thr for j in kept):
            kept.append(i)
    return kept


def test_iou_matrix_values_and_dtype() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    got = iou_matrix(a, b)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_array_equal(got[0], np.float32([50 / 150, 0.0, 1.0]))
    # An empty union (two zero-area boxes) and a NaN box give 0, not NaN.
    assert iou_matrix(a[1:], a[1:])[0, 0] == 0.0
    assert iou_matrix(np.array([[np.nan, 0, 1, 1]]), b)[0].tolist() == [0.0, 0.0, 0.0]
    # float64 in, float64 out; the exact 0.5 that the AVA evaluator decides on.
    half = iou_matrix(np.array([[0.0, 0.0, 0.4, 0.4]]), np.array([[0.0, 0.0, 0.4, 0.2]]))
    assert half.dtype == np.float64 and half[0, 0] == 0.5
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("iou_thr", "score_thr", "max_out"), [(0.5, 0.1, 100), (0.3, 0.0, 5)])
def test_nms_matches_brute_force(seed: int, iou_thr: float, score_thr: float, max_out: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, (60, 2))
    wh = rng.uniform(4, 30, (60, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 60).astype(np.float32)
    scores[:5] = scores[5]  # ties keep the lower index first
    expected = _brute_force_nms(boxes, scores, iou_thr, score_thr, max_out)
    got = nms(boxes, scores, iou_threshold=iou_thr, score_threshold=score_thr, max_keep=max_out)
    assert got.dtype == np.int64 and got.tolist() == expected
    rows = batched_nms(
        boxes[None],
        scores[None, None],
        iou_threshold=iou_thr,
        score_threshold=score_thr,
        max_per_class=max_out,
    )
    assert rows[:, 2].tolist() == expected and not rows[:, :2].any()


def test_nms_rules() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.05], np.float32)
    kw = {"iou_threshold": 0.45, "score_threshold": 0.1, "max_keep": 10}
    assert nms(boxes, scores, **kw).tolist() == [0]  # IoU 0.81 suppresses; 0.05 under floor
    assert nms(boxes, scores, iou_threshold=0.95, score_threshold=0.0, max_keep=2).tolist() == [
        0,
        1,
    ]
    # Corners are min/max-ordered as ONNX reads them: a flipped copy still suppresses.
    flipped = boxes[[0, 0]].copy()
    flipped[1] = flipped[1][[2, 3, 0, 1]]
    assert nms(flipped, np.float32([0.5, 0.9]), **kw).tolist() == [1]
    # A score equal to the floor is not a candidate (score > floor), compared in float32.
    assert nms(boxes[:1], np.float32([0.1]), **kw).tolist() == []
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), **kw)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert batched_nms(
        np.zeros((2, 0, 4)),
        np.zeros((2, 1, 0)),
        iou_threshold=0.5,
        score_threshold=0.0,
        max_per_class=3,
    ).shape == (0, 3)

"""Person detector: shapes, target round trip, NMS against a brute-force reference, AP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.detector_io import preprocess
from training.detector.data import KeyframeImage, augment, to_canvas
from training.detector.eval import DetectionSet, match_detections, person_ap
from training.detector.model import (
    DetectorConfig,
    PersonDetectorNet,
    cell_centres,
    decode,
    detector_spec,
    encode_targets,
    postprocess,
)

TINY = DetectorConfig(input_hw=(64, 96), widths=(8, 8, 16, 16, 16), head_width=8)


def test_output_shapes() -> None:
    model = PersonDetectorNet(TINY).eval()
    heat, ltrb = model(torch.randn(2, 3, 64, 96))
    assert heat.shape == (2, 1, 16, 24)
    assert ltrb.shape == (2, 4, 16, 24)
    # The focal prior: every cell starts near p = 0.01.
    assert float(torch.sigmoid(heat).mean().detach()) == pytest.approx(0.01, abs=0.01)


@pytest.mark.parametrize(
    "boxes",
    [
        [[10.0, 8.0, 30.0, 56.0]],
        [[10.0, 8.0, 30.0, 56.0], [50.3, 10.7, 70.1, 60.2], [75.0, 2.0, 95.5, 30.0]],
        [[0.0, 0.0, 6.0, 9.0]],  # at the corner, smaller than two cells
    ],
)
def test_encode_decode_round_trip(boxes: list[list[float]]) -> None:
    gt = np.asarray(boxes, np.float32)
    t = encode_targets(gt, TINY.out_hw, TINY.stride)
    assert (t["heat"] == 1).sum() == len(boxes)
    assert t["weight"].sum() == pytest.approx(len(boxes), rel=1e-5)
    # Perfect head outputs: logit of the target heat; log edge distances of the target box.
    heat = torch.logit(torch.from_numpy(t["heat"]).clamp(1e-4, 1 - 1e-4))[None]
    centres = cell_centres(TINY.out_hw, TINY.stride)  # (2, h, w)
    box = torch.from_numpy(t["box"])
    dist = torch.cat([centres - box[0:2], box[2:4] - centres])  # (4, h, w)
    ltrb = torch.log(dist.clamp(min=1e-6) / TINY.stride)[None]
    out_boxes, scores = decode(heat, ltrb, stride=TINY.stride, k=20, peak_filter=True)
    found = out_boxes[0][scores[0] > 0.5].numpy()
    assert found.shape == gt.shape
    order = np.lexsort((found[:, 1], found[:, 0]))
    np.testing.assert_allclose(found[order], gt[np.lexsort((gt[:, 1], gt[:, 0]))], atol=1e-4)


def test_round_trip_without_peak_filter_goes_through_nms() -> None:
    """The default decode (no peak test): neighbouring cells regress the same box, and NMS
    collapses them to one box per person."""
    gt = np.array([[10.0, 8.0, 30.0, 56.0], [50.3, 10.7, 70.1, 60.2]], np.float32)
    t = encode_targets(gt, TINY.out_hw, TINY.stride)
    heat = torch.logit(torch.from_numpy(t["heat"]).clamp(1e-4, 1 - 1e-4))[None]
    centres = cell_centres(TINY.out_hw, TINY.stride)
    box = torch.from_numpy(t["box"])
    ltrb = torch.log(torch.cat([centres - box[0:2], box[2:4] - centres]).clamp(min=1e-6) / 4)
    boxes, scores = decode(heat, ltrb[None], stride=TINY.stride, k=50)
    det = postprocess(boxes, scores, iou_threshold=0.6, score_threshold=0.5, max_output=10)
    found = det.boxes.numpy()
    assert found.shape == (2, 4)
    np.testing.assert_allclose(found[np.argsort(found[:, 0])], gt, atol=1e-4)


def test_encode_skips_degenerate_and_shared_cell_keeps_smaller() -> None:
    gt = np.array([[10, 10, 10, 30], [20, 20, 28, 40], [19, 19, 29, 41.5]], np.float32)
    t = encode_targets(gt, TINY.out_hw, TINY.stride)
    assert (t["heat"] == 1).sum() == 1  # zero-width box skipped; two centres share a cell
    i, j = np.argwhere(t["heat"][0] == 1)[0]
    np.testing.assert_array_equal(t["box"][:, i, j], gt[1])  # the smaller box regresses there
    assert t["weight"][0, i, j] > 0


# -- AP --------------------------------------------------------------------------------------


def _gt(*boxes: list[float], key: tuple[str, int] = ("v", 1)) -> KeyframeImage:
    return KeyframeImage(
        key[0], key[1], np.zeros((4, 4, 3), np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4)
    )


def _det(boxes: list[list[float]], scores: list[float], key: tuple[str, int] = ("v", 1)):
    return DetectionSet(
        key[0],
        key[1],
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
    )


A = [0.1, 0.1, 0.3, 0.5]
B = [0.6, 0.1, 0.8, 0.5]
FAR = [0.4, 0.6, 0.5, 0.9]


@pytest.mark.parametrize(
    ("gt", "dets", "expected"),
    [
        ([A, B], [([A, B], [0.9, 0.8])], 1.0),  # perfect
        ([A], [([FAR, A], [0.9, 0.8])], 0.5),  # a false positive ranked first
        ([A], [([A, FAR], [0.9, 0.8])], 1.0),  # a false positive ranked last costs nothing
        ([A, B], [([A], [0.9])], 0.5),  # a person missed: recall stops at 0.5
        ([A], [([A, A], [0.9, 0.8])], 1.0),  # duplicate: second is FP, ranked after the TP
        ([A], [([A, A], [0.8, 0.9])], 1.0),  # matching goes by score, not input order
        ([A], [], 0.0),  # no detections
    ],
)
def test_person_ap(gt: list[list[float]], dets: list, expected: float) -> None:
    sets = [_det(b, s) for b, s in dets]
    assert person_ap(sets, [_gt(*gt)]).ap == pytest.approx(expected)


def test_ap_pools_keyframes_and_ignores_unlabelled_ones() -> None:
    gts = [_gt(A, key=("v", 1)), _gt(B, key=("v", 2))]
    dets = [
        _det([A], [0.5], key=("v", 1)),
        _det([FAR], [0.9], key=("v", 2)),  # FP above the TP of the other keyframe
        _det([FAR], [0.99], key=("w", 7)),  # keyframe not in the GT: ignored
    ]
    result = person_ap(dets, gts)
    assert result.num_gt == 2 and result.num_detections == 2
    assert result.ap == pytest.approx(0.5 * 0.5)


def test_match_at_iou_boundary() -> None:
    gt = np.array([[0, 0, 1, 1]], np.float32)
    half = np.array([[0, 0, 0.5, 1]], np.float32)  # IoU exactly 0.5 counts
    assert match_detections(half, np.array([0.9], np.float32), gt).tolist() == [True]
    less = np.array([[0, 0, 0.49, 1]], np.float32)
    assert match_detections(less, np.array([0.9], np.float32), gt).tolist() == [False]


# -- preprocessing -----------------------------------------------------------------------------


def test_training_canvas_equals_service_preprocessing() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)  # letterboxed into 64x96
    spec = detector_spec(TINY)
    ref, transform = preprocess(frame, spec)
    boxes = np.array([[8, 4, 20, 40]], np.float32)
    x, canvas_boxes = to_canvas(frame, boxes, spec)
    np.testing.assert_array_equal(x, ref[0])
    np.testing.assert_allclose(canvas_boxes, boxes * transform.scale_x)


def test_augment_keeps_boxes_on_canvas() -> None:
    rng = np.random.default_rng(1)
    item = KeyframeImage(
        "v", 1, np.zeros((48, 80, 3), np.uint8), np.array([[0.1, 0.1, 0.3, 0.9]], np.float32)
    )
    spec = detector_spec(TINY)
    for _ in range(20):
        x, boxes = augment(item, spec, rng)
        assert x.shape == (3, 64, 96) and x.dtype == np.float32
        assert boxes.shape[1] == 4 and boxes.shape[0] <= 1
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 96).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 64).all()

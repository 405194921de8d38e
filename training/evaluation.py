"""AVA frame-mAP at IoU 0.5, computed the way the official ActivityNet evaluator does.

Reference (read for the protocol facts, not copied): ActivityNet ``Evaluation/
get_ava_performance.py`` with its ``ava/object_detection_evaluation.py``
(``PascalDetectionEvaluator``), ``ava/per_image_evaluation.py`` and TF object_detection's
``utils/metrics.py``. What that code does, and so what this module does:

1. **Classes.** Only classes in the label map count; GT and detection rows of any other
   class are dropped while reading (the whitelist), before anything else.
2. **Excluded keyframes.** A (video, timestamp) in the excluded list is removed from both
   the ground truth and the detections.
3. **At most 50 detections per keyframe.** The official reader keeps, per keyframe, the
   50 highest-scoring (box, class) rows of the whitelisted classes; a row replaces the
   current lowest only if its score is strictly higher. We keep the same heap of
   ``(score, action_id, y1, x1, y2, x2)`` tuples so the same rows survive, in the same
   order (score descending). ``max_detections_per_keyframe=0`` turns the cap off.
4. **Per keyframe and class, greedy matching in score order.** For each detection, the
   GT box of that class with the highest IoU (first one on exact ties) is its candidate.
   If that IoU >= 0.5 and the candidate is not yet matched, the detection is a true
   positive and the candidate becomes matched; otherwise it is a false positive -- even
   if another, unmatched GT box also overlaps >= 0.5 (Pascal VOC behaviour). Detections
   on keyframes without GT are false positives. Boxes with ``x1 >= x2`` or ``y1 >= y2``
   are dropped. IoU uses continuous areas (no "+1").
5. **AP per class.** All detections of the class over all keyframes, sorted by score
   descending; precision/recall cumulatively; precision made non-increasing from the
   right (the VOC envelope); AP = sum over the points where recall changes of
   ``(recall_i - recall_{i-1}) * precision_i``. A class with GT and no detections has
   AP 0. A class without GT has AP NaN and is left out of the mean (and reported).
6. **mAP** = mean of the per-class APs that are not NaN.

Ties in score (step 5): the official code orders with ``np.argsort(scores)[::-1]``, whose
tie order depends on numpy's sort algorithm and even on the CPU (numpy's SIMD sorts are
not stable). We use the same expression with a *stable* sort, so tied detections come in
reverse input order (keyframes in order of first appearance in the detections, rows of a
keyframe in the order of step 3). That is exactly what the official code gives whenever
numpy's sort happens to be stable (e.g. numpy 1.x on arrays of <= 16 elements), and it is
deterministic everywhere. Real detector scores rarely tie, so real results do not move.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.ava import LabelMap
from training.ava_data import AnnotationRow, DetectionRow, KeyframeKey

__all__ = [
    "IOU_THRESHOLD",
    "MAX_DETECTIONS_PER_KEYFRAME",
    "ClassResult",
    "EvalResult",
    "average_precision",
    "evaluate_frame_map",
    "format_map_line",
    "pairwise_iou",
]

IOU_THRESHOLD = 0.5
# get_ava_performance.py reads detections with capacity 50 per keyframe.
MAX_DETECTIONS_PER_KEYFRAME = 50

FloatArray = npt.NDArray[np.float64]
# One entry of the official per-keyframe heap: (score, action_id, y1, x1, y2, x2).
_Entry = tuple[float, int, float, float, float, float]


@dataclass(frozen=True)
class ClassResult:
    """Frame-AP of one class. ``ap`` is NaN when the class has no ground truth."""

    class_id: int
    name: str
    ap: float
    num_gt: int
    num_detections: int
    num_true_positives: int


@dataclass(frozen=True)
class EvalResult:
    """Result of `evaluate_frame_map`: per-class AP, the mean, and what was counted."""

    classes: tuple[ClassResult, ...]  # label-map order
    mean_ap: float  # NaN if no class has ground truth
    num_gt_keyframes: int  # after exclusion
    num_detection_keyframes: int  # after exclusion
    num_excluded_gt_keyframes: int
    num_excluded_detection_keyframes: int
    num_capped_detections: int  # rows dropped by the per-keyframe cap
    max_detections_per_keyframe: int
    iou_threshold: float = IOU_THRESHOLD
    notes: tuple[str, ...] = field(default=())

    @property
    def per_class_ap(self) -> dict[int, float]:
        return {c.class_id: c.ap for c in self.classes}

    @property
    def classes_without_gt(self) -> tuple[int, ...]:
        return tuple(c.class_id for c in self.classes if c.num_gt == 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes null)."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "metric": f"frame-mAP@{self.iou_threshold}IOU",
            "mAP": clean(self.mean_ap),
            "per_class": [
                {
                    "id": c.class_id,
                    "name": c.name,
                    "ap": clean(c.ap),
                    "num_gt": c.num_gt,
                    "num_detections": c.num_detections,
                    "num_true_positives": c.num_true_positives,
                }
                for c in self.classes
            ],
            "classes_without_gt": list(self.classes_without_gt),
            "num_gt_keyframes": self.num_gt_keyframes,
            "num_detection_keyframes": self.num_detection_keyframes,
            "num_excluded_gt_keyframes": self.num_excluded_gt_keyframes,
            "num_excluded_detection_keyframes": self.num_excluded_detection_keyframes,
            "num_capped_detections": self.num_capped_detections,
            "max_detections_per_keyframe": self.max_detections_per_keyframe,
        }


def pairwise_iou(boxes_a: FloatArray, boxes_b: FloatArray) -> FloatArray:
    """IoU of every pair: (N, 4) x (M, 4) xyxy -> (N, M). Continuous areas, no "+1"."""
    a = boxes_a[:, None, :]  # (N, 1, 4)
    b = boxes_b[None, :, :]  # (1, M, 4)
    inter_w = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    inter_h = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    out: FloatArray = inter / (area_a + area_b - inter)
    return out


def average_precision(scores: FloatArray, is_tp: npt.NDArray[np.bool_], num_gt: int) -> float:
    """VOC AP of one class from all its detections (any order) and its GT count.

    NaN when ``num_gt == 0``; 0 when there are no detections. See the module docstring
    (step 5) for the envelope and the tie order.
    """
    if num_gt == 0:
        return math.nan
    if scores.size == 0:
        return 0.0
    # Descending score; stable, so tied detections come in reverse input order.
    order = np.argsort(scores, kind="stable")[::-1]
    tp = is_tp[order].astype(np.float64)
    cum_tp = np.cumsum(tp)
    cum_fp = np.cumsum(1.0 - tp)
    precision = cum_tp / (cum_tp + cum_fp)
    recall = cum_tp / num_gt
    # Sentinels (recall 0 and 1, precision 0), then the right-to-left running maximum.
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changed = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[changed] - recall[changed - 1]) * precision[changed]))


def _keyframe_entries(
    rows: Iterable[tuple[KeyframeKey, _Entry]], capacity: int
) -> tuple[dict[KeyframeKey, list[_Entry]], int]:
    """Per keyframe, the entries the official reader keeps, score descending.

    Mirrors its heap: below ``capacity`` every row is pushed; at capacity a row replaces
    the heap's smallest tuple only if its score is strictly higher. Returns the kept
    entries per keyframe (in first-appearance order of keyframes) and how many rows the
    cap dropped.
    """
    heaps: dict[KeyframeKey, list[_Entry]] = {}
    dropped = 0
    for key, entry in rows:
        heap = heaps.setdefault(key, [])
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, entry)
        else:
            dropped += 1
            if entry[0] > heap[0][0]:
                heapq.heapreplace(heap, entry)
    # Python's sort is stable, so equal scores keep their heap-array order, as upstream.
    ordered = {key: sorted(heap, key=lambda e: -e[0]) for key, heap in heaps.items()}
    return ordered, dropped


def _yxyx(box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (y1, x1, y2, x2)


def evaluate_frame_map(
    gt: Iterable[AnnotationRow],
    detections: Iterable[DetectionRow],
    label_map: LabelMap,
    excluded: Iterable[KeyframeKey] = (),
    *,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
) -> EvalResult:
    """Frame-mAP of ``detections`` against ``gt`` with the ActivityNet AVA protocol.

    ``gt``: annotation rows (one per box and action, as in the CSV; a row repeated twice
    counts as two GT instances, as upstream). ``detections``: results rows with
    ``action_id`` set. Rows of classes outside ``label_map`` are ignored; keyframes in
    ``excluded`` are removed from both sides. See the module docstring for every step.
    """
    excluded_keys = set(excluded)
    in_map = set(label_map.ids)

    # -- ground truth: whitelist, then the official (heap, sorted) order per keyframe.
    def gt_entries() -> Iterable[tuple[KeyframeKey, _Entry]]:
        for row in gt:
            if row.action_id in in_map:
                # Upstream reads an 8th column as a "score" even for GT (it is the person
                # id); it only orders GT rows, which can matter for exact IoU ties.
                score = 1.0 if row.person_id is None else float(row.person_id)
                yield (row.video_id, row.timestamp), (score, row.action_id, *_yxyx(row.box))

    gt_frames, _ = _keyframe_entries(gt_entries(), capacity=0)
    num_excluded_gt = sum(1 for key in gt_frames if key in excluded_keys)
    gt_frames = {k: v for k, v in gt_frames.items() if k not in excluded_keys}

    # -- detections: whitelist, cap per keyframe, exclusion.
    def det_entries() -> Iterable[tuple[KeyframeKey, _Entry]]:
        for row in detections:
            if row.action_id is None:
                raise ValueError(
                    f"detection at {row.video_id},{row.timestamp} has no action id; "
                    "frame-mAP needs results rows (video,timestamp,box,action_id,score)"
                )
            if row.action_id in in_map:
                yield (row.video_id, row.timestamp), (row.score, row.action_id, *_yxyx(row.box))

    det_frames, capped = _keyframe_entries(det_entries(), capacity=max_detections_per_keyframe)
    num_excluded_det = sum(1 for key in det_frames if key in excluded_keys)
    det_frames = {k: v for k, v in det_frames.items() if k not in excluded_keys}

    # -- per-class GT counts over all (non-excluded) keyframes.
    num_gt = dict.fromkeys(label_map.ids, 0)
    for entries in gt_frames.values():
        for entry in entries:
            num_gt[entry[1]] += 1

    # -- match per keyframe and class; collect (score, tp) per class in upstream order.
    scores: dict[int, list[float]] = {i: [] for i in label_map.ids}
    is_tp: dict[int, list[bool]] = {i: [] for i in label_map.ids}
    for key, det_list in det_frames.items():
        gt_list = gt_frames.get(key, [])
        det_arr = np.array([e[2:] for e in det_list], dtype=np.float64).reshape(-1, 4)
        det_cls = np.array([e[1] for e in det_list], dtype=np.int64)
        det_score = np.array([e[0] for e in det_list], dtype=np.float64)
        valid = (det_arr[:, 0] < det_arr[:, 2]) & (det_arr[:, 1] < det_arr[:, 3])
        gt_arr = np.array([e[2:] for e in gt_list], dtype=np.float64).reshape(-1, 4)
        gt_cls = np.array([e[1] for e in gt_list], dtype=np.int64)
        for class_id in np.unique(det_cls[valid]).tolist():
            pick = valid & (det_cls == class_id)
            boxes, class_scores = det_arr[pick], det_score[pick]
            labels = _match(boxes, gt_arr[gt_cls == class_id], iou_threshold)
            scores[class_id].extend(class_scores.tolist())
            is_tp[class_id].extend(labels.tolist())

    results: list[ClassResult] = []
    for class_id, name in label_map:
        class_scores = np.array(scores[class_id], dtype=np.float64)
        class_tp = np.array(is_tp[class_id], dtype=bool)
        results.append(
            ClassResult(
                class_id=class_id,
                name=name,
                ap=average_precision(class_scores, class_tp, num_gt[class_id]),
                num_gt=num_gt[class_id],
                num_detections=int(class_scores.size),
                num_true_positives=int(class_tp.sum()),
            )
        )
    valid_aps = [c.ap for c in results if not math.isnan(c.ap)]
    mean_ap = float(np.mean(valid_aps)) if valid_aps else math.nan
    return EvalResult(
        classes=tuple(results),
        mean_ap=mean_ap,
        num_gt_keyframes=len(gt_frames),
        num_detection_keyframes=len(det_frames),
        num_excluded_gt_keyframes=num_excluded_gt,
        num_excluded_detection_keyframes=num_excluded_det,
        num_capped_detections=capped,
        max_detections_per_keyframe=max_detections_per_keyframe,
        iou_threshold=iou_threshold,
    )


def _match(det_boxes: FloatArray, gt_boxes: FloatArray, threshold: float) -> npt.NDArray[np.bool_]:
    """TP flags for one keyframe and class; detections already in score order (VOC greedy)."""
    is_tp = np.zeros(len(det_boxes), dtype=bool)
    if len(gt_boxes) == 0:
        return is_tp
    iou = pairwise_iou(det_boxes, gt_boxes)  # (D, G)
    best = np.argmax(iou, axis=1)  # first maximum on ties, as upstream
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d, g in enumerate(best.tolist()):
        if iou[d, g] >= threshold and not taken[g]:
            is_tp[d] = True
            taken[g] = True
    return is_tp


def format_map_line(result: EvalResult | float) -> str:
    """The evaluator's last output line, e.g. ``mAP@0.5IOU: 1.0`` (Python float repr)."""
    if isinstance(result, EvalResult):
        return f"mAP@{result.iou_threshold}IOU: {float(result.mean_ap)!r}"
    return f"mAP@{IOU_THRESHOLD}IOU: {float(result)!r}"

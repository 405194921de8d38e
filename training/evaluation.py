"""AVA frame-mAP at IoU 0.5, computed the way the official ActivityNet evaluator does.

Reference (read for the protocol facts, not copied): ActivityNet ``Evaluation/
get_ava_performance.py`` (its 2020 version, with empty-keyframe rows and microsecond
timestamps) with its ``ava/object_detection_evaluation.py`` (``PascalDetectionEvaluator``),
``ava/per_image_evaluation.py`` and ``ava/metrics.py``. ``tests/training/
test_evaluation_official.py`` checks this module against that engine as the ``slowfast``
package ships it. What the official code does, and so what this module does:

1. **Keyframe keys.** A row's keyframe is ``(video_id, "%.6f" % Decimal(timestamp))``, so
   ``0902``, ``902`` and ``902.0`` are one keyframe (`image_key`).
2. **Classes.** Only classes in the label map count; GT and detection rows of any other
   class are dropped while reading, before anything else.
3. **At most 50 detections per keyframe.** The official reader keeps, per keyframe, the 50
   highest-scoring (box, class) rows of the label map's classes; a row replaces the current
   lowest only if its score is strictly higher. We keep the same heap of ``(score,
   action_id, y1, x1, y2, x2)`` tuples so the same rows survive, in the same order (score
   descending, `KeyframeTable`). GT rows go through the same heap with no cap; their
   "score" is the 8th column (the person id) or 1.0. ``max_detections_per_keyframe=0``
   turns the cap off.
4. **Listed keyframes.** The GT file lists a keyframe by any row at it: a box of any class,
   or a 2-column ``video_id,timestamp`` row (a keyframe with no actions). Detections at a
   keyframe the GT file does not list are ignored; at a listed keyframe without GT boxes
   of their class they are false positives.
5. **Excluded keyframes.** A keyframe in the excluded-timestamps list is removed from the
   GT, from the listed keyframes and from the detections (the pre-2020 official rule; the
   2020 version leaves such keyframes out of the GT file instead, which is the same).
6. **Invalid detection boxes.** Detections with ``x1 >= x2`` or ``y1 >= y2`` (inverted or
   empty, and any NaN coordinate) are dropped, after the 50-cap: they hold a place in it.
   GT boxes with ``x1 > x2`` or ``y1 > y2`` make the official engine stop ("Invalid box
   data"), so they are refused; empty GT boxes count as GT that nothing can match.
7. **Per keyframe and class, greedy matching in score order.** For each detection, the
   GT box of that class with the highest IoU (the first on exact ties, ``np.argmax``) is
   its candidate. If that IoU >= 0.5 and the candidate is not yet matched, the detection
   is a true positive and the candidate becomes matched; otherwise it is a false
   positive, even if another unmatched GT box also overlaps >= 0.5 (Pascal VOC). IoU uses
   continuous areas (no "+1") and float64 coordinates as parsed, no rounding.
8. **AP per class.** All detections of the class over all keyframes (keyframes in order of
   first appearance in the detections), ranked by ``np.argsort(scores)[::-1]``;
   precision/recall cumulatively; precision made non-increasing from the right (the VOC
   envelope); AP = sum over the points where recall changes of ``(recall_i -
   recall_{i-1}) * precision_i``. A class with GT and no detections has AP 0. A class
   without GT has AP NaN.
9. **mAP** = ``np.nanmean`` of the per-class APs.

Ties in score (step 8): the official code ranks with numpy's default (unstable) sort,
whose order for tied scores depends on the numpy version and the CPU's SIMD sort. We use
the same expression on the same array, so ties come out as the official evaluator gives
them on the same machine; real detector scores rarely tie.
"""

from __future__ import annotations

import decimal
import heapq
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.ava import LabelMap
from core.ava_data import AnnotationRow, DetectionRow, KeyframeKey
from core.boxes import iou_matrix

__all__ = [
    "IOU_THRESHOLD",
    "MAX_DETECTIONS_PER_KEYFRAME",
    "ClassResult",
    "EvalResult",
    "ImageKey",
    "KeyframeTable",
    "RuleCounts",
    "average_precision",
    "evaluate_frame_map",
    "detection_table_from_rows",
    "evaluate_tables",
    "format_map_line",
    "gt_table_from_rows",
    "image_key",
]

IOU_THRESHOLD = 0.5
# get_ava_performance.py reads detections with capacity 50 per keyframe.
MAX_DETECTIONS_PER_KEYFRAME = 50

FloatArray = npt.NDArray[np.float64]
# One entry of the official per-keyframe heap: (score, action_id, y1, x1, y2, x2).
_Entry = tuple[float, int, float, float, float, float]
# (video_id, timestamp formatted "%.6f"), the official image key.
ImageKey = tuple[str, str]


def image_key(video_id: str, timestamp: str | int | float) -> ImageKey:
    """The official keyframe key: ``0902``, ``902`` and ``902.0`` give the same one.

    Raises ValueError if ``timestamp`` is not a number.
    """
    try:
        # get_ava_performance.py %-formats a Decimal, which goes through float() (not
        # Decimal's own rounding, which differs on halves).
        return (video_id, f"{float(decimal.Decimal(timestamp)):.6f}")
    except decimal.InvalidOperation:
        raise ValueError(f"{timestamp!r} is not a number") from None


@dataclass(frozen=True)
class RuleCounts:
    """How many rows each protocol rule touched, per side.

    A dropped row is counted once, under the first rule that dropped it, in this order:
    unknown class, per-keyframe cap, excluded keyframe, keyframe not listed in the GT,
    invalid box. ``*_without_score`` and ``*_outside_frame`` rows are kept (scored 1.0;
    used as given).
    """

    gt_unknown_class: int = 0
    det_unknown_class: int = 0
    gt_empty_keyframe: int = 0  # 2-column GT rows: the keyframe is listed, no box
    det_empty_keyframe: int = 0  # 2-column detection rows (nothing to score)
    det_without_score: int = 0  # 7-column detection rows, score 1.0
    gt_outside_frame: int = 0  # a coordinate outside [0, 1]
    det_outside_frame: int = 0
    det_over_cap: int = 0
    gt_excluded: int = 0
    det_excluded: int = 0
    det_unlisted_keyframe: int = 0
    unlisted_keyframes: int = 0  # keyframes, not rows
    det_invalid_box: int = 0  # x1 >= x2 or y1 >= y2

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class KeyframeTable:
    """One CSV side as the official reader keeps it: per keyframe, the kept entries.

    ``add`` one row at a time (file order), ``add_empty`` for 2-column rows. Entries are
    ``(score, action_id, y1, x1, y2, x2)``; `entries` gives them per keyframe, score
    descending, keyframes in order of their first kept row.
    """

    class_ids: frozenset[int]
    capacity: int = 0  # 0 = no cap (GT); the official detections cap is 50
    # What the rows did (filled by add/add_empty).
    listed: set[ImageKey] = field(default_factory=set, init=False)  # keyframes rows name
    unknown_class: int = field(default=0, init=False)
    over_cap: int = field(default=0, init=False)
    empty_rows: int = field(default=0, init=False)
    without_score: int = field(default=0, init=False)
    outside_frame: int = field(default=0, init=False)
    # (key, line) of kept rows with x2 < x1 or y2 < y1 (the GT side refuses them).
    inverted: list[tuple[ImageKey, int | None]] = field(default_factory=list, init=False)
    _heaps: dict[ImageKey, list[_Entry]] = field(default_factory=dict, init=False, repr=False)

    def add_empty(self, key: ImageKey) -> None:
        self.listed.add(key)
        self.empty_rows += 1

    def add(
        self,
        key: ImageKey,
        box: tuple[float, float, float, float],  # x1, y1, x2, y2 as in the CSV
        action_id: int,
        score: float = 1.0,
        *,
        scored: bool = True,  # False: a 7-column row, score 1.0
        line: int | None = None,  # for error messages
    ) -> bool:
        """Add one row; False if the label map does not have its class (row dropped)."""
        self.listed.add(key)
        if action_id not in self.class_ids:
            self.unknown_class += 1
            return False
        x1, y1, x2, y2 = box
        if not all(0.0 <= v <= 1.0 for v in box):
            self.outside_frame += 1
        if not scored:
            self.without_score += 1
        if x1 > x2 or y1 > y2:
            self.inverted.append((key, line))
        entry: _Entry = (score, action_id, y1, x1, y2, x2)
        heap = self._heaps.setdefault(key, [])
        if self.capacity < 1 or len(heap) < self.capacity:
            heapq.heappush(heap, entry)
        else:
            self.over_cap += 1
            if score > heap[0][0]:
                heapq.heapreplace(heap, entry)
        return True

    def entries(self) -> dict[ImageKey, list[_Entry]]:
        # Python's sort is stable: equal scores keep their heap-array order, as upstream.
        return {key: sorted(heap, key=lambda e: -e[0]) for key, heap in self._heaps.items()}


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
    num_gt_keyframes: int  # keyframes with GT boxes, after exclusion
    num_detection_keyframes: int  # keyframes whose detections were scored
    num_excluded_gt_keyframes: int
    num_excluded_detection_keyframes: int
    num_capped_detections: int  # rows dropped by the per-keyframe cap
    max_detections_per_keyframe: int
    iou_threshold: float = IOU_THRESHOLD
    rules: RuleCounts = field(default_factory=RuleCounts)
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
            "rules": self.rules.to_json(),
        }


def average_precision(scores: FloatArray, is_tp: npt.NDArray[np.bool_], num_gt: int) -> float:
    """VOC AP of one class from all its detections (collection order) and its GT count.

    NaN when ``num_gt == 0``; 0 when there are no detections. See the module docstring
    (step 8) for the envelope and the tie order.
    """
    if num_gt == 0:
        return math.nan
    if scores.size == 0:
        return 0.0
    # The official ranking expression; numpy's default sort decides ties (module docstring).
    order = np.argsort(scores)[::-1]
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
    counts as two GT instances, as upstream). Pass rows of every class: a keyframe whose
    only rows are of classes outside ``label_map`` is still listed (step 4), and those
    rows are then dropped. ``detections``: results rows with ``action_id`` set. Keyframes
    in ``excluded`` are removed from both sides. See the module docstring for every step.
    """
    ids = frozenset(label_map.ids)
    gt_table = gt_table_from_rows(gt, ids)
    det_table = detection_table_from_rows(detections, ids, max_detections_per_keyframe)
    return evaluate_tables(
        gt_table,
        det_table,
        label_map,
        {image_key(v, t) for v, t in excluded},
        iou_threshold=iou_threshold,
    )


def gt_table_from_rows(rows: Iterable[AnnotationRow], class_ids: frozenset[int]) -> KeyframeTable:
    """The GT side from annotation rows (all classes; those outside ``class_ids`` dropped)."""
    table = KeyframeTable(class_ids)
    for g in rows:
        # Upstream reads an 8th column as a "score" even for GT (it is the person id); it
        # only orders GT rows, which can matter for exact IoU ties.
        score = 1.0 if g.person_id is None else float(g.person_id)
        table.add(image_key(g.video_id, g.timestamp), g.box, g.action_id, score, line=g.line)
    return table


def detection_table_from_rows(
    rows: Iterable[DetectionRow], class_ids: frozenset[int], capacity: int
) -> KeyframeTable:
    """The detections side from results rows, at most ``capacity`` per keyframe (0: all)."""
    table = KeyframeTable(class_ids, capacity=capacity)
    for d in rows:
        if d.action_id is None:
            raise ValueError(
                f"detection at {d.video_id},{d.timestamp} has no action id; "
                "frame-mAP needs results rows (video,timestamp,box,action_id,score)"
            )
        table.add(image_key(d.video_id, d.timestamp), d.box, d.action_id, d.score, line=d.line)
    return table


def evaluate_tables(
    gt: KeyframeTable,
    detections: KeyframeTable,
    label_map: LabelMap,
    excluded: set[ImageKey],
    *,
    iou_threshold: float = IOU_THRESHOLD,
) -> EvalResult:
    """Frame-mAP from the two sides as read (steps 4-9 of the module docstring)."""
    bad_gt = [(key, line) for key, line in gt.inverted if key not in excluded]
    if bad_gt:
        (video, ts), line = bad_gt[0]
        where = f"line {line}, " if line is not None else ""
        raise ValueError(
            f"{len(bad_gt)} GT box(es) with x2 < x1 or y2 < y1, the first at {where}"
            f"{video},{ts}; the official evaluator stops on such GT boxes (fix the GT file)"
        )
    gt_frames = gt.entries()
    det_frames = detections.entries()
    listed = gt.listed - excluded

    excluded_gt = [k for k in gt_frames if k in excluded]
    num_excluded_gt_rows = sum(len(gt_frames.pop(k)) for k in excluded_gt)
    excluded_det = [k for k in det_frames if k in excluded]
    num_excluded_det_rows = sum(len(det_frames.pop(k)) for k in excluded_det)
    unlisted = [k for k in det_frames if k not in listed]
    num_unlisted_rows = sum(len(det_frames.pop(k)) for k in unlisted)

    # -- per-class GT counts over all (non-excluded) keyframes.
    num_gt = dict.fromkeys(label_map.ids, 0)
    for entries in gt_frames.values():
        for entry in entries:
            num_gt[entry[1]] += 1

    # -- match per keyframe and class; collect (score, tp) per class in upstream order.
    scores: dict[int, list[float]] = {i: [] for i in label_map.ids}
    is_tp: dict[int, list[bool]] = {i: [] for i in label_map.ids}
    num_invalid = 0
    for key, det_list in det_frames.items():
        gt_list = gt_frames.get(key, [])
        det_arr = np.array([e[2:] for e in det_list], dtype=np.float64).reshape(-1, 4)  # yxyx
        det_cls = np.array([e[1] for e in det_list], dtype=np.int64)
        det_score = np.array([e[0] for e in det_list], dtype=np.float64)
        valid = (det_arr[:, 0] < det_arr[:, 2]) & (det_arr[:, 1] < det_arr[:, 3])
        num_invalid += int((~valid).sum())
        gt_arr = np.array([e[2:] for e in gt_list], dtype=np.float64).reshape(-1, 4)
        gt_cls = np.array([e[1] for e in gt_list], dtype=np.int64)
        for class_id in np.unique(det_cls[valid]).tolist():
            pick = valid & (det_cls == class_id)
            labels = _match(det_arr[pick], gt_arr[gt_cls == class_id], iou_threshold)
            scores[class_id].extend(det_score[pick].tolist())
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
    rules = RuleCounts(
        gt_unknown_class=gt.unknown_class,
        det_unknown_class=detections.unknown_class,
        gt_empty_keyframe=gt.empty_rows,
        det_empty_keyframe=detections.empty_rows,
        det_without_score=detections.without_score,
        gt_outside_frame=gt.outside_frame,
        det_outside_frame=detections.outside_frame,
        det_over_cap=detections.over_cap,
        gt_excluded=num_excluded_gt_rows,
        det_excluded=num_excluded_det_rows,
        det_unlisted_keyframe=num_unlisted_rows,
        unlisted_keyframes=len(unlisted),
        det_invalid_box=num_invalid,
    )
    return EvalResult(
        classes=tuple(results),
        mean_ap=_nanmean_by_id(results),
        num_gt_keyframes=len(gt_frames),
        num_detection_keyframes=len(det_frames),
        num_excluded_gt_keyframes=len(excluded_gt),
        num_excluded_detection_keyframes=len(excluded_det),
        num_capped_detections=detections.over_cap,
        max_detections_per_keyframe=detections.capacity,
        iou_threshold=iou_threshold,
        rules=rules,
    )


def _nanmean_by_id(results: Sequence[ClassResult]) -> float:
    """``np.nanmean`` over an array indexed by class id, as upstream sums it."""
    if not results or all(math.isnan(c.ap) for c in results):
        return math.nan
    by_id = np.full(max(c.class_id for c in results), np.nan)
    for c in results:
        by_id[c.class_id - 1] = c.ap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(by_id))


def _match(det_boxes: FloatArray, gt_boxes: FloatArray, threshold: float) -> npt.NDArray[np.bool_]:
    """TP flags for one keyframe and class; detections already in score order (VOC greedy)."""
    is_tp = np.zeros(len(det_boxes), dtype=bool)
    if len(gt_boxes) == 0:
        return is_tp
    iou = iou_matrix(det_boxes, gt_boxes)  # (D, G); the official np_box_ops.iou arithmetic
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

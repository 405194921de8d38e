"""Person AP@0.5 of a detector on a dataset split, and its proposals CSV.

Metric: Pascal VOC all-point AP at IoU >= 0.5, one class (person), over all keyframes of
the split pooled. Per keyframe, detections are matched to ground truth greedily in
descending score; a detection is a true positive when its best-IoU ground-truth box (over
all of the keyframe's boxes) has IoU >= 0.5 and is not taken yet -- the ActivityNet AVA /
TF object-detection rule, which `training.evaluation` uses for frame-mAP too; the AP
itself is `training.evaluation.average_precision` (precision envelope, area under the
recall steps).

Proposals CSV: ``video_id,timestamp,x1,y1,x2,y2,score`` with boxes normalised to the
frame (the format `core.ava_data.read_proposals` reads), so the action model's
evaluation can run on detected boxes.

Two runners give the same `DetectionSet`: a PyTorch checkpoint (`run_checkpoint`) and an
exported ``detector.onnx`` through ONNX Runtime (`run_onnx`), both fed by
`core.detector_io.preprocess`, the service's own preprocessing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.boxes import iou_matrix
from core.manifest import DetectorSpec
from training.detector.data import KeyframeImage

__all__ = [
    "DetectionSet",
    "PersonAP",
    "match_detections",
    "person_ap",
    "run_checkpoint",
    "run_onnx",
    "threshold_sweep",
    "write_proposals",
]

StrPath = str | PathLike[str]
FloatArray = npt.NDArray[np.float32]
IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class DetectionSet:
    """Detections of one keyframe: ``boxes (N, 4)`` normalised xyxy, ``scores (N,)``."""

    video_id: str
    timestamp: int
    boxes: FloatArray
    scores: FloatArray

    @property
    def key(self) -> tuple[str, int]:
        return (self.video_id, self.timestamp)


@dataclass(frozen=True)
class PersonAP:
    """AP@0.5 and the counts it came from."""

    ap: float
    num_gt: int
    num_detections: int
    num_keyframes: int


def match_detections(
    det_boxes: FloatArray, det_scores: FloatArray, gt_boxes: FloatArray, iou: float = IOU_THRESHOLD
) -> npt.NDArray[np.bool_]:
    """True positives of one keyframe's detections (input order kept), greedy by score."""
    tp = np.zeros(det_boxes.shape[0], dtype=bool)
    if det_boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return tp
    ious = iou_matrix(det_boxes.astype(np.float64), gt_boxes.astype(np.float64))  # (N, G)
    taken = np.zeros(gt_boxes.shape[0], dtype=bool)
    for i in np.argsort(-det_scores, kind="stable"):
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= iou and not taken[j]:
            tp[i] = taken[j] = True
    return tp


def person_ap(
    detections: Iterable[DetectionSet],
    ground_truth: Sequence[KeyframeImage],
    *,
    min_score: float = 0.0,
    iou: float = IOU_THRESHOLD,
) -> PersonAP:
    """VOC AP@``iou`` over all keyframes of ``ground_truth``; detections of keyframes not
    in the ground truth are ignored (AVA's rule for unlabelled keyframes)."""
    from training.evaluation import average_precision

    gt = {(k.video_id, k.timestamp): k.boxes for k in ground_truth}
    scores: list[FloatArray] = []
    tps: list[npt.NDArray[np.bool_]] = []
    for d in detections:
        key = d.key
        if key not in gt:
            continue
        keep = d.scores >= min_score
        scores.append(d.scores[keep])
        tps.append(match_detections(d.boxes[keep], d.scores[keep], gt[key], iou))
    num_gt = sum(int(b.shape[0]) for b in gt.values())
    all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    all_tp = np.concatenate(tps) if tps else np.zeros(0, bool)
    return PersonAP(
        ap=average_precision(all_scores.astype(np.float64), all_tp, num_gt),
        num_gt=num_gt,
        num_detections=int(all_scores.size),
        num_keyframes=len(gt),
    )


def threshold_sweep(
    detections: Sequence[DetectionSet],
    ground_truth: Sequence[KeyframeImage],
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.0, 0.95, 0.05), 2)),
) -> list[dict[str, float]]:
    """Precision, recall and F1 of the boxes kept at each score threshold (IoU 0.5)."""
    gt = {(k.video_id, k.timestamp): k.boxes for k in ground_truth}
    num_gt = sum(int(b.shape[0]) for b in gt.values())
    rows = []
    for thr in thresholds:
        tp = kept = 0
        for d in detections:
            if d.key not in gt:
                continue
            keep = d.scores >= thr
            kept += int(keep.sum())
            tp += int(match_detections(d.boxes[keep], d.scores[keep], gt[d.key]).sum())
        precision = tp / kept if kept else 1.0
        recall = tp / num_gt if num_gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"threshold": float(thr), "precision": precision, "recall": recall, "f1": f1})
    return rows


def write_proposals(detections: Iterable[DetectionSet], path: StrPath) -> int:
    """Write the AVA proposals CSV; returns the number of rows."""
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for d in detections:
            for box, score in zip(d.boxes, d.scores, strict=True):
                writer.writerow(
                    [d.video_id, f"{d.timestamp:04d}", *(f"{v:.4f}" for v in box), f"{score:.4f}"]
                )
                n += 1
    return n


# -- runners ---------------------------------------------------------------------------------

# (1, 3, H, W) input -> (boxes (N, 4) canvas px, scores (N,)) for one image.
Predictor = Callable[[FloatArray], tuple[FloatArray, FloatArray]]


def _run(
    items: Sequence[KeyframeImage],
    spec: DetectorSpec,
    predict: Predictor,
    progress: Callable[[int], None] | None = None,
) -> list[DetectionSet]:
    from core.detector_io import preprocess, unletterbox_boxes

    out = []
    for i, item in enumerate(items):
        images, t = preprocess(item.image, spec)
        boxes, scores = predict(images)
        frame = unletterbox_boxes(boxes, t)  # (N, 4) frame px, clipped
        h, w = item.image.shape[:2]
        norm = (frame / np.array([w, h, w, h], np.float32)).astype(np.float32)
        out.append(DetectionSet(item.video_id, item.timestamp, norm, scores.astype(np.float32)))
        if progress is not None:
            progress(i + 1)
    return out


def run_checkpoint(
    checkpoint: StrPath,
    items: Sequence[KeyframeImage],
    progress: Callable[[int], None] | None = None,
) -> tuple[list[DetectionSet], DetectorSpec]:
    """Detections of a training checkpoint (eager PyTorch, the config's NMS)."""
    import torch

    from training.detector.checkpoint import load_detector_checkpoint
    from training.detector.model import detect, detector_spec

    model = load_detector_checkpoint(checkpoint)
    model.eval()
    spec = detector_spec(model.config)

    def predict(images: FloatArray) -> tuple[FloatArray, FloatArray]:
        det = detect(model, torch.from_numpy(images))
        return det.boxes.numpy(), det.scores.numpy()

    return _run(items, spec, predict, progress), spec


def run_onnx(
    onnx_path: StrPath,
    items: Sequence[KeyframeImage],
    spec: DetectorSpec | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[DetectionSet], DetectorSpec]:
    """Detections of a ``detector.onnx`` through ONNX Runtime (CPU).

    ``spec`` defaults to the one `training.detector.export` stores in the file's metadata
    (a bundle's manifest holds the same record).
    """
    import onnxruntime as ort

    from training.detector.export import read_spec

    spec = spec or read_spec(onnx_path)
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    person = spec.person_class_id

    def predict(images: FloatArray) -> tuple[FloatArray, FloatArray]:
        boxes, scores, class_ids = sess.run(["boxes", "scores", "class_ids"], {"images": images})
        keep = class_ids == person
        return boxes[keep], scores[keep]

    return _run(items, spec, predict, progress), spec

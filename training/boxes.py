"""Where person boxes come from at test time: ground truth, a proposals file, or a detector.

All sources give one `KeyframeProposals` (normalised xyxy + scores) per keyframe. The
detector source runs a person-detector ONNX graph (outputs ``boxes`` (N, 4) in input
pixels, ``scores`` (N,), ``class_ids`` (N,), after NMS) with ONNX Runtime on the keyframe.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from core.ava_data import (
    DatasetInfo,
    KeyframeAnnotation,
    KeyframeProposals,
    group_proposals,
    read_proposals,
)

__all__ = ["BoxSource", "detector_boxes", "gt_boxes", "proposals_boxes"]

StrPath = str | PathLike[str]
BoxSource = str  # "gt", "detector" or a proposals CSV path


def gt_boxes(keyframes: Sequence[KeyframeAnnotation]) -> list[KeyframeProposals]:
    """Ground-truth boxes with score 1 (the reports' training and oracle-box setting)."""
    return [
        KeyframeProposals(kf.video_id, kf.timestamp, kf.boxes, np.ones(len(kf), np.float32))
        for kf in keyframes
    ]


def proposals_boxes(path: StrPath, *, min_score: float = 0.0) -> list[KeyframeProposals]:
    """A proposals CSV (``video_id,timestamp,x1,y1,x2,y2,score``), boxes below ``min_score``
    dropped."""
    return group_proposals(read_proposals(path, min_score=min_score))


def detector_boxes(
    detector: StrPath,
    data_dir: StrPath,
    info: DatasetInfo,
    keys: Sequence[tuple[str, int]],
    *,
    min_score: float = 0.0,
) -> list[KeyframeProposals]:
    """Run a person-detector ONNX graph on the keyframe of every (video, timestamp).

    Preprocessing (letterbox, normalisation) and the person class come from the
    `DetectorSpec` that `training.detector.export` stores in the graph's metadata -- the
    same rule the service applies (core.detector_io). Boxes are normalised here.
    """
    import onnxruntime as ort

    from core.detector_io import preprocess, unletterbox_boxes
    from training.detector.export import read_spec
    from training.frame_cache import FrameCache

    spec = read_spec(detector)
    session = ort.InferenceSession(str(detector), providers=["CPUExecutionProvider"])
    cache = FrameCache(data_dir, None, fps=info.fps, cache_dir=None)
    out: list[KeyframeProposals] = []
    for video_id, timestamp in keys:
        frame = cache.get(video_id).frame_at(info.video_time(timestamp))  # (h, w, 3) uint8
        images, transform = preprocess(np.ascontiguousarray(frame), spec)  # (1, 3, H, W)
        boxes, scores, classes = session.run(
            ["boxes", "scores", "class_ids"], {session.get_inputs()[0].name: images}
        )
        keep = (np.asarray(classes).reshape(-1) == spec.person_class_id) & (
            np.asarray(scores).reshape(-1) >= min_score
        )
        px = unletterbox_boxes(np.asarray(boxes).reshape(-1, 4)[keep], transform)  # frame px
        h, w = frame.shape[:2]
        norm = np.clip(px / np.array([w, h, w, h], np.float32), 0.0, 1.0).astype(np.float32)
        valid = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
        kept_scores = np.asarray(scores, np.float32).reshape(-1)[keep][valid]
        out.append(KeyframeProposals(video_id, timestamp, norm[valid], kept_scores))
    return out


def resolve_boxes(
    source: BoxSource,
    *,
    keyframes: Sequence[KeyframeAnnotation],
    data_dir: StrPath,
    info: DatasetInfo,
    detector: StrPath | None = None,
    min_score: float = 0.0,
) -> list[KeyframeProposals]:
    """``gt`` | ``detector`` (needs ``detector``) | a proposals CSV path."""
    if source == "gt":
        return gt_boxes(keyframes)
    if source == "detector":
        if detector is None or not Path(detector).is_file():
            raise ValueError(
                f"--boxes detector needs --detector PATH to a detector ONNX graph (got {detector})"
            )
        return detector_boxes(
            detector, data_dir, info, [kf.key for kf in keyframes], min_score=min_score
        )
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--boxes {source!r}: expected gt, detector or a proposals CSV file")
    return proposals_boxes(path, min_score=min_score)

"""Axis-aligned boxes in numpy (torch-free): the project's one IoU and one greedy NMS.

Boxes are ``(N, 4)`` corner boxes, xyxy (yxyx works alike: IoU is symmetric in the axes).

* `iou_matrix` -- IoU of every pair, 0 where the union is empty (or NaN). The tracker, the
  AVA evaluation (the same float operations as the official ``np_box_ops.iou``, so an IoU of
  exactly 0.5 is decided the same way), the detector evaluation and the bank reader use it.
* `nms` -- greedy NMS of one image and class with ONNX ``NonMaxSuppression`` semantics:
  corners are min/max-ordered (``center_point_box=0``), candidates are ``score >
  score_threshold``, a box is suppressed by a kept one when IoU ``> iou_threshold``, ties in
  score keep the lower index first (a stable sort, as ONNX Runtime), at most ``max_keep``.
  Thresholds are compared in the scores' dtype (float32 for detector outputs, as the graph).
* `batched_nms` -- `nms` per image and class: ``(B, A, 4)``, ``(B, K, A)`` -> the ``(M, 3)``
  rows ``(batch, class, index)`` that ONNX ``NonMaxSuppression`` selects, in its order.

The arithmetic keeps the input dtype (float32 boxes give float32 IoU).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["batched_nms", "iou_matrix", "nms"]

Array = npt.NDArray[np.floating]


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> Array:
    """IoU between ``a (A, 4)`` and ``b (B, 4)`` corner boxes -> ``(A, B)``; no "+1"."""
    a = np.asarray(a)
    b = np.asarray(b)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    nonempty = union > 0
    out: Array = np.where(nonempty, inter / np.where(nonempty, union, 1), 0)
    return out


def _ordered_corners(boxes: Array) -> Array:
    """Corners min/max-ordered per axis, as ONNX NonMaxSuppression reads xyxy boxes."""
    lo = np.minimum(boxes[:, 0:2], boxes[:, 2:4])
    hi = np.maximum(boxes[:, 0:2], boxes[:, 2:4])
    return np.concatenate([lo, hi], axis=1)


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    iou_threshold: float,
    score_threshold: float,
    max_keep: int,
) -> npt.NDArray[np.int64]:
    """Greedy NMS of one image and class: boxes ``(N, 4)``, scores ``(N,)`` -> kept indices
    ``(M,)`` int64 in descending score (ONNX ``NonMaxSuppression`` rules, module docstring)."""
    boxes = _ordered_corners(np.asarray(boxes).reshape(-1, 4))
    scores = np.asarray(scores).reshape(-1)
    cast = scores.dtype.type if np.issubdtype(scores.dtype, np.floating) else float
    cand = np.flatnonzero(scores > cast(score_threshold))
    order = cand[np.argsort(-scores[cand], kind="stable")]
    limit = cast(iou_threshold)
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou_matrix(boxes[i : i + 1], boxes[rest])[0] <= limit]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    iou_threshold: float,
    score_threshold: float,
    max_per_class: int,
) -> npt.NDArray[np.int64]:
    """`nms` per image and class: boxes ``(B, A, 4)``, scores ``(B, K, A)`` -> ``(M, 3)`` rows
    ``(batch, class, index)``, ordered by batch, class, descending score (ONNX's output)."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    rows: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        for k in range(scores.shape[1]):
            kept = nms(
                boxes[b],
                scores[b, k],
                iou_threshold=iou_threshold,
                score_threshold=score_threshold,
                max_keep=max_per_class,
            )
            rows.extend((b, k, int(i)) for i in kept)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

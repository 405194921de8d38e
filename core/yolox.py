"""YOLOX head output decoding in numpy (torch-free): the one decoder the service (a raw YOLOX
``--detector``) and the export (the reference its appended ONNX decode is tested against) use.

The public YOLOX ONNX export ends at the head, ``output (B, A, 5 + C)`` with, per anchor,
``[x, y, log w, log h, objectness, class probs]`` over a grid of strides 8/16/32::

    xy = (raw_xy + cell) * stride,  wh = exp(raw_wh) * stride,  score = obj * cls

A given file may already decode boxes or apply the sigmoids; that layout is read off two
probe runs (`probe_images` -> run the model -> `layout_from_probes`), not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "YOLOX_STRIDES",
    "YoloxLayout",
    "decode_yolox",
    "layout_from_probes",
    "probe_images",
    "yolox_grid",
]

YOLOX_STRIDES = (8, 16, 32)
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class YoloxLayout:
    """What a YOLOX head output already contains.

    ``decoded``: boxes already in pixels (exported with decode_in_inference) rather than raw
    grid offsets. ``sigmoid_applied``: objectness and class columns already probabilities.
    """

    decoded: bool
    sigmoid_applied: bool


def yolox_grid(
    input_hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES
) -> tuple[F32, F32]:
    """Per-anchor grid cell ``(A, 2)`` as (x, y) and stride ``(A, 1)``, in YOLOX's anchor order.

    Levels in stride order; inside a level, row-major over (y, x) with x fastest, which is how
    YOLOX flattens each level's (h, w) feature map.
    """
    grids, steps = [], []
    for s in strides:
        h, w = input_hw[0] // s, input_hw[1] // s
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full((h * w, 1), s))
    return (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(steps).astype(np.float32),
    )


def decode_yolox(
    raw: npt.ArrayLike,
    input_hw: tuple[int, int],
    layout: YoloxLayout,
    *,
    class_ids: Sequence[int] = (0,),
    strides: Sequence[int] = YOLOX_STRIDES,
) -> tuple[F32, F32]:
    """Head output ``(B, A, 5 + C)`` -> boxes ``(B, A, 4)`` xyxy canvas pixels and scores
    ``(B, A, K)`` (``K = len(class_ids)``: ``obj * cls`` of the kept classes only), float32."""
    raw = np.asarray(raw).astype(np.float32)
    if layout.decoded:
        ctr, size = raw[..., 0:2], raw[..., 2:4]
    else:
        grid, stride = yolox_grid(input_hw, strides)
        ctr = (raw[..., 0:2] + grid) * stride
        size = np.exp(raw[..., 2:4]) * stride
    half = size * np.float32(0.5)
    boxes = np.concatenate([ctr - half, ctr + half], axis=-1)
    obj = raw[..., 4:5]
    cls = raw[..., [5 + c for c in class_ids]]
    if not layout.sigmoid_applied:
        obj = (1 / (1 + np.exp(-obj))).astype(np.float32)
        cls = (1 / (1 + np.exp(-cls))).astype(np.float32)
    return boxes.astype(np.float32), (obj * cls).astype(np.float32)


def probe_images(height: int, width: int) -> list[F32]:
    """Two ``(1, 3, H, W)`` inputs to run a YOLOX model on before `layout_from_probes`."""
    rng = np.random.default_rng(0)
    return [
        rng.uniform(0, 255, (1, 3, height, width)).astype(np.float32),
        np.full((1, 3, height, width), 114, np.float32),
    ]


def layout_from_probes(outputs: npt.ArrayLike) -> YoloxLayout:
    """The layout read off the model's outputs on `probe_images` (concatenated on axis 1).

    Raw xy offsets are cell-relative (a few units); decoded centres reach hundreds of pixels.
    Sigmoid outputs stay in [0, 1]; logits do not (they go negative).
    """
    out = np.asarray(outputs)
    if out.ndim != 3 or out.shape[2] < 6:
        raise ValueError(f"YOLOX output has shape {out.shape}, expected (B, A, 5 + C)")
    conf = out[..., 4:]
    return YoloxLayout(
        decoded=float(np.abs(out[..., 0:2]).max()) > max(YOLOX_STRIDES),
        sigmoid_applied=bool(conf.min() >= 0.0 and conf.max() <= 1.0),
    )

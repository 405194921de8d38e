"""An independent RoIAlign for tests: torchvision's / mmcv's ``roi_align`` semantics, one
sample point at a time, in float64 numpy. Written from the published algorithm (He et al.,
Mask R-CNN; the ``aligned`` half-pixel shift of Detectron2), not from ``models/roi.py``,
so that it can judge that module; it also stands in for the compiled
``torchvision.ops.RoIAlign`` / ``mmcv.ops.RoIAlign`` when the upstream models are run.

Boxes are (K, 5) = (batch_index, x1, y1, x2, y2) in input pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _sample(plane: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear value of ``plane`` (C, H, W) at (y, x) with RoIAlign's border rules: a point
    more than one cell outside the map is 0; otherwise it is clamped into the map."""
    height, width = plane.shape[1:]
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return np.zeros(plane.shape[0])
    y = min(max(y, 0.0), height - 1.0)
    x = min(max(x, 0.0), width - 1.0)
    top, left = int(y), int(x)  # y, x >= 0 here, so int() is floor
    bottom, right = min(top + 1, height - 1), min(left + 1, width - 1)
    dy, dx = y - top, x - left
    return (
        plane[:, top, left] * (1 - dy) * (1 - dx)
        + plane[:, top, right] * (1 - dy) * dx
        + plane[:, bottom, left] * dy * (1 - dx)
        + plane[:, bottom, right] * dy * dx
    )


def roi_align_np(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """(N, C, H, W), (K, 5) -> (K, C, oh, ow), in the features' dtype."""
    fmap = features.detach().double().numpy()
    boxes = rois.detach().double().numpy()
    oh, ow = output_size
    out = np.zeros((len(boxes), fmap.shape[1], oh, ow))
    shift = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes):
        left, top = x1 * spatial_scale - shift, y1 * spatial_scale - shift
        width = x2 * spatial_scale - shift - left
        height = y2 * spatial_scale - shift - top
        if not aligned:  # legacy: every box covers at least one cell
            width, height = max(width, 1.0), max(height, 1.0)
        cell_h, cell_w = height / oh, width / ow
        n_y = sampling_ratio if sampling_ratio > 0 else math.ceil(cell_h)
        n_x = sampling_ratio if sampling_ratio > 0 else math.ceil(cell_w)
        plane = fmap[int(b)]
        for i in range(oh):
            for j in range(ow):
                acc = np.zeros(fmap.shape[1])
                for sy in range(n_y):
                    y = top + i * cell_h + (sy + 0.5) * cell_h / n_y
                    for sx in range(n_x):
                        x = left + j * cell_w + (sx + 0.5) * cell_w / n_x
                        acc += _sample(plane, y, x)
                out[k, :, i, j] = acc / max(n_y * n_x, 1)
    return torch.from_numpy(out).to(features.dtype)


class RoIAlignStandIn(nn.Module):
    """RoIAlign computed by ``roi_align_np``; subclasses give each library's constructor."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        self.output_size = (int(size[0]), int(size[1]))
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_align_np(
            features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )


class TorchvisionRoIAlign(RoIAlignStandIn):
    """``torchvision.ops.RoIAlign``'s constructor (``aligned`` defaults to False)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, aligned)


class MmcvRoIAlign(RoIAlignStandIn):
    """``mmcv.ops.RoIAlign``'s constructor (``aligned`` defaults to True). Only
    ``pool_mode='avg'`` is computed: MMAction2's AVA heads use nothing else."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        pool_mode: str = "avg",
        aligned: bool = True,
        use_torchvision: bool = False,
    ) -> None:
        if pool_mode != "avg":
            raise NotImplementedError(f"mmcv RoIAlign stand-in: pool_mode {pool_mode!r}")
        super().__init__(output_size, spatial_scale, sampling_ratio, aligned)

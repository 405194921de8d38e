"""A small anchor-free, single-class person detector (CenterNet / TTFNet-style) in plain
PyTorch.

Data flow (``s = 4``, the output stride)::

    images (B, 3, H, W)  RGB, /255, (x - mean) / std, letterboxed (core.detector_io)
      -> backbone: conv stem to s4, residual stages at s8, s16, s32
      -> top-down neck (nearest 2x upsampling + lateral 1x1) back to s4
      -> head at s4:  heat (B, 1, H/s, W/s)  person-centre logits
                      ltrb (B, 4, H/s, W/s)  log(distance / s) from the cell centre to
                                             the box's left, top, right, bottom edges
      -> decode: sigmoid, top-K cells           -> candidates (B, K, 4) xyxy input pixels,
                                                  scores (B, K)
      -> greedy NMS (`core.boxes.nms`, ONNX NonMaxSuppression semantics) -> BatchDetections

Why this design: one heatmap peak per person needs no anchors (CenterNet, Zhou et al.
2019); the decode is a max-pool plus a top-K, both plain ONNX ops; with one class the head
has five channels. Boxes are regressed TTFNet-style (Liu et al. 2020, "Training-Time-
Friendly Network"): edge distances at every cell of a Gaussian area around the centre,
trained with a GIoU loss. That trains many cells per person instead of CenterNet's one
(size + offset at the centre cell only), which is what makes a from-scratch detector
converge in a few CPU minutes, and GIoU optimises the overlap AP@0.5 measures: a first
CenterNet version plateaued at AP 0.898 with its misses all boxes of IoU 0.15-0.5.

No CenterNet 3x3 peak test by default: it suppresses the peak of a person standing right
behind another (centres one cell apart), which the world's occlusions make common. Every
cell's box competes in NMS instead (IoU 0.6): measured on two worlds' val splits with one
checkpoint, AP@0.5 went from 0.911 / 0.891 (peak test, NMS 0.5) to 0.942 / 0.909. The
uniform ``detector.onnx`` contract (export/detector.py) has NMS in the graph anyway: the
export appends ONNX ``NonMaxSuppression`` behind the decoded candidates (export.py).

Box convention: a box is ``(x1, y1, x2, y2)`` in input pixels where the image spans
``[0, W] x [0, H]``. Heatmap cell ``(i, j)`` covers ``[j s, (j + 1) s) x [i s, (i + 1) s)``
and its reference point is its centre ``((j + 0.5) s, (i + 0.5) s)``; a person's peak is
the cell holding its box centre.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from core.boxes import nms
from core.manifest import DetectorSpec

__all__ = [
    "DetectorConfig",
    "BatchDetections",
    "PersonDetectorNet",
    "decode",
    "detect",
    "detector_spec",
    "encode_targets",
]

# ImageNet statistics: the usual choice; the manifest records them, so nothing else
# depends on the exact values.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that shapes the network and its decode; saved in the checkpoint."""

    # (H, W) of the graph input. 256x320 holds a 320x240 world frame at scale 1 (16 rows
    # of padding) and is divisible by 32, the deepest stride.
    input_hw: tuple[int, int] = (256, 320)
    # Channels at strides 2, 4, 8, 16, 32. Narrow early stages: at s2/s4 every channel costs
    # 16x/4x what it costs at s8, and the world's people are 15-110 px wide.
    widths: tuple[int, int, int, int, int] = (16, 24, 48, 80, 112)
    head_width: int = 24
    stride: int = 4
    # Candidates kept by the decode's top-K (before NMS). A world frame has <= 5 people;
    # 100 also bounds the ONNX NMS input.
    max_candidates: int = 100
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # CenterNet's 3x3 max-pool peak test before top-K (see the module docstring: off, NMS
    # alone separates overlapping people better).
    peak_filter: bool = False
    # Post-processing defaults baked into the exported graph (DetectorSpec fields).
    nms_iou: float = 0.6
    nms_score_threshold: float = 0.05
    max_detections: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h, w = self.input_hw
        if h % 32 or w % 32:
            raise ValueError(f"input_hw {self.input_hw}: both sides must be multiples of 32")
        if self.stride != 4:
            raise ValueError(f"stride {self.stride}: the neck ends at stride 4 only")

    @property
    def out_hw(self) -> tuple[int, int]:
        return (self.input_hw[0] // self.stride, self.input_hw[1] // self.stride)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        d = dict(d)
        for key in ("input_hw", "widths", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# -- network ---------------------------------------------------------------------------------


def _cbr(c_in: int, c_out: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (ResNet basic block)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = _cbr(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class PersonDetectorNet(nn.Module):
    """images (B, 3, H, W) -> (heat (B, 1, h, w) logits, ltrb (B, 4, h, w) log-distances).

    ``h, w = H / 4, W / 4``. The forward returns a plain tuple so the TorchScript exporter
    and `torch.jit.trace` take it as is.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        c2, c4, c8, c16, c32 = self.config.widths
        self.stem = nn.Sequential(_cbr(3, c2, 2), _cbr(c2, c4, 2))  # s4
        self.stage8 = nn.Sequential(_cbr(c4, c8, 2), _Residual(c8))
        self.stage16 = nn.Sequential(_cbr(c8, c16, 2), _Residual(c16))
        self.stage32 = nn.Sequential(_cbr(c16, c32, 2), _Residual(c32))
        # Top-down neck: reduce the coarser map to the finer one's width, upsample, add.
        self.lat32 = _cbr(c32, c16, k=1)
        self.fuse16 = _cbr(c16, c16)
        self.lat16 = _cbr(c16, c8, k=1)
        self.fuse8 = _cbr(c8, c8)
        self.lat8 = _cbr(c8, c4, k=1)
        self.fuse4 = _cbr(c4, self.config.head_width)
        hw = self.config.head_width
        # One shared 3x3 layer, then 1x1 to the 5 outputs (heat, l, t, r, b): at
        # stride 4 every 3x3 layer costs as much as a whole deeper stage, and separate
        # towers gained nothing measurable on the world.
        self.head = _cbr(hw, hw)
        self.out = nn.Conv2d(hw, 5, 1)
        # Focal-loss prior (RetinaNet/CenterNet): start every cell at p = 0.01 so the
        # ~5000 background cells do not swamp the first iterations.
        assert self.out.bias is not None
        # Distances start at log(4 cells) = a 32x32 px box, the order of a person's size.
        with torch.no_grad():
            self.out.bias.fill_(math.log(4.0))
            self.out.bias[0] = -math.log((1 - 0.01) / 0.01)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x4 = self.stem(images)  # (B, c4, H/4, W/4)
        x8 = self.stage8(x4)  # (B, c8, H/8, W/8)
        x16 = self.stage16(x8)  # (B, c16, H/16, W/16)
        x32 = self.stage32(x16)  # (B, c32, H/32, W/32)
        p16 = self.fuse16(x16 + F.interpolate(self.lat32(x32), scale_factor=2.0, mode="nearest"))
        p8 = self.fuse8(x8 + F.interpolate(self.lat16(p16), scale_factor=2.0, mode="nearest"))
        p4 = self.fuse4(x4 + F.interpolate(self.lat8(p8), scale_factor=2.0, mode="nearest"))
        out = self.out(self.head(p4))  # (B, 5, h, w)
        return out[:, 0:1], out[:, 1:5]


# -- targets ---------------------------------------------------------------------------------

# TTFNet's elliptical Gaussian: sigma = alpha * side / 6 per axis. A circular CenterNet
# radius would be set by the (small) width and leave tall, thin people with a peak that
# is flat along y, which makes the peak's row unstable.
GAUSSIAN_ALPHA = 0.54
# TTFNet's regression area: cells whose centre lies in the centred sub-box of beta times
# the box size regress the box (weighted by a Gaussian of the same shape).
REGRESSION_BETA = 0.54


def encode_targets(
    boxes: npt.NDArray[np.floating], out_hw: tuple[int, int], stride: int
) -> dict[str, npt.NDArray[np.float32]]:
    """GT boxes ``(N, 4)`` xyxy in input pixels -> dense training targets at stride ``s``.

    Returns ``heat (1, h, w)`` (Gaussian peaks, 1 at each centre cell, max where two
    overlap), ``box (4, h, w)`` (the GT box, input px, at the cells that regress it) and
    ``weight (1, h, w)`` (regression weight; each person's weights sum to 1). Boxes of
    zero width or height are skipped. Where two regression areas overlap the smaller box
    keeps the cell (TTFNet: it has fewer cells to spare).
    """
    h, w = out_hw
    heat = np.zeros((1, h, w), np.float32)
    box_t = np.zeros((4, h, w), np.float32)
    weight = np.zeros((1, h, w), np.float32)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for i in np.argsort(-areas, kind="stable"):  # large first: smaller boxes overwrite
        x1, y1, x2, y2 = (float(v) / stride for v in b[i])
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cj = min(max(int(math.floor(cx)), 0), w - 1)
        ci = min(max(int(math.floor(cy)), 0), h - 1)
        sx = max(GAUSSIAN_ALPHA * bw / 6, 0.35)
        sy = max(GAUSSIAN_ALPHA * bh / 6, 0.35)
        g = np.exp(-((xs - cj) ** 2) / (2 * sx * sx) - ((ys - ci) ** 2) / (2 * sy * sy))
        np.maximum(heat[0], g.astype(np.float32), out=heat[0])
        # Regression area: cell centres (j + 0.5, i + 0.5) inside the beta sub-box, and
        # always the peak cell (a box smaller than a cell may contain no cell centre).
        area = (np.abs(xs + 0.5 - cx) <= REGRESSION_BETA * bw / 2) & (
            np.abs(ys + 0.5 - cy) <= REGRESSION_BETA * bh / 2
        )
        area[ci, cj] = True
        gr = np.where(area, g, 0.0)
        gr /= gr.sum()
        box_t[:, area] = b[i][:, None]
        weight[0, area] = gr[area]
    return {"heat": heat, "box": box_t, "weight": weight}


# -- decode and NMS --------------------------------------------------------------------------


def cell_centres(out_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """(2, h, w): x and y in input pixels of each cell's reference point (its centre)."""
    h, w = out_hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)])


def ltrb_to_boxes(ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """Raw ltrb (B, 4, h, w) -> boxes (B, 4, h, w) xyxy input pixels, one per cell."""
    centres = cell_centres((ltrb.shape[2], ltrb.shape[3]), stride).to(ltrb)  # (2, h, w)
    dist = torch.exp(ltrb) * stride
    return torch.cat([centres - dist[:, 0:2], centres + dist[:, 2:4]], dim=1)


def decode(
    heat: torch.Tensor, ltrb: torch.Tensor, *, stride: int, k: int, peak_filter: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs -> the top-``k`` cells' boxes (B, k, 4) xyxy input pixels and scores
    (B, k) in [0, 1] (descending).

    ``heat`` is logits. With ``peak_filter`` only cells equal to the max of their 3x3
    neighbourhood keep their score (the others get 0, kept rather than removed so shapes
    stay static for export). Written with ops the TorchScript exporter maps to
    default-domain ONNX (Sigmoid, MaxPool, TopK, GatherElements, Exp).
    """
    b, _, h, w = heat.shape
    prob = torch.sigmoid(heat)  # (B, 1, h, w)
    if peak_filter:
        peak = F.max_pool2d(prob, 3, stride=1, padding=1)
        prob = prob * (prob == peak).to(prob.dtype)
    k = min(k, h * w)
    scores, idx = torch.topk(prob.reshape(b, h * w), k, dim=1)  # (B, k)
    all_boxes = ltrb_to_boxes(ltrb, stride).reshape(b, 4, h * w)  # (B, 4, h*w)
    boxes = torch.gather(all_boxes, 2, idx.unsqueeze(1).expand(b, 4, k))  # (B, 4, k)
    return boxes.transpose(1, 2), scores


@dataclass(frozen=True)
class BatchDetections:
    """Person boxes of a batch after NMS: the graph's outputs, in eager PyTorch.

    ``boxes (N, 4)`` xyxy input pixels, ``scores (N,)``, ``class_ids (N,)`` int64 (all 0:
    one class), ``batch_index (N,)`` int64; ordered by image, then descending score.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    batch_index: torch.Tensor

    def __post_init__(self) -> None:
        n = self.scores.shape[0]
        if (
            self.boxes.shape != (n, 4)
            or self.class_ids.shape != (n,)
            or self.batch_index.shape != (n,)
        ):
            raise ValueError(
                f"BatchDetections: boxes {tuple(self.boxes.shape)}, scores ({n},), class_ids "
                f"{tuple(self.class_ids.shape)}, batch_index {tuple(self.batch_index.shape)}"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def image(self, i: int) -> BatchDetections:
        keep = self.batch_index == i
        return BatchDetections(
            self.boxes[keep], self.scores[keep], self.class_ids[keep], self.batch_index[keep]
        )


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    *,
    iou_threshold: float,
    score_threshold: float,
    max_output: int,
) -> BatchDetections:
    """Candidates (B, K, 4), (B, K) -> `BatchDetections` after per-image NMS."""
    out_b, out_s, out_i = [], [], []
    for i in range(boxes.shape[0]):
        # NMS in numpy (core.boxes, ONNX NonMaxSuppression rules): the same float32
        # arithmetic as the graph's, and the one NMS of the project.
        keep = torch.from_numpy(
            nms(
                boxes[i].detach().cpu().numpy(),
                scores[i].detach().cpu().numpy(),
                iou_threshold=iou_threshold,
                score_threshold=score_threshold,
                max_keep=max_output,
            )
        ).to(boxes.device)
        out_b.append(boxes[i][keep])
        out_s.append(scores[i][keep])
        out_i.append(torch.full((keep.numel(),), i, dtype=torch.int64))
    n = sum(int(s.numel()) for s in out_s)
    return BatchDetections(
        torch.cat(out_b).reshape(-1, 4) if out_b else boxes.new_zeros(0, 4),
        torch.cat(out_s) if out_s else scores.new_zeros(0),
        torch.zeros(n, dtype=torch.int64),
        torch.cat(out_i) if out_i else torch.zeros(0, dtype=torch.int64),
    )


@torch.no_grad()
def detect(
    model: PersonDetectorNet, images: torch.Tensor, *, score_threshold: float | None = None
) -> BatchDetections:
    """Eager inference with the config's post-processing: what ``detector.onnx`` computes.

    ``score_threshold``: NMS score floor; default the config's ``nms_score_threshold``
    (the exported graph bakes in the spec's, which can be lower).
    """
    c = model.config
    heat, ltrb = model(images)
    boxes, scores = decode(
        heat, ltrb, stride=c.stride, k=c.max_candidates, peak_filter=c.peak_filter
    )
    return postprocess(
        boxes,
        scores,
        iou_threshold=c.nms_iou,
        score_threshold=c.nms_score_threshold if score_threshold is None else score_threshold,
        max_output=c.max_detections,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def detector_spec(
    config: DetectorConfig, *, score_threshold: float = 0.5, file: str = "detector.onnx"
) -> DetectorSpec:
    """The manifest's detector record for a model of this config (format ``avaserve``).

    Preprocessing: RGB, letterboxed at the top-left corner (the world's 320x240 frames sit
    at scale 1 with 16 rows of padding below), pad 114 like YOLOX, ``/255`` then ImageNet
    mean/std. ``score_threshold`` is the service's keep threshold: pick it from a sweep
    (``avaserve eval-detector --sweep``); NMS settings come from the config.
    """
    h, w = config.input_hw
    return DetectorSpec(
        format="avaserve",
        file=file,
        input_height=h,
        input_width=w,
        resize="letterbox",
        letterbox_anchor="top_left",
        pad_value=114.0,
        channel_order="RGB",
        pixel_scale=255.0,
        mean=config.mean,
        std=config.std,
        score_threshold=score_threshold,
        nms_score_threshold=min(config.nms_score_threshold, score_threshold),
        nms_iou=config.nms_iou,
        max_detections=config.max_detections,
        person_class_id=0,
        class_ids=(0,),
    )

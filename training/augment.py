"""Training-clip augmentations (DESIGN.md, "Augmentation"): flip, box jitter, colour
jitter and scale jitter, as pure functions.

Conventions:

* ``clip``: (T, H, W, 3) RGB frames as decoded, uint8 or float in ``[0, 255]``, before
  mean/std normalisation. Every function returns a new float32 array.
* ``boxes``: (K, 4) xyxy in the same coordinates as the clip: pixels, where the image
  spans ``[0, W] x [0, H]`` (a pixel ``x`` covers ``[x, x + 1)``). Normalised boxes work
  with ``width = height = 1``.
* Randomness comes in as a ``numpy.random.Generator``; a clip gets one draw per
  augmentation, shared by all its frames (a colour or scale change that flickers from
  frame to frame would be a motion cue that is not in the data).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "adjust_colors",
    "apply_box_jitter",
    "color_jitter",
    "hflip",
    "jitter_boxes",
    "resize_clip_and_boxes",
    "scale_jitter",
]

FloatArray = npt.NDArray[np.float32]

# ITU-R BT.601 luma weights: the grey a saturation change blends towards.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_clip(clip: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(clip, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"clip must be (T, H, W, 3), got shape {arr.shape}")
    return arr


def _check_boxes(boxes: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) xyxy, got shape {arr.shape}")
    return arr


def hflip(clip: npt.ArrayLike, boxes: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Mirror the clip left-right; a box ``(x1, y1, x2, y2)`` becomes ``(W - x2, y1, W - x1, y2)``.

    The image spans ``[0, W]``, so column ``c`` (covering ``[c, c + 1)``) moves to
    ``W - 1 - c``, i.e. covers ``[W - c - 1, W - c)``: the box mapping is exact, with no
    half-pixel shift.
    """
    c = _check_clip(clip)
    b = _check_boxes(boxes)
    width = c.shape[2]
    out = c[:, :, ::-1, :].copy()  # (T, H, W, 3)
    fb = b.copy()
    fb[:, 0] = width - b[:, 2]
    fb[:, 2] = width - b[:, 0]
    return out, fb


def apply_box_jitter(
    boxes: npt.ArrayLike, jitter: npt.ArrayLike, *, width: float, height: float
) -> FloatArray:
    """Shift each box coordinate by a fraction of its box's size: deterministic box jitter.

    ``jitter``: (K, 4) ``(dx1, dy1, dx2, dy2)``; ``x1' = x1 + dx1 * w`` with ``w = x2 - x1``
    (``y`` with the height). The result is clipped to ``[0, width] x [0, height]`` and
    kept at least 1e-3 of the image wide and high, so a copy is never an empty box.
    """
    b = _check_boxes(boxes)
    j = np.asarray(jitter, dtype=np.float32).reshape(-1, 4)
    if j.shape[0] != b.shape[0]:
        raise ValueError(f"jitter has {j.shape[0]} rows for {b.shape[0]} boxes")
    w = (b[:, 2] - b[:, 0])[:, None]  # (K, 1)
    h = (b[:, 3] - b[:, 1])[:, None]
    scale = np.concatenate([w, h, w, h], axis=1)  # (K, 4)
    out = b + j * scale
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, height)
    min_w, min_h = 1e-3 * width, 1e-3 * height
    out[:, 2] = np.maximum(out[:, 2], np.minimum(out[:, 0] + min_w, width))
    out[:, 0] = np.minimum(out[:, 0], out[:, 2] - min_w)
    out[:, 3] = np.maximum(out[:, 3], np.minimum(out[:, 1] + min_h, height))
    out[:, 1] = np.minimum(out[:, 1], out[:, 3] - min_h)
    return out.astype(np.float32)


def jitter_boxes(
    boxes: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    ratio: float = 0.05,
    width: float,
    height: float,
) -> FloatArray:
    """Random box jitter: each coordinate moves by ``U(-ratio, ratio)`` of the box size.

    Report A trains with ground-truth boxes plus jitter so that the head sees boxes as
    loose as a detector's at test time.
    """
    b = _check_boxes(boxes)
    jitter = rng.uniform(-ratio, ratio, size=(b.shape[0], 4))
    return apply_box_jitter(b, jitter, width=width, height=height)


def color_jitter(
    clip: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
) -> FloatArray:
    """Brightness, then contrast, then saturation, each by a factor ``U(1 - s, 1 + s)``.

    * brightness ``f``: ``x * f``;
    * contrast ``f``: blend with the clip's mean grey level, ``g + f (x - g)``;
    * saturation ``f``: blend with each pixel's grey (BT.601 luma), ``l + f (x - l)``.

    Factors are drawn once per clip. The result is clipped to ``[0, 255]``.
    """
    c = _check_clip(clip)
    for name, s in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0 <= s <= 1:
            raise ValueError(f"color_jitter: {name} must be in [0, 1], got {s}")
    fb, fc, fs = (float(rng.uniform(1 - s, 1 + s)) for s in (brightness, contrast, saturation))
    return adjust_colors(c, brightness=fb, contrast=fc, saturation=fs)


def adjust_colors(
    clip: npt.ArrayLike, *, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0
) -> FloatArray:
    """`color_jitter` with given factors (1.0 leaves that property unchanged)."""
    c = _check_clip(clip)
    out = c * brightness
    grey_mean = float((out @ _LUMA).mean())
    out = grey_mean + contrast * (out - grey_mean)
    luma = (out @ _LUMA)[..., None]  # (T, H, W, 1)
    out = luma + saturation * (out - luma)
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def resize_clip_and_boxes(
    clip: npt.ArrayLike, boxes: npt.ArrayLike, short_side: int
) -> tuple[FloatArray, FloatArray]:
    """Resize so that ``min(H, W) == short_side`` (aspect kept, bilinear); scale the boxes.

    Boxes scale by the exact size ratio per axis (``W'/W`` and ``H'/H``, which differ
    slightly after rounding the long side), so they stay on the same content.
    """
    import torch
    import torch.nn.functional as F

    c = _check_clip(clip)
    b = _check_boxes(boxes)
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    _, h, w, _ = c.shape
    if h <= w:
        new_h, new_w = short_side, max(1, int(round(w * short_side / h)))
    else:
        new_w, new_h = short_side, max(1, int(round(h * short_side / w)))
    x = torch.from_numpy(np.ascontiguousarray(c)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    # align_corners=False: pixel centres map as (x + 0.5) * s - 0.5, matching box scaling
    # by the plain size ratio in the [0, W] convention.
    y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    out = y.permute(0, 2, 3, 1).numpy()  # (T, H', W', 3)
    sb = b.copy()
    sb[:, [0, 2]] *= new_w / w
    sb[:, [1, 3]] *= new_h / h
    return np.clip(out, 0.0, 255.0).astype(np.float32), sb


def scale_jitter(
    clip: npt.ArrayLike,
    boxes: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    short_side_range: tuple[int, int] = (224, 320),
) -> tuple[FloatArray, FloatArray]:
    """Resize to a random short side, an integer uniform in ``short_side_range`` (inclusive).

    ``(224, 320)`` is the AVA recipe's range (DESIGN.md); tiny presets pass smaller sizes.
    """
    lo, hi = short_side_range
    if not 1 <= lo <= hi:
        raise ValueError(f"short_side_range must be 1 <= lo <= hi, got {short_side_range}")
    side = int(rng.integers(lo, hi + 1))
    return resize_clip_and_boxes(clip, boxes, side)

"""Detector input/output geometry, torch-free: letterbox a frame in, map boxes back out.

The detector graph sees a fixed ``H x W`` canvas. For ``resize="letterbox"`` the frame
(``h x w``) is scaled by ``r = min(H / h, W / w)`` (aspect ratio kept) and placed at the
canvas' top-left corner (YOLOX's own preprocessing) or centre; the rest is ``pad_value``.
Boxes come out of the graph in canvas pixels, so a frame pixel ``p`` maps to
``p * r + offset`` and back with ``(q - offset) / r``. `LetterboxTransform` holds ``r`` and
the offsets so the service can map every box of a keyframe back without recomputing them.

Everything here is numpy + PIL (service dependencies); the rules come from the bundle's
`DetectorSpec`, so the service never hard-codes a detector's preprocessing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from core.manifest import DetectorSpec

__all__ = ["LetterboxTransform", "letterbox_transform", "preprocess", "unletterbox_boxes"]


@dataclass(frozen=True)
class LetterboxTransform:
    """Frame -> canvas mapping: ``canvas = frame * (scale_x, scale_y) + (pad_x, pad_y)``.

    ``resized_w x resized_h`` is the size of the frame inside the canvas. For letterboxing
    ``scale_x == scale_y``; for a plain stretch they differ and the pads are 0.
    """

    frame_h: int
    frame_w: int
    canvas_h: int
    canvas_w: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    resized_w: int
    resized_h: int


def letterbox_transform(frame_hw: tuple[int, int], spec: DetectorSpec) -> LetterboxTransform:
    """The frame -> canvas transform the detector spec prescribes for a frame of ``(h, w)``."""
    h, w = frame_hw
    if h <= 0 or w <= 0:
        raise ValueError(f"frame size must be positive, got (h, w) = {frame_hw}")
    ch, cw = spec.input_size
    if spec.resize == "stretch":
        return LetterboxTransform(h, w, ch, cw, cw / w, ch / h, 0, 0, cw, ch)
    r = min(ch / h, cw / w)
    # Round the resized size like YOLOX (int(h * r)); the scale used to map boxes back is
    # still r, as in YOLOX's own postprocessing, so both directions agree with the reference.
    rw, rh = max(1, int(w * r)), max(1, int(h * r))
    if spec.letterbox_anchor == "center":
        px, py = (cw - rw) // 2, (ch - rh) // 2
    else:
        px = py = 0
    return LetterboxTransform(h, w, ch, cw, r, r, px, py, rw, rh)


@functools.lru_cache(maxsize=8)  # specs are frozen (hashable); one table per detector
def _normalise_table(spec: DetectorSpec) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(3, 256) value -> graph input per channel (graph channel order) and the pad's (3,)."""
    v = np.arange(256, dtype=np.float32)[None, :].repeat(3, 0)  # (3, 256)
    pad = np.full((3, 1), spec.pad_value, dtype=np.float32)
    out = []
    for x in (v, pad):
        x = x / np.float32(spec.pixel_scale)
        if spec.mean is not None and spec.std is not None:
            mean = np.asarray(spec.mean, np.float32)[:, None]
            std = np.asarray(spec.std, np.float32)[:, None]  # graph channel order, as before
            x = ((x - mean) / std).astype(np.float32)
        x.flags.writeable = False  # cached and shared between calls
        out.append(x)
    return out[0], out[1][:, 0]


def preprocess(
    frame_rgb: NDArray[np.uint8], spec: DetectorSpec
) -> tuple[NDArray[np.float32], LetterboxTransform]:
    """An RGB ``(h, w, 3)`` uint8 frame -> the graph's ``images`` ``(1, 3, H, W)`` float32.

    Applies, in order: resize (bilinear) + pad per the spec, channel order, ``/ pixel_scale``,
    then ``(x - mean) / std`` when the spec normalises.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(
            f"frame must be (h, w, 3) uint8 RGB, got shape {frame_rgb.shape} "
            f"dtype {frame_rgb.dtype}"
        )
    t = letterbox_transform((frame_rgb.shape[0], frame_rgb.shape[1]), spec)
    resized = np.asarray(
        Image.fromarray(frame_rgb).resize((t.resized_w, t.resized_h), Image.Resampling.BILINEAR)
    )
    # Normalisation through a per-channel 256-entry table, written straight into the CHW
    # canvas: the same float32 operations per value as normalising the whole float canvas
    # (so the same bits), at a fraction of the passes over memory.
    lut, pad = _normalise_table(spec)  # (3, 256), (3,): in the graph's channel order
    src = (2, 1, 0) if spec.channel_order == "BGR" else (0, 1, 2)
    images = np.empty((1, 3, t.canvas_h, t.canvas_w), dtype=np.float32)
    y0, x0 = t.pad_y, t.pad_x
    for c in range(3):
        plane = images[0, c]
        plane[...] = pad[c]
        plane[y0 : y0 + t.resized_h, x0 : x0 + t.resized_w] = lut[c][resized[:, :, src[c]]]
    return images, t


def unletterbox_boxes(
    boxes: NDArray[np.floating], t: LetterboxTransform, *, clip: bool = True
) -> NDArray[np.float32]:
    """``(N, 4)`` xyxy boxes in canvas pixels -> xyxy in frame pixels (clipped to the frame)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0::2] = (b[:, 0::2] - t.pad_x) / np.float32(t.scale_x)
    out[:, 1::2] = (b[:, 1::2] - t.pad_y) / np.float32(t.scale_y)
    if clip:
        np.clip(out[:, 0::2], 0, t.frame_w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, t.frame_h, out=out[:, 1::2])
    return out


# Key of the ONNX model property that carries a detector graph's own `DetectorSpec`
# (written by the project's detector export), so the graph is self-describing.
SPEC_METADATA_KEY = "avaserve.detector_spec"


def spec_from_onnx_metadata(path: str | Path) -> DetectorSpec | None:
    """The `DetectorSpec` stored in a detector graph's metadata, or None if it has none.

    Read through ONNX Runtime (a service dependency), not the `onnx` package.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(SPEC_METADATA_KEY)
    return None if text is None else DetectorSpec.model_validate_json(text)

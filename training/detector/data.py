"""Keyframe images with their person boxes, and the detector's training augmentation.

A dataset directory (docs/internals.md) labels one frame per second; the detector trains
on exactly those frames. Each `KeyframeImage` is the decoded keyframe (uint8 RGB at the
source resolution) and its deduplicated person boxes: AVA repeats a box on one row per
action, and `core.ava_data.group_keyframes` already merges rows of one (box, person).

Augmentation happens on the letterbox canvas the graph sees (core.detector_io): the
frame is scaled by ``r * U(scale_range)`` (``r`` the letterbox scale), placed at a random
position (so the model sees people at every position and at the padded border), mirrored
with p = 0.5 and colour-jittered. Boxes follow the same affine map and are clipped to the
canvas; boxes left with < 40 % of their area (the world's own visibility rule) or thinner
than 2 px are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from core.manifest import DetectorSpec
from training.augment import color_jitter

__all__ = ["KeyframeImage", "augment", "load_keyframe_images", "stack_batch", "to_canvas"]

StrPath = str | PathLike[str]
Uint8Image = npt.NDArray[np.uint8]  # (H, W, 3) RGB
FloatArray = npt.NDArray[np.float32]

# Same rule as the world's annotations (CARD.md): a person is labelled when >= 40 % of
# the box is visible, so a box cropped below that should not be a positive either.
MIN_VISIBLE = 0.4


@dataclass(frozen=True)
class KeyframeImage:
    """One labelled frame: ``image (H, W, 3)`` uint8 RGB, ``boxes (N, 4)`` normalised xyxy."""

    video_id: str
    timestamp: int
    image: Uint8Image
    boxes: FloatArray

    def pixel_boxes(self) -> FloatArray:
        """``(N, 4)`` xyxy in frame pixels."""
        h, w = self.image.shape[:2]
        out: FloatArray = self.boxes * np.array([w, h, w, h], dtype=np.float32)
        return out


def load_keyframe_images(
    data_dir: StrPath,
    split: str,
    *,
    context_frames: int = 0,
    include_empty: bool = True,
) -> list[KeyframeImage]:
    """Decode every labelled keyframe of ``split`` (``train`` / ``val``) of a dataset dir.

    ``context_frames = n`` also returns the ``n`` frames before and after each keyframe
    (at the video's frame rate) with the keyframe's boxes: cheap extra views for training,
    accurate to the motion of 1/fps s. ``include_empty``: keep keyframes listed in the
    split's CSV that have no boxes (none in AVA; hard negatives where they exist).
    Excluded timestamps are skipped.
    """
    from core.ava_data import read_dataset_info, read_excluded_timestamps, read_keyframes
    from core.clips import ClipSpec, FrameFolder, find_video, iter_keyframe_clips

    root = Path(data_dir)
    info = read_dataset_info(root)
    ann = root / "annotations"
    excluded_path = ann / f"excluded_{split}.csv"
    excluded = read_excluded_timestamps(excluded_path if excluded_path.is_file() else None)
    keyframes = read_keyframes(ann / f"{split}.csv", excluded=excluded, unknown_classes="skip")
    if not include_empty:
        keyframes = [k for k in keyframes if len(k)]
    # 2n + 1 frames at the native rate centred on the keyframe; n = 0 is the keyframe alone.
    spec = ClipSpec(
        num_frames=2 * context_frames + 1,
        sampling_rate=1,
        target_fps=float(info.fps),
        alignment="center",
    )
    by_video: dict[str, list[int]] = {}
    for i, k in enumerate(keyframes):
        by_video.setdefault(k.video_id, []).append(i)
    out: list[KeyframeImage] = []
    for video_id, indices in by_video.items():
        times = {info.video_time(keyframes[i].timestamp): i for i in indices}
        frames_dir = root / "frames" / video_id
        clips: Iterator[tuple[float, Uint8Image]]
        if frames_dir.is_dir():
            folder = FrameFolder(frames_dir, info.fps)
            clips = ((t, folder.clip(t, spec)) for t in sorted(times))
        else:
            clips = iter_keyframe_clips(find_video(root / "videos", video_id), times, spec)
        for t, clip in clips:
            k = keyframes[times[t]]
            for frame in clip:  # (T, H, W, 3)
                out.append(KeyframeImage(k.video_id, k.timestamp, frame, k.boxes.copy()))
    out.sort(key=lambda x: (x.video_id, x.timestamp))
    return out


def _normalise(canvas: FloatArray, spec: DetectorSpec) -> FloatArray:
    """(H, W, 3) RGB 0-255 canvas -> (3, H, W) in the spec's input units."""
    if spec.channel_order == "BGR":
        canvas = canvas[:, :, ::-1]
    x: FloatArray = (canvas / np.float32(spec.pixel_scale)).astype(np.float32)
    if spec.mean is not None and spec.std is not None:
        mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        x = ((x - mean) / std).astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def to_canvas(
    image: Uint8Image,
    boxes_px: FloatArray,
    spec: DetectorSpec,
    *,
    scale: float = 1.0,
    offset: tuple[float, float] | None = None,
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Place a frame on the spec's canvas -> (``(3, H, W)`` input, boxes ``(M, 4)`` canvas px).

    ``scale`` multiplies the letterbox scale; ``offset`` is the (x, y) of the frame's
    top-left corner on the canvas (default: the spec's letterbox placement). With the
    defaults this is `core.detector_io.preprocess` (same resize, same pad), which the
    tests check, so training sees what the service feeds. ``rng``: colour jitter.
    """
    from core.detector_io import letterbox_transform

    h, w = image.shape[:2]
    t = letterbox_transform((h, w), spec)
    ch, cw = spec.input_size
    if scale == 1.0 and offset is None:
        rw, rh, px, py, sx, sy = t.resized_w, t.resized_h, t.pad_x, t.pad_y, t.scale_x, t.scale_y
    else:
        sx, sy = t.scale_x * scale, t.scale_y * scale
        rw, rh = max(1, int(w * sx)), max(1, int(h * sy))
        px, py = (t.pad_x, t.pad_y) if offset is None else (int(offset[0]), int(offset[1]))
    src: Uint8Image | FloatArray = image
    if rng is not None:
        src = color_jitter(image[None], rng, brightness=0.3, contrast=0.3, saturation=0.3)[0]
        src = src.astype(np.uint8)
    resized = np.asarray(
        Image.fromarray(np.asarray(src)).resize((rw, rh), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    if flip:
        resized = resized[:, ::-1]
    canvas = np.full((ch, cw, 3), spec.pad_value, dtype=np.float32)  # (H, W, 3)
    # Paste the part of the resized frame that lands on the canvas (offsets may be < 0).
    x0, y0 = max(px, 0), max(py, 0)
    x1, y1 = min(px + rw, cw), min(py + rh, ch)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = resized[y0 - py : y1 - py, x0 - px : x1 - px]
    b = np.asarray(boxes_px, np.float32).reshape(-1, 4).copy()
    if flip:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    b[:, 0::2] = b[:, 0::2] * np.float32(sx) + np.float32(px)
    b[:, 1::2] = b[:, 1::2] * np.float32(sy) + np.float32(py)
    return _normalise(canvas, spec), b


def _clip_boxes(boxes: FloatArray, hw: tuple[int, int]) -> FloatArray:
    h, w = hw
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    c = boxes.copy()
    np.clip(c[:, 0::2], 0, w, out=c[:, 0::2])
    np.clip(c[:, 1::2], 0, h, out=c[:, 1::2])
    cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    keep = (cw >= 2) & (ch >= 2) & (cw * ch >= MIN_VISIBLE * np.maximum(area, 1e-6))
    out: FloatArray = c[keep]
    return out


def augment(
    item: KeyframeImage,
    spec: DetectorSpec,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.7, 1.3),
) -> tuple[FloatArray, FloatArray]:
    """A random training view: (``(3, H, W)`` input, boxes ``(M, 4)`` canvas pixels)."""
    from core.detector_io import letterbox_transform

    h, w = item.image.shape[:2]
    t = letterbox_transform((h, w), spec)
    scale = float(rng.uniform(*scale_range))
    rw, rh = w * t.scale_x * scale, h * t.scale_y * scale
    ch, cw = spec.input_size
    # Random placement: anywhere the frame still covers at least its centre part of the
    # canvas; when it is smaller than the canvas, anywhere inside it.
    ox = float(rng.uniform(min(0.0, cw - rw), max(0.0, cw - rw)))
    oy = float(rng.uniform(min(0.0, ch - rh), max(0.0, ch - rh)))
    x, boxes = to_canvas(
        item.image,
        item.pixel_boxes(),
        spec,
        scale=scale,
        offset=(ox, oy),
        flip=bool(rng.random() < 0.5),
        rng=rng,
    )
    return x, _clip_boxes(boxes, spec.input_size)


def stack_batch(
    items: Sequence[tuple[FloatArray, FloatArray]],
) -> tuple[FloatArray, list[FloatArray]]:
    """[(x (3, H, W), boxes)] -> (images (B, 3, H, W), [boxes])."""
    return np.stack([x for x, _ in items]), [b for _, b in items]

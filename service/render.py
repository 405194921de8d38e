"""Rendered MP4 (``--render``): the video with each person's box, track id and top actions.

Predictions exist once per keyframe; a keyframe's boxes are drawn on the frames within half a
keyframe period of it, so boxes hold still for a second and then jump, which is honest about
what the model saw. Each track keeps one colour (a fixed palette indexed by track id) so a
person can be followed by eye. Labels use Pillow's bundled TrueType font (``load_default``
with a size, scaled to the frame height) on a filled background so they stay legible on any
footage.

The source is decoded again with the same hardened decoder (`service.decode`), and encoded
with H.264 (libx264) when PyAV has it, MPEG-4 Part 2 otherwise; both play in browsers/players.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from fractions import Fraction
from os import PathLike
from pathlib import Path
from typing import cast

import av
import av.video.stream
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.decode import decode_frames
from service.limits import DecodeLimits
from service.records import Prediction

__all__ = ["PALETTE", "draw_predictions", "render_video", "track_colour"]

StrPath = str | PathLike[str]

# Tableau-10-like colours, chosen to stay distinct from each other and from skin/asphalt tones.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (255, 215, 0),
)


def track_colour(track_id: int) -> tuple[int, int, int]:
    return PALETTE[track_id % len(PALETTE)]


def _font(height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    size = max(10, height // 36)  # ~16 px at 576 lines, ~30 px at 1080
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def draw_predictions(
    image: np.ndarray, predictions: Sequence[Prediction], *, top_k: int = 2
) -> np.ndarray:
    """RGB (h, w, 3) uint8 -> a copy with boxes, ids and the top actions drawn."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    h = image.shape[0]
    font = _font(h)
    width = max(2, h // 240)
    for p in predictions:
        colour = track_colour(p.track_id)
        x1, y1, x2, y2 = p.box
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        lines = [f"#{p.track_id}"] + [f"{name[:24]} {score:.2f}" for _, name, score in p.top(top_k)]
        if p.context == "degraded":
            lines[0] += " (no long-term context)"
        text = "\n".join(lines)
        bbox = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
        tw, th = bbox[2] - bbox[0] + 6, bbox[3] - bbox[1] + 6
        # Above the box when there is room, else inside its top edge.
        ty = y1 - th if y1 - th >= 0 else y1
        tx = min(max(0, x1), max(0, image.shape[1] - tw))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        # Dark text on light track colours, white on dark ones (ITU-R BT.601 luma).
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if luma > 150 else (255, 255, 255)
        draw.multiline_text((tx + 3, ty + 2), text, fill=ink, font=font, spacing=2)
    return np.asarray(canvas)


def render_video(
    source: StrPath,
    predictions: Iterable[Prediction],
    out: StrPath,
    *,
    limits: DecodeLimits | None = None,
    keyframe_rate: float = 1.0,
    isolated: bool = True,
) -> int:
    """Write ``out`` (MP4); returns the number of frames written."""
    by_time: dict[float, list[Prediction]] = {}
    for p in predictions:
        by_time.setdefault(float(p.time), []).append(p)
    times = sorted(by_time)
    half = 0.5 / keyframe_rate
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    written = 0
    with decode_frames(source, limits, isolated=isolated) as dec:
        fps = dec.info.fps if dec.info.fps and dec.info.fps > 0 else 25.0
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(Path(out)), "w", format="mp4") as container:
            stream = cast(av.video.stream.VideoStream, container.add_stream(codec, rate=rate))
            stream.pix_fmt = "yuv420p"
            # ms pts: variable-rate input stays in sync. The encoder reads a frame's pts in
            # its codec time base, so that must be ms as well (else a 1/fps codec base turns
            # 67 ms into 67 frames and the video plays 67x slow).
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
            if codec == "libx264":
                stream.options = {"crf": "20", "preset": "veryfast"}
            else:
                stream.bit_rate = 4_000_000
            size: tuple[int, int] | None = None
            for frame in dec:
                img = frame.image
                if size is None:
                    # yuv420p needs even dimensions: drop the last row/column if odd.
                    size = (img.shape[1] // 2 * 2, img.shape[0] // 2 * 2)
                    stream.width, stream.height = size
                i = bisect.bisect_left(times, frame.pts_seconds - half)
                shown = (
                    by_time[times[i]]
                    if i < len(times) and abs(times[i] - frame.pts_seconds) <= half
                    else []
                )
                img = draw_predictions(img, shown) if shown else img
                vf = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(img[: size[1], : size[0]]), format="rgb24"
                )
                vf.pts = int(round(frame.pts_seconds * 1000))
                vf.time_base = Fraction(1, 1000)
                for packet in stream.encode(vf):
                    container.mux(packet)
                written += 1
            for packet in stream.encode():
                container.mux(packet)
    return written

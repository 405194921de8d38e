"""Drawing a `VideoScript` into frames (numpy + PIL) and encoding them as H.264 (PyAV).

Per frame: crop the pre-drawn background at the camera offset, paint the people far to
near with PIL (nearer people occlude), add sensor noise from a small pre-drawn pool (drawing
fresh gaussian noise for every frame would cost more than everything else together) and a
slight brightness flicker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from training.world.figures import draw_figure
from training.world.scenario import Stage, VideoScript

NOISE_SIGMA = 3.0  # grey levels; enough to defeat pixel-exact shortcuts, not to hide motion
NOISE_POOL = 8

Frame = npt.NDArray[np.uint8]  # (H, W, 3) RGB


def _lerp_rgb(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], u: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Rows blending colour ``a`` into ``b``: (len(u), 3)."""
    return a[None, :] * (1 - u[:, None]) + b[None, :] * u[:, None]


def make_background(stage: Stage, rng: np.random.Generator, margin_x: int, margin_y: int) -> Frame:
    """A wall with a few rectangles (windows, doors, pictures) over a tiled floor.

    Returned with ``margin_x`` / ``margin_y`` extra pixels on each side for the camera
    to move over; world pixel (x, y) is background pixel (x + margin_x, y + margin_y).
    """
    w, h = stage.width + 2 * margin_x, stage.height + 2 * margin_y
    horizon = int(round(stage.horizon)) + margin_y
    wall_top = rng.uniform(90, 210, size=3)
    wall_bottom = np.clip(wall_top * rng.uniform(0.75, 1.05) + rng.uniform(-20, 20, 3), 40, 230)
    floor_far = rng.uniform(70, 170, size=3)
    floor_near = np.clip(floor_far * rng.uniform(0.6, 0.9), 20, 200)
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:horizon] = _lerp_rgb(wall_top, wall_bottom, np.linspace(0, 1, horizon))[:, None, :]
    img[horizon:] = _lerp_rgb(floor_far, floor_near, np.linspace(0, 1, h - horizon))[:, None, :]
    # Low-frequency blotches, so the background is not flat (and panning shows motion).
    coarse = rng.uniform(-14, 14, size=(max(2, h // 24), max(2, w // 24))).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    img += blotch[:, :, None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    # Wall furniture.
    for _ in range(int(rng.integers(3, 7))):
        rw = float(rng.uniform(0.08, 0.22)) * stage.width
        rh = float(rng.uniform(0.12, 0.3)) * stage.height
        x0 = float(rng.uniform(0, w - rw))
        y0 = float(rng.uniform(0.04 * stage.height, max(1.0, horizon - rh - 2)))
        fill = tuple(int(v) for v in rng.uniform(60, 230, size=3))
        frame = tuple(max(0, v - 60) for v in fill)
        draw.rectangle([x0, y0, x0 + rw, y0 + rh], fill=fill, outline=frame, width=2)
    # Skirting board, then floor tiles converging to a vanishing point.
    draw.line([(0, horizon), (w, horizon)], fill=(50, 45, 40), width=3)
    line = tuple(int(v) for v in np.clip(floor_near * 0.7, 0, 255))
    vx = w / 2 + float(rng.uniform(-0.2, 0.2)) * w
    vy = horizon - 0.6 * stage.height
    for k in range(-12, 13):
        xb = vx + k * 0.18 * w
        u = (horizon - vy) / (h - vy)
        draw.line([(vx + (xb - vx) * u, horizon), (xb, h)], fill=line, width=1)
    y = float(horizon)
    step = 3.0
    while y < h:
        draw.line([(0, y), (w, y)], fill=line, width=1)
        y += step
        step *= 1.35
    return np.asarray(pil, dtype=np.uint8).copy()


def render_frames(script: VideoScript) -> Iterator[Frame]:
    """Every frame of the script, in order."""
    stage = script.stage
    # A separate stream from the script's own generator: the script is final before any
    # pixel is drawn, so changing the drawing never changes the labels.
    rng = np.random.default_rng([script.seed, 1])
    margin_x = int(np.abs(script.camera[:, 0]).max()) + 2
    margin_y = int(np.abs(script.camera[:, 1]).max()) + 2
    background = make_background(stage, rng, margin_x, margin_y)
    noise = rng.normal(0.0, NOISE_SIGMA, size=(NOISE_POOL, stage.height, stage.width, 1))
    noise = np.round(noise).astype(np.int16)  # one grey noise value per pixel (luma-like)
    order = rng.integers(NOISE_POOL, size=script.num_frames)
    flicker = np.round(rng.normal(0.0, 1.5, size=script.num_frames)).astype(np.int16)
    looks = {p.person_id: p.look for p in script.persons}
    for i in range(script.num_frames):
        dx, dy = (int(v) for v in script.camera[i])
        top, left = margin_y - dy, margin_x - dx
        img = Image.fromarray(background[top : top + stage.height, left : left + stage.width])
        draw = ImageDraw.Draw(img)
        for state in script.states_at(i / stage.fps):
            points = state.points + np.array([dx, dy], dtype=np.float64)
            look = looks[state.person_id]
            draw_figure(draw, points, state.pose, look, state.body_height, state.facing)
        frame = np.asarray(img, dtype=np.int16) + noise[order[i]] + flicker[i]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def encode_mp4(
    path: Path,
    frames: Iterable[Frame],
    *,
    fps: int,
    width: int,
    height: int,
    crf: int = 22,
    preset: str = "veryfast",
) -> int:
    """Encode RGB frames as H.264 (libx264, yuv420p) MP4; returns the frame count.

    One keyframe (GOP) per second, so a reader seeking to the clip around any keyframe
    decodes at most one second of frames it does not need. One encoder thread: the
    generator already runs one video per CPU core.
    """
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264",
            rate=fps,
            options={"crf": str(crf), "preset": preset, "threads": "1"},
        )
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        count = 0
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = count
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode(None):
            container.mux(packet)
    return count

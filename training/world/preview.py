"""Contact sheet of a world (or any AVA-layout) video: keyframes with their GT boxes.

Keyframes are picked greedily to show as many different classes as possible, then in
time order. The sheet is written as a 192-colour palette PNG: the camera noise makes a
true-colour PNG several megabytes, and a palette is plenty to see what happens.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from training.world.classes import CLASS_BY_ID

_PERSON_RGB = (
    (255, 80, 80), (80, 200, 255), (255, 220, 60), (120, 255, 120), (255, 120, 255),
    (255, 160, 60), (160, 140, 255), (60, 255, 220), (230, 230, 230), (200, 255, 80),
)  # fmt: skip


@dataclass(frozen=True)
class _Box:
    person_id: int
    box: tuple[float, float, float, float]
    actions: tuple[int, ...]


def read_keyframe_boxes(csv_path: Path, video_id: str) -> dict[int, list[_Box]]:
    """timestamp -> boxes (one per person, actions merged) of one video of an AVA CSV."""
    merged: dict[tuple[int, int], tuple[tuple[float, float, float, float], list[int]]] = {}
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if not row or row[0] != video_id:
                continue
            t, pid = int(row[1]), int(row[7]) if len(row) > 7 else -1
            box = (float(row[2]), float(row[3]), float(row[4]), float(row[5]))
            merged.setdefault((t, pid), (box, []))[1].append(int(row[6]))
    out: dict[int, list[_Box]] = defaultdict(list)
    for (t, pid), (box, actions) in sorted(merged.items()):
        out[t].append(_Box(pid, box, tuple(sorted(actions))))
    return dict(out)


def _pick(frames: dict[int, list[_Box]], count: int) -> list[int]:
    chosen: list[int] = []
    seen: set[int] = set()
    times = sorted(frames)
    while len(chosen) < min(count, len(times)):
        best = max(
            (t for t in times if t not in chosen),
            key=lambda t: (len({a for b in frames[t] for a in b.actions} - seen), len(frames[t])),
        )
        gain = {a for b in frames[best] for a in b.actions} - seen
        if not gain:
            break
        chosen.append(best)
        seen |= gain
    # Fill the remaining tiles with keyframes evenly spaced over the rest of the video.
    rest = [t for t in times if t not in chosen]
    need = min(count, len(times)) - len(chosen)
    if need > 0:
        step = len(rest) / need
        chosen += [rest[int(k * step)] for k in range(need)]
    return sorted(chosen)


def _decode_frames(video: Path, indices: set[int]) -> dict[int, npt.NDArray[np.uint8]]:
    from core.video import iter_rgb_frames, open_video

    out: dict[int, npt.NDArray[np.uint8]] = {}
    container = open_video(video)
    try:
        frames = iter_rgb_frames(video, container, container.streams.video[0])
        for i, (_, frame) in enumerate(frames):
            if i in indices:
                out[i] = frame
            if len(out) == len(indices):
                break
    finally:
        container.close()
    return out


def _label(actions: tuple[int, ...]) -> list[str]:
    names = [CLASS_BY_ID[a].short if a in CLASS_BY_ID else str(a) for a in actions]
    return names


def contact_sheet(
    data_dir: Path,
    out: Path,
    *,
    video_id: str | None = None,
    split: str = "train",
    cols: int = 4,
    rows: int = 3,
    scale: float = 1.5,
    fps: float | None = None,
) -> Path:
    """Render a ``cols`` x ``rows`` grid of annotated keyframes of one video to ``out``."""
    import json

    info = json.loads((data_dir / "dataset.json").read_text(encoding="utf-8"))
    fps = float(fps if fps is not None else info["fps"])
    offset = float(info.get("time_offset", 0))
    csv_path = data_dir / "annotations" / f"{split}.csv"
    if video_id is None:
        with csv_path.open(encoding="utf-8") as fh:
            first = fh.readline()
        if not first:
            raise ValueError(f"{csv_path} is empty: no video to preview")
        video_id = first.split(",")[0]
    frames = read_keyframe_boxes(csv_path, video_id)
    if not frames:
        other = "val" if split == "train" else "train"
        alt = data_dir / "annotations" / f"{other}.csv"
        frames = read_keyframe_boxes(alt, video_id) if alt.is_file() else {}
        if not frames:
            raise ValueError(f"video {video_id!r} has no annotated keyframe in {split} or {other}")
    times = _pick(frames, cols * rows)
    index = {t: int(round((t - offset) * fps)) for t in times}
    decoded = _decode_frames(data_dir / "videos" / f"{video_id}.mp4", set(index.values()))
    font = ImageFont.load_default(size=max(10, int(9 * scale)))
    tiles: list[Image.Image] = []
    for t in times:
        rgb = decoded.get(index[t])
        if rgb is None:
            continue
        tile = Image.fromarray(rgb)
        tile = tile.resize(
            (int(tile.width * scale), int(tile.height * scale)), Image.Resampling.BILINEAR
        )
        draw = ImageDraw.Draw(tile)
        for b in frames[t]:
            colour = _PERSON_RGB[b.person_id % len(_PERSON_RGB)]
            x1, y1 = b.box[0] * tile.width, b.box[1] * tile.height
            x2, y2 = b.box[2] * tile.width, b.box[3] * tile.height
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
            text = "\n".join([f"#{b.person_id} {_label(b.actions)[0]}", *_label(b.actions)[1:]])
            tb = draw.multiline_textbbox((x1 + 2, y1 + 2), text, font=font, spacing=1)
            ty = y1 + 2 if tb[3] < tile.height else max(0, tile.height - (tb[3] - tb[1]) - 2)
            tb = draw.multiline_textbbox((x1 + 2, ty), text, font=font, spacing=1)
            draw.rectangle([tb[0] - 2, tb[1] - 1, tb[2] + 2, tb[3] + 1], fill=(0, 0, 0))
            draw.multiline_text((x1 + 2, ty), text, fill=colour, font=font, spacing=1)
        head = f"{video_id}  t={t}s"
        hb = draw.textbbox((4, 3), head, font=font)
        draw.rectangle([hb[0] - 3, hb[1] - 2, hb[2] + 3, hb[3] + 2], fill=(255, 255, 255))
        draw.text((4, 3), head, fill=(0, 0, 0), font=font)
        tiles.append(tile)
    if not tiles:
        raise ValueError(f"no keyframe of {video_id!r} could be decoded")
    tw, th = tiles[0].size
    n_rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tw + (cols - 1) * 4, n_rows * th + (n_rows - 1) * 4), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * (tw + 4), (k // cols) * (th + 4)))
    out.parent.mkdir(parents=True, exist_ok=True)
    palette = sheet.quantize(colors=192, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette.save(out, optimize=True)
    return out

"""The long-term feature bank of stage 2: extraction from a stage-1 model, and reading.

Report A (after Wu et al., "Long-Term Feature Banks", CVPR 2019) trains in two stages:
a plain SlowFast model first, whose per-person features at every second fill the bank;
then the LFB + global model, which reads a window of that bank around each keyframe.

Layout, ``BANKDIR/<split>/``::

    meta.json          checkpoint, box source, feature size, persons per second
    <video_id>.npz     times (M,) int, person_ids (M,), boxes (M, 4) normalised xyxy,
                       scores (M,), features (M, D) float16   -- one row per person-second
                       global_times (S,), global_features (S, D) float16 -- one per second

fp16 halves the files; the features are post-ReLU magnitudes far inside fp16's range.
`ExtractedBank.window` gives the (W, D) window ``[t - 30, t + 30]`` with up to 5 persons per
second (W = 61 * 5 = 305), zero-padded with a mask, the LFB's input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.ava_data import KeyframeProposals
from core.bank_layout import (
    DEFAULT_WINDOW_SECONDS,
    check_window_seconds,
    file_window,
    layout_window,
)
from core.boxes import iou_matrix

__all__ = ["ExtractedBank", "VideoBank", "extract_bank", "load_bank"]

StrPath = str | PathLike[str]


@dataclass(frozen=True)
class VideoBank:
    """One video's bank rows (see the module docstring for the arrays)."""

    times: npt.NDArray[np.int64]
    person_ids: npt.NDArray[np.int64]
    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    features: npt.NDArray[np.float16]
    global_times: npt.NDArray[np.int64]
    global_features: npt.NDArray[np.float16]

    def save(self, path: StrPath) -> None:
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: StrPath) -> VideoBank:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


class ExtractedBank:
    """Read side of a bank split: windows, person rows, clip features."""

    def __init__(self, folder: StrPath) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: run `avaserve extract-bank --split ...` to write the bank"
            )
        self.meta: dict[str, object] = json.loads(meta_path.read_text(encoding="utf-8"))
        self.dim = int(str(self.meta["dim"]))
        grid = self.meta.get("appearance_grid")
        # Rows end in box colour cells on this grid (`extract-bank --appearance`), or None.
        self.appearance_grid: tuple[int, int] | None = (
            None if not isinstance(grid, list) else (int(grid[0]), int(grid[1]))
        )
        self._videos: dict[str, VideoBank] = {}

    def video(self, video_id: str) -> VideoBank | None:
        if video_id not in self._videos:
            path = self.folder / f"{video_id}.npz"
            if not path.is_file():
                return None
            self._videos[video_id] = VideoBank.load(path)
        return self._videos[video_id]

    def window(
        self,
        video_id: str,
        timestamp: int,
        seconds: int = DEFAULT_WINDOW_SECONDS,
        persons: int = 5,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(W, D) features and (W,) mask (1 = valid) of the ``seconds``-long window centred on
        ``t`` (`core.bank_layout.file_window`: 61 -> ``[t - 30, t + 30]``; odd, >= 1).

        W = seconds * persons; slot ``(s, j)`` holds the ``j``-th person of second
        ``t + lo + s``. The current second is included, as in Wu et al.
        """
        seconds = check_window_seconds(seconds, "bank window seconds")
        lo, hi = file_window(seconds)
        vb = self.video(video_id)
        if vb is None or not vb.times.size:
            return (
                np.zeros((seconds * persons, self.dim), np.float32),
                np.zeros(seconds * persons, np.float32),
            )
        sel = np.flatnonzero((vb.times >= timestamp + lo) & (vb.times <= timestamp + hi))
        # The service lays its windows out with the same function (core.bank_layout).
        feats, mask = layout_window(
            vb.times[sel], vb.features[sel], timestamp, lo, seconds, persons
        )
        return feats, mask.astype(np.float32)

    def match_rows(
        self, video_id: str, timestamp: int, boxes: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.int64] | None:
        """Bank rows of ``boxes`` (normalised) at ``timestamp``: best IoU, must be >= 0.9.

        None if a box has no such row (e.g. it was over the persons-per-second cap).
        """
        vb = self.video(video_id)
        if vb is None:
            return None
        rows = np.flatnonzero(vb.times == timestamp)
        if rows.size == 0:
            return None
        iou = iou_matrix(np.asarray(boxes, np.float32).reshape(-1, 4), vb.boxes[rows])  # (K, R)
        best = iou.argmax(axis=1)
        if np.any(iou[np.arange(len(best)), best] < 0.9):
            return None
        return rows[best]

    def person_features(
        self, video_id: str, rows: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        vb = self.video(video_id)
        assert vb is not None
        return vb.features[rows].astype(np.float32)  # (K, D)

    def global_feature(self, video_id: str, timestamp: int) -> npt.NDArray[np.float32]:
        vb = self.video(video_id)
        assert vb is not None
        i = int(np.argmin(np.abs(vb.global_times - timestamp)))
        return vb.global_features[i].astype(np.float32)  # (D,)


def load_bank(bank_dir: StrPath, split: str) -> ExtractedBank:
    return ExtractedBank(Path(bank_dir) / split)


def extract_bank(
    model: object,
    data_dir: StrPath,
    split: str,
    out_dir: StrPath,
    *,
    proposals: Sequence[KeyframeProposals],
    person_ids: dict[tuple[str, int], npt.NDArray[np.int64]] | None = None,
    persons_per_second: int = 5,
    batch_size: int = 8,
    meta: dict[str, object] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Run ``model`` (an ActionModel, eval mode) over every keyframe of ``proposals`` and
    write ``out_dir/<split>/<video_id>.npz`` + ``meta.json``. Returns the split folder.

    At most ``persons_per_second`` boxes per keyframe are kept: the highest-scoring ones
    (ground truth: score 1, first in file order), as the bank stores 5 a second.
    """
    import torch

    from core.ava_data import read_dataset_info
    from core.clips import ClipSpec, boxes_to_pixels, pack_pathways, preprocess_clip
    from training.frame_cache import FrameCache

    action_model = model  # typed loosely: models.action_model.ActionModel
    info = read_dataset_info(data_dir)
    preset = action_model.preset_info  # type: ignore[attr-defined]
    spec = ClipSpec.from_preset(preset)
    cache = FrameCache(data_dir, preset.short_side, fps=info.fps)
    folder = Path(out_dir) / split
    folder.mkdir(parents=True, exist_ok=True)
    by_video: dict[str, list[KeyframeProposals]] = {}
    for p in proposals:
        by_video.setdefault(p.video_id, []).append(p)
    total = sum(len(v) for v in by_video.values())
    done = 0
    dim = int(action_model.person_dim)  # type: ignore[attr-defined]
    for video_id, props in sorted(by_video.items()):
        props = sorted(props, key=lambda p: p.timestamp)
        video = cache.get(video_id)
        rows: dict[str, list[npt.NDArray[np.generic]]] = {
            k: [] for k in ("times", "person_ids", "boxes", "scores", "features")
        }
        g_times: list[int] = []
        g_feats: list[npt.NDArray[np.float16]] = []
        for start in range(0, len(props), batch_size):
            chunk = props[start : start + batch_size]
            slows, fasts, box_rows, kept = [], [], [], []
            for b, p in enumerate(chunk):
                order = np.argsort(-p.scores, kind="stable")[:persons_per_second]
                kept.append(order)
                clip = video.clip(info.video_time(p.timestamp), spec)
                chw = preprocess_clip(
                    clip, short_side=preset.short_side, mean=preset.mean, std=preset.std
                )
                slow, fast = pack_pathways(chw, preset.alpha)
                slows.append(torch.from_numpy(slow))
                fasts.append(torch.from_numpy(fast))
                px = boxes_to_pixels(p.boxes[order], chw.shape[3], chw.shape[2])
                box_rows.append(
                    torch.cat([torch.full((len(order), 1), float(b)), torch.from_numpy(px)], 1)
                )
            with torch.no_grad():
                person, glob = action_model.features(  # type: ignore[attr-defined]
                    torch.stack(slows), torch.stack(fasts), torch.cat(box_rows)
                )  # (K, D), (B, D)
            offset = 0
            for b, (p, order) in enumerate(zip(chunk, kept, strict=True)):
                k = len(order)
                ids = (
                    person_ids[p.key][order]
                    if person_ids is not None and p.key in person_ids
                    else np.full(k, -1, np.int64)
                )
                rows["times"].append(np.full(k, p.timestamp, np.int64))
                rows["person_ids"].append(ids.astype(np.int64))
                rows["boxes"].append(p.boxes[order].astype(np.float32))
                rows["scores"].append(p.scores[order].astype(np.float32))
                rows["features"].append(person[offset : offset + k].numpy().astype(np.float16))
                offset += k
                g_times.append(p.timestamp)
                g_feats.append(glob[b].numpy().astype(np.float16))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        VideoBank(
            times=np.concatenate(rows["times"]).astype(np.int64),
            person_ids=np.concatenate(rows["person_ids"]).astype(np.int64),
            boxes=np.concatenate(rows["boxes"]).astype(np.float32).reshape(-1, 4),
            scores=np.concatenate(rows["scores"]).astype(np.float32),
            features=np.concatenate(rows["features"]).astype(np.float16).reshape(-1, dim),
            global_times=np.asarray(g_times, np.int64),
            global_features=np.stack(g_feats).astype(np.float16),
        ).save(folder / f"{video_id}.npz")
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "dim": dim,
                "persons_per_second": persons_per_second,
                "appearance_grid": action_model.appearance,  # type: ignore[attr-defined]
                **(meta or {}),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return folder

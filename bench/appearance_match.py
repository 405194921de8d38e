"""Can a person's colour cells find their own evidence row 10-30 s later? (docs/internals.md)

    python bench/appearance_match.py --data WORLD [--split train] [--videos 12]

The question behind the LFB recall's torso start (`models.lfb.RECALL_CELL_INIT`): for every
annotated person of the world who is not doing an evidence event, take the event rows
(ground-truth "put on" / "pick up" boxes) of the previous 1-30 s, score each by colour
similarity to the person -- ``exp(-mean squared difference / tau)`` over a set of cells of
the model's own descriptor (`models.roi.appearance_descriptor`, 6 x 1 strip, on the keyframe
at the model's 96-px short side) -- and keep the best. That max, as a score for the
long-term label, gives ROC AUC and the evaluator's VOC AP, for all six cells and for the
torso cells (`models.roi.appearance_torso_cells`). Ground-truth boxes and labels only; no
model is run.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.recall_diagnosis import roc_auc  # noqa: E402

# tau in normalised pixel units: 0.01 in [0, 1] RGB units, divided by the std 0.225 squared.
TAU = 0.01 / 0.225**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the world directory")
    ap.add_argument("--split", default="train")
    ap.add_argument("--videos", type=int, default=12, help="the split's first N videos")
    ap.add_argument("--short-side", type=int, default=96, help="the tiny preset's input size")
    args = ap.parse_args()

    import torch

    from models.roi import DEFAULT_APPEARANCE_GRID, appearance_descriptor, appearance_torso_cells
    from service.decode import decode_frames
    from training.evaluation import average_precision
    from training.train import load_split
    from training.world.classes import LONG_TERM

    grid = DEFAULT_APPEARANCE_GRID
    data = load_split(args.data, args.split)
    by_video: dict[str, list[Any]] = defaultdict(list)
    for kf in data.keyframes:
        by_video[kf.video_id].append(kf)
    cell_sets = {
        "all cells": np.ones(3 * grid[0] * grid[1], bool),
        "torso cells": np.array(appearance_torso_cells(grid)),
    }
    scores: dict[str, list[float]] = {name: [] for name in cell_sets}
    labels: list[bool] = []
    for video in sorted(by_video)[: args.videos]:
        keyframes = {kf.timestamp: kf for kf in by_video[video]}
        frames: dict[int, np.ndarray] = {}
        path = args.data / "videos" / f"{video}.mp4"
        with decode_frames(path, short_side=args.short_side) as decoded:
            for f in decoded:
                t = round(f.pts_seconds)
                if t in keyframes and t not in frames and abs(f.pts_seconds - t) < 0.034:
                    frames[t] = f.image
        people = []  # (time, label set, descriptor)
        for t, kf in sorted(keyframes.items()):
            img = torch.from_numpy((frames[t].astype(np.float32) / 255 - 0.45) / 0.225)
            h, w = img.shape[:2]
            boxes = torch.from_numpy(kf.boxes.astype(np.float32)) * torch.tensor([w, h, w, h])
            rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
            desc = appearance_descriptor(img.permute(2, 0, 1)[None], rois, grid).numpy()
            for j in range(len(boxes)):
                people.append((t, kf.labels[j], desc[j]))
        for state_id, (event_id, _) in sorted(LONG_TERM.items()):
            events = [(t, d) for t, lab, d in people if event_id in lab]
            for t, lab, d in people:
                window = [e for te, e in events if 1 <= t - te <= 30]
                if event_id in lab or not window:
                    continue
                labels.append(state_id in lab)
                for name, cells in cell_sets.items():
                    sims = [np.exp(-((d - e)[cells] ** 2).mean() / TAU) for e in window]
                    scores[name].append(float(max(sims)))
    y = np.array(labels)
    print(f"{len(y)} candidates ({int(y.sum())} with the long-term label) in {args.videos} videos")
    for name, s in scores.items():
        arr = np.array(s)
        ap_value = average_precision(arr, y, int(y.sum()))
        print(f"{name:12s}: AUC {roc_auc(y, arr):.3f}  AP {ap_value:.3f}")


if __name__ == "__main__":
    main()

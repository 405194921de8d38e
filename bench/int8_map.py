"""What int8 costs in accuracy (issue 18): served val frame-mAP with ground-truth boxes,
float32 bundle vs its int8 copy, side by side.

    python bench/int8_map.py --fp32 bundles/demo --int8 DIR --data WORLD [--split val]

Each val video runs through the service pipeline (`Engine.annotate_file`: center clips, the
bank's second pass, the head) with the person boxes taken from the ground truth instead of the
detector (the tracker is bypassed too: each GT person id is its track id), so the two bundles
see identical boxes and the difference is the backbone's quantisation alone. Every class of
every box goes to an AVA results CSV, scored by ``avaserve eval --gt ... --detections ...``
(frame-mAP@0.5, the ActivityNet protocol). README's GT-box figure for the demo checkpoint is
0.880 (offline, PyTorch); the served float32 figure here should be close to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.skew_check import _eval, _videos  # noqa: E402
from service.engine import Engine, EngineSettings  # noqa: E402
from service.records import AvaCsvWriter, Prediction  # noqa: E402
from service.types import TrackedPersons  # noqa: E402


def _ground_truth(data: Path, split: str) -> tuple[dict[tuple[str, int], Any], int]:
    from core.ava_data import read_dataset_info, read_keyframes

    info = read_dataset_info(data)
    kfs = read_keyframes(data / "annotations" / f"{split}.csv", unknown_classes="skip")
    offset = int(round(float(info.time_offset)))
    return {(k.video_id, int(k.timestamp) - offset): k for k in kfs}, offset


async def _serve(bundle: Path, videos: list[tuple[str, Path]], gt: dict[Any, Any]) -> list[Any]:
    engine = Engine(bundle, settings=EngineSettings())
    current = {"video": ""}

    async def gt_persons(session: Any, kf: Any, prev: Any, kind: Any) -> TrackedPersons | None:
        if prev is not None:  # keep the engine's per-stream order, as the tracker does
            await asyncio.shield(prev.tracked)
        ann = gt.get((current["video"], int(round(kf.time))))
        h, w = kf.frame_hw
        if ann is None or len(ann.boxes) == 0:
            persons = TrackedPersons(
                np.zeros(0, np.int64), np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32), np.zeros(0, np.int64),
            )  # fmt: skip
        else:
            boxes = ann.boxes * np.array([w, h, w, h], np.float32)
            ids = np.where(ann.person_ids >= 0, ann.person_ids + 1, np.arange(len(boxes)) + 1)
            persons = TrackedPersons(
                ids.astype(np.int64), boxes.astype(np.float32),
                np.ones(len(boxes), np.float32), np.arange(len(boxes), dtype=np.int64),
            )  # fmt: skip
        kf.tracked.set_result(persons)
        return persons

    engine._detect_and_track = gt_persons  # type: ignore[method-assign]
    preds: list[Prediction] = []
    try:
        for vid, path in videos:
            current["video"] = vid
            async for p in engine.annotate_file(path, video_id=vid):
                preds.append(p)
    finally:
        await engine.close()
    return preds


def served_map(bundle: Path, data: Path, split: str, work: Path) -> dict[str, Any]:
    gt, offset = _ground_truth(data, split)
    videos = _videos(data, split)
    preds = asyncio.run(_serve(bundle, videos, gt))
    work.mkdir(parents=True, exist_ok=True)
    results = work / f"{bundle.name}_results.csv"
    writer = AvaCsvWriter(results, top_k=None, time_offset=offset)
    writer.write(preds)
    writer.close()
    ann = data / "annotations"
    args = ["--gt", str(ann / f"{split}.csv"), "--detections", str(results)]
    args += ["--label-map", str(ann / "label_map.pbtxt"), "--max-per-keyframe", "0"]
    excluded = ann / f"excluded_{split}.csv"
    if excluded.is_file():
        args += ["--excluded", str(excluded)]
    value, _ = _eval(args)
    return {"bundle": str(bundle), "frame_map": value, "records": len(preds), "videos": len(videos)}


def compare(fp32: Path, int8: Path, data: Path, split: str, work: Path) -> dict[str, Any]:
    a = served_map(fp32, data, split, work)
    b = served_map(int8, data, split, work)
    drop = a["frame_map"] - b["frame_map"]
    res = {"fp32": a, "int8": b, "map_drop": drop, "within_0_01": drop <= 0.01, "split": split}
    print(
        f"(d) val frame-mAP with GT boxes, served: fp32 {a['frame_map']:.4f}, int8 "
        f"{b['frame_map']:.4f} -> drop {drop:+.4f} ({'<=' if drop <= 0.01 else '>'} 0.01)"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fp32", type=Path, required=True)
    ap.add_argument("--int8", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "int8_map")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    res = compare(args.fp32, args.int8, args.data, args.split, args.work)
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

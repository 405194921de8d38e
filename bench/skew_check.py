"""Train/serve skew check (issue 6 acceptance): served frame-mAP vs offline frame-mAP.

    python bench/skew_check.py --bundle DIR --data WORLD [--split val] [--checkpoint CKPT]

1. Runs every video of the split through the service pipeline (`Engine.annotate_file`, the
   code behind `avaserve annotate`), writing the official results CSV (every class per box)
   and the served person boxes as a proposals CSV.
2. Scores the served results with ``avaserve eval --gt ... --detections ...``.
3. With ``--checkpoint``, evaluates the same model offline (``avaserve eval --checkpoint ...
   --boxes <served proposals>``): the same box source, so any mAP difference comes from the
   clip sampling, preprocessing, bank windows or the export itself. Acceptance: |diff| <= 0.01.
   A stage-2 checkpoint reads its window from a bank extracted by the same checkpoint from
   the served boxes (``avaserve extract-bank --boxes <served proposals>``), as the service
   fills its bank from the boxes it serves -- not the ground-truth-box bank it trained on.

Writes bench/results/skew.json. Needs a world (``avaserve make-world``) or an AVA-format copy.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.engine import Engine, EngineSettings  # noqa: E402
from service.records import AvaCsvWriter, Prediction  # noqa: E402
from service.runtime import RuntimeSettings  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")
MAP_LINE = re.compile(r"mAP@0\.5IOU:\s*([0-9.]+)")


def _videos(data: Path, split: str) -> list[tuple[str, Path]]:
    ids: list[str] = []
    with (data / "annotations" / f"{split}.csv").open(newline="") as fh:
        for row in csv.reader(fh):
            if row and row[0] not in ids:
                ids.append(row[0])
    out = []
    for vid in ids:
        path = next(
            (
                data / "videos" / f"{vid}{s}"
                for s in VIDEO_SUFFIXES
                if (data / "videos" / f"{vid}{s}").is_file()
            ),
            None,
        )
        if path is None:
            sys.exit(f"no video file for {vid} under {data / 'videos'}")
        out.append((vid, path))
    return out


async def _serve(bundle: Path, videos: list[tuple[str, Path]], threads: int) -> list[Prediction]:
    engine = Engine(
        bundle, settings=EngineSettings(runtime=RuntimeSettings(intra_op_threads=threads))
    )
    preds: list[Prediction] = []
    try:
        for vid, path in videos:
            async for p in engine.annotate_file(path, video_id=vid):
                preds.append(p)
            print(f"  served {vid}: {sum(p.video == vid for p in preds)} records", flush=True)
    finally:
        await engine.close()
    return preds


def _eval(args: list[str]) -> tuple[float, str]:
    res = subprocess.run(
        [sys.executable, "-m", "avaserve.cli", "eval", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    text = res.stdout + res.stderr
    found = MAP_LINE.findall(text)
    if res.returncode != 0 or not found:
        sys.exit(f"avaserve eval failed ({res.returncode}):\n{text}")
    return float(found[-1]), text


def _served_bank(args: argparse.Namespace, proposals_csv: Path) -> list[str]:
    """``--bank DIR`` of a bank the checkpoint extracts from the served boxes (stage 2), or []."""
    from models.checkpoints import load_checkpoint

    if not load_checkpoint(args.checkpoint).preset_overrides.get("use_lfb"):
        return []
    bank = args.out / "served_bank"
    res = subprocess.run(
        [
            sys.executable, "-m", "avaserve.cli", "extract-bank", "--checkpoint",
            str(args.checkpoint), "--data", str(args.data), "--split", args.split,
            "--out", str(bank), "--boxes", str(proposals_csv),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )  # fmt: skip
    if res.returncode != 0:
        sys.exit(f"avaserve extract-bank failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return ["--bank", str(bank)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "skew")
    args = ap.parse_args()
    meta = json.loads((args.data / "dataset.json").read_text())
    offset = int(round(float(meta.get("time_offset", 0))))
    args.out.mkdir(parents=True, exist_ok=True)
    videos = _videos(args.data, args.split)
    preds = asyncio.run(_serve(args.bundle, videos, args.threads))

    results_csv = args.out / "served_results.csv"
    w = AvaCsvWriter(results_csv, top_k=None, time_offset=offset)  # every class per box
    w.write(preds)
    w.close()
    proposals_csv = args.out / "served_boxes.csv"
    with proposals_csv.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for p in preds:
            x1, y1, x2, y2 = p.box_norm
            ts = int(round(p.time)) + offset
            writer.writerow(
                [
                    p.video,
                    f"{ts:04d}",
                    f"{x1:.3f}",
                    f"{y1:.3f}",
                    f"{x2:.3f}",
                    f"{y2:.3f}",
                    f"{p.score:.6f}",
                ]
            )

    ann = args.data / "annotations"
    common = ["--label-map", str(ann / "label_map.pbtxt"), "--max-per-keyframe", "0"]
    excluded = ann / f"excluded_{args.split}.csv"
    if excluded.is_file():
        common += ["--excluded", str(excluded)]
    served_map, _ = _eval(
        ["--gt", str(ann / f"{args.split}.csv"), "--detections", str(results_csv), *common]
    )
    report: dict[str, object] = {
        "bundle": str(args.bundle),
        "data": str(args.data),
        "split": args.split,
        "videos": len(videos),
        "records": len(preds),
        "served_map": served_map,
    }
    print(f"served frame-mAP@0.5: {served_map:.4f}")
    if args.checkpoint is not None:
        bank_args = _served_bank(args, proposals_csv)
        offline_map, _ = _eval(
            [
                "--checkpoint", str(args.checkpoint), "--data", str(args.data),
                "--split", args.split, "--boxes", str(proposals_csv), *bank_args, *common,
            ]
        )  # fmt: skip
        diff = served_map - offline_map
        report.update(offline_map=offline_map, diff=diff, passed=abs(diff) <= 0.01)
        print(
            f"offline frame-mAP@0.5 (same boxes): {offline_map:.4f}  diff {diff:+.4f}  "
            f"{'PASS' if abs(diff) <= 0.01 else 'FAIL'} (|diff| <= 0.01)"
        )
    else:
        print(
            "offline side: avaserve eval --checkpoint CKPT --data "
            f"{args.data} --split {args.split} --boxes {proposals_csv} " + " ".join(common)
        )
    path = REPO / "bench" / "results" / "skew.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()

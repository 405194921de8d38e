"""What export's conv rewrites (export/frame_convs.py) buy: one bundle's backbone with no
rewrite, the default (``thin``) and ``thin,frame``, float32 and int8, timed side by side.

    python bench/conv_rewrites.py --bundle DIR (--video PATH | --data WORLD) [--runs 5]
        [--threads N] [--no-int8] [--out JSON]

The bundle's float32 backbone is taken as exported; where it already carries rewrites they
cannot be undone, so pass a bundle exported with ``--conv-rewrites none`` to see all three.
Each variant is written to a temporary directory, checked against the original (max abs
difference on the same clip) and, unless ``--no-int8``, quantised with the export's settings
on the same calibration clips. All sessions run the same clip in turn, ``--runs`` rounds,
``--threads`` intra-op threads (default: every core). Wall-clock figures on whatever machine
runs this; only the ratios within one run compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.manifest import load_manifest  # noqa: E402
from export.frame_convs import rewrite_file  # noqa: E402
from export.quantize import calibration_feeds, quantize_graph  # noqa: E402
from service.runtime import OnnxRuntime  # noqa: E402
from service.threads import available_cores  # noqa: E402

VARIANTS = {"none": (), "thin": ("thin",), "thin,frame": ("thin", "frame")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--video", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if (args.video is None) == (args.data is None):
        ap.error("give exactly one of --video or --data")
    manifest = load_manifest(args.bundle)
    if manifest.quantization is not None:
        ap.error(f"{args.bundle} is an int8 bundle; pass its float32 original")
    threads = args.threads or available_cores()
    calib, _, source = calibration_feeds(manifest, video=args.video, data_dir=args.data)
    feed = calib[0]
    src = args.bundle / manifest.graphs["backbone"].file
    sessions: dict[str, OnnxRuntime] = {}
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="avaserve-rewrites-") as tmp:
        for name, kinds in VARIANTS.items():
            path = Path(tmp) / f"{name}.onnx"
            counts[name] = rewrite_file(src, path, kinds).describe()
            sessions[f"fp32 {name}"] = OnnxRuntime(path, intra_op_threads=threads)
            if not args.no_int8:
                q = Path(tmp) / f"{name}.int8.onnx"
                quantize_graph(path, q, calib)
                sessions[f"int8 {name}"] = OnnxRuntime(q, intra_op_threads=threads)
        reference = sessions["fp32 none"].run(feed)
        diffs = {
            k: max(float(np.abs(v - reference[n]).max()) for n, v in s.run(feed).items())
            for k, s in sessions.items()
            if k.startswith("fp32")
        }
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.runs):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(feed)
                times[k].append(time.perf_counter() - t0)
    figures: dict[str, Any] = {
        "bundle": str(args.bundle),
        "clip": source,
        "clip_shape": list(feed["fast"].shape),
        "threads": threads,
        "rewritten": counts,
        "fp32_max_abs_diff_vs_none": diffs,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "min_s": {k: min(v) for k, v in times.items()},
    }
    print(f"{args.bundle} backbone, clip {figures['clip_shape']}, {threads} threads, {args.runs} "
          "interleaved runs")  # fmt: skip
    for k in sessions:
        variant = k.split(" ", 1)[1]
        extra = f"  max |diff| vs none {diffs[k]:.2e}" if k in diffs else ""
        print(
            f"  {k:16s} median {figures['median_s'][k] * 1e3:9.1f} ms  min "
            f"{figures['min_s'][k] * 1e3:9.1f} ms  rewritten {counts[variant] or '-'}{extra}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""`make bench`: every issue-18 bench on the demo bundle and an untrained R50 bundle, unattended.

    python bench/run_all.py [--quick] [--skip a,b,...] [--cache runs/bench]

1. Builds what it needs once into ``--cache`` (git-ignored ``runs/bench``; reused when
   present): the world's 3 val videos (``avaserve make-world``, for the demo's calibration
   and GT-box mAP), the demo's int8 copy (``avaserve bundle quantize``), an untrained
   ``slowfast_r50_ava`` bundle (``avaserve export --preset ... --random-init``, LFB + global +
   YOLOX detector) and its int8 copy.
2. Runs (a) efficiency, (b) streaming vs the peers' eager loop, (c) ORT vs eager, (d) int8 vs
   float32 (speed, and the demo's val frame-mAP with GT boxes), (e) live cadence and lag
   (the demo at real-time pace; the R50 int8 bundle for 120 s), (f) jobs per hour, each a
   subprocess, on the demo bundle (a 60 s world val video) and the R50 bundles (the 10 s
   basketball clip, one person per keyframe).
3. Writes one JSON per bench under bench/results/ (machine, load average before and after,
   bundles, figures) and prints a summary table against the issue's targets.

About 12 minutes on 2 idle cores (``--quick``: shorter live runs, fewer repeats). Timings are
only comparable within one run: each bench measures its pair side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ASSETS = REPO.parent / "shared" / "assets"
for candidate in (REPO.parent / "shared" / "assets", Path("/work/shared/assets")):
    if candidate.is_dir():
        ASSETS = candidate
        break
BASKETBALL = ASSETS / "video" / "basketball_2people.mp4"
YOLOX = ASSETS / "detector" / "yolox_nano.onnx"
PY = sys.executable
sys.path.insert(0, str(REPO))

from service.threads import int8_dot_product  # noqa: E402


def _run(cmd: list[str], *, timeout: float = 900) -> str:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    out = res.stdout + res.stderr
    lines = [ln for ln in out.splitlines() if "pre-process" not in ln and "consider" not in ln]
    print("\n".join(lines[-12:]), f"\n  ({time.monotonic() - t0:.0f} s)", flush=True)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed with {res.returncode}")
    return out


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "avaserve.cli", *args]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "vnni": int8_dot_product(),  # None where /proc/cpuinfo has no flags line
        "python": platform.python_version(),
    }


def build(cache: Path) -> dict[str, Path]:
    """The bundles and data the benches need (module docstring, step 1)."""
    cache.mkdir(parents=True, exist_ok=True)
    world = cache / "world"
    if not (world / "annotations" / "val.csv").is_file():
        _run(_cli("make-world", str(world), "--seed", "0", "--videos", "0", "--val-videos", "3"))
    demo = REPO / "bundles" / "demo"
    demo8 = cache / "demo_int8"
    if not (demo8 / "manifest.json").is_file():
        _run(_cli("bundle", "quantize", str(demo), "--out", str(demo8), "--data", str(world),
                  "--force"))  # fmt: skip
    r50 = cache / "r50"
    if not (r50 / "manifest.json").is_file():
        _run(
            _cli("export", "--preset", "slowfast_r50_ava", "--random-init", "--detector",
                 f"yolox:{YOLOX}", "--parity-video", str(BASKETBALL), "--out", str(r50),
                 "--force"),
            timeout=1800,
        )  # fmt: skip
    r50_8 = cache / "r50_int8"
    if not (r50_8 / "manifest.json").is_file():
        _run(_cli("bundle", "quantize", str(r50), "--out", str(r50_8), "--video",
                  str(BASKETBALL), "--force"), timeout=1800)  # fmt: skip
    return {"world": world, "demo": demo, "demo_int8": demo8, "r50": r50, "r50_int8": r50_8}


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--quick", action="store_true", help="short live runs, fewer repeats")
    ap.add_argument("--skip", default="", help="comma-separated benches to skip: a,b,c,d,e,f")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_start = time.monotonic()
    paths = build(args.cache)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = args.cache / "tmp"
    tmp.mkdir(exist_ok=True)
    demo_video = paths["world"] / "videos" / "val_000.mp4"
    sets = {
        "demo": (paths["demo"], paths["demo_int8"], demo_video),
        "r50": (paths["r50"], paths["r50_int8"], BASKETBALL),
    }
    runs = 3 if args.quick else 5

    def write(name: str, figures: dict[str, Any], load0: tuple[float, ...]) -> None:
        doc = {
            "bench": name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": _machine(),
            "load_average_start": load0,
            "load_average_end": os.getloadavg(),
            "bundles": {
                k: {"fp32": str(v[0]), "int8": str(v[1]), "video": str(v[2])}
                for k, v in sets.items()
            },  # fmt: skip
            "figures": figures,
        }
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"-> {path.relative_to(REPO)}", flush=True)

    summary: dict[str, Any] = {}
    if "a" not in skip:
        load0, figs = os.getloadavg(), {}
        for key, (b32, b8, video) in sets.items():
            for tag, bundle in (("fp32", b32), ("int8", b8)):
                _run([PY, "bench/bench_pipeline.py", "--bundle", bundle, "--video", video,
                      "--which", "a", "--tag", f"{key}_{tag}"])  # fmt: skip
                res = _json(RESULTS / f"pipeline_efficiency_{key}_{tag}.json")
                (RESULTS / f"pipeline_efficiency_{key}_{tag}.json").unlink()
                figs[f"{key}_{tag}"] = res
        write("efficiency", figs, load0)
        summary["a"] = {k: v["efficiency"] for k, v in figs.items()}
    speed: dict[str, dict[str, Any]] = {}
    for bench, which in (("b", "b"), ("c", "c"), ("d", "d"), ("f", "f")):
        if bench in skip:
            continue
        load0 = os.getloadavg()
        figs = {}
        for key, (b32, b8, video) in sets.items():
            out = tmp / f"{bench}_{key}.json"
            _run([PY, "bench/bench_speed.py", "--bundle", b32, "--int8", b8, "--video", video,
                  "--which", which, "--runs", str(runs), "--jobs", "2", "--out", out],
                 timeout=1800)  # fmt: skip
            figs[key] = _json(out)[which]
        if bench == "d":
            out = tmp / "map.json"
            _run([PY, "bench/int8_map.py", "--fp32", paths["demo"], "--int8",
                  paths["demo_int8"], "--data", paths["world"], "--out", out])  # fmt: skip
            figs["demo_val_map_gt_boxes"] = _json(out)
        name = {"b": "peer_loop", "c": "ort_vs_eager", "d": "int8_vs_fp32", "f": "jobs_per_hour"}
        write(name[bench], figs, load0)
        speed[bench] = figs
    if "e" not in skip:
        load0, figs = os.getloadavg(), {}
        # (name, bundle, video, short side, seconds of the looped open stream)
        for name, bundle, video, short_side, seconds in (
            ("demo", "demo", demo_video, 240, 30 if args.quick else 0),
            ("r50_int8", "r50_int8", BASKETBALL, 256, 40 if args.quick else 120),
        ):
            out = tmp / f"ws_{name}.json"
            _run([PY, "bench/bench_ws_lag.py", "--bundle", paths[bundle], "--video", video,
                  "--fps", "15", "--short-side", str(short_side), "--repeat", "1",
                  "--floor-runs", "0", "--replay-passes", "0", "--loop-seconds", str(seconds),
                  "--out", out], timeout=900)  # fmt: skip
            figs[name] = _json(out)
        write("live", figs, load0)
        speed["e"] = figs
    _summary(summary, speed, time.monotonic() - t_start)


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _summary(summary: dict[str, Any], speed: dict[str, Any], wall: float) -> None:
    rows: list[tuple[str, str, str]] = []
    eff = summary.get("a", {})
    for k, v in eff.items():
        rows.append((f"(a) efficiency {k}", _fmt(v), ">= 0.90"))
    if "b" in speed:
        for k, v in speed["b"].items():
            rows.append((f"(b) streaming vs eager peer loop, {k} fp32", _fmt(v["speedup"]), ">= 3"))
            if "speedup_int8" in v:
                rows.append((f"(b) ... {k} int8", _fmt(v["speedup_int8"]), ""))
    if "c" in speed:
        for k, v in speed["c"].items():
            rows.append((f"(c) ORT fp32 vs eager backbone, {k}", _fmt(v["ort_vs_eager"]), ">= 1.4"))
            if "ceiling_vs_eager_at_gemm_peak" in v:
                rows.append((
                    f"(c) ... {k}: ORT / eager / GEMM peak GFLOP/s (ceiling vs eager)",
                    f"{v['ort_gflops']:.0f} / {v['eager_gflops']:.0f} / "
                    f"{v['gemm_peak_gflops']:.0f} ({v['ceiling_vs_eager_at_gemm_peak']:.2f}x)",
                    "",
                ))  # fmt: skip
    if "d" in speed:
        for k, v in speed["d"].items():
            if k == "demo_val_map_gt_boxes":
                rows.append((
                    "(d) demo val frame-mAP GT boxes fp32 / int8",
                    f"{v['fp32']['frame_map']:.4f} / {v['int8']['frame_map']:.4f} "
                    f"(drop {v['map_drop']:+.4f})",
                    "drop <= 0.01",
                ))  # fmt: skip
                continue
            rows.append((f"(d) int8 vs fp32 backbone, {k}", _fmt(v["int8_vs_fp32_backbone"]),
                         ">= 1.8"))  # fmt: skip
            f32, f8 = v["file_fp32"]["realtime_factor"], v["file_int8"]["realtime_factor"]
            rows.append((
                f"(d) one file real-time factor {k} fp32 / int8",
                f"{f32:.2f} / {f8:.2f}",
                ">= 1.0 int8 (r50)",
            ))  # fmt: skip
    if "e" in speed:
        for k, v in speed["e"].items():
            rows.append((
                f"(e) live {k}: lag p95 s, dropped (client/engine)",
                f"{v['lag_p95_s']:.3f}, {v['last_run_dropped_keyframes']}/"
                f"{v['engine_keyframes_dropped']}",
                "demo: <= 0.150, 0" if k == "demo" else "",
            ))  # fmt: skip
            if k != "demo":
                rss = v.get("rss", {})
                rows.append((
                    f"(e) live {k}: {v['stream_seconds']:.0f} s open, stride, lag p95/backbone, "
                    "RSS peak 1st->2nd half MB",
                    f"{v['stream_stayed_open']}, {v['keyframe_stride_last']}, "
                    f"{_fmt(v.get('lag_p95_over_backbone'))}, {rss.get('first_half_max_mb')}->"
                    f"{rss.get('second_half_max_mb')}",
                    "open, stated, <= 2, flat",
                ))  # fmt: skip
    if "f" in speed:
        for k, v in speed["f"].items():
            rows.append((f"(f) jobs per hour, {k} fp32 ({v['video_s']:.0f} s video)",
                         f"{v['jobs_per_hour']:.0f}", ""))  # fmt: skip
    width = max((len(r[0]) for r in rows), default=10)
    print(f"\n{'bench':<{width}}  {'measured':<34}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<34}  {target}")
    print(f"\nall benches: {wall / 60:.1f} min; JSON under bench/results/")


if __name__ == "__main__":
    main()

"""Speed benches of issue 18 on one bundle (figures printed; JSON written by bench/run_all.py).

    python bench/bench_speed.py --bundle DIR [--int8 DIR] --video PATH --which b,c,d,f

(b) streaming vs the peers' demo loop, rebuilt: what the PySlowFast / MMAction2 demo scripts do
    per keyframe -- reopen the video, seek, decode the clip again, detect on the keyframe with
    the same detector graph (batch 1), run the model **eagerly in PyTorch** on that one clip
    (batch 1) and its head on its persons -- against `Engine.annotate_file` (ONNX Runtime,
    streaming decode, batchers). Both on every core. The eager model is the bundle's own
    when its provenance is ``random-init:PRESET:seed=N`` (the same weights, rebuilt); for a
    trained bundle whose checkpoint is not at hand (the demo), an untrained model of the same
    preset at the bundle's clip sizes stands in (speed does not depend on the weights; the
    JSON says which).
(c) ORT float32 vs eager PyTorch: the backbone (+RoI) alone on the same real clip, same
    thread count, interleaved runs, medians. Also each one's float32 throughput (the eager
    model's conv and linear multiply-adds, counted with forward hooks, per second) against
    this CPU's float32 GEMM peak: a runtime cannot beat eager by more than eager's distance
    from that peak, which bounds the ratio the issue asks for on a given CPU.
(d) int8 vs ORT float32: the same for the int8 bundle's backbone, and one file end to end
    (`Engine.annotate_file`, the thread policy's threads) in real-time factor for both.
(f) jobs per hour at this machine's cores: the file run as back-to-back jobs through one
    engine (a server with one job worker), in jobs and video-hours per hour.

Timings are wall-clock on whatever machine runs this; note its load. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import clip_boxes, naive_keyframe_clips, video_duration_s  # noqa: E402
from core.manifest import BundleManifest, load_manifest  # noqa: E402
from service.engine import Engine, EngineSettings  # noqa: E402
from service.threads import available_cores  # noqa: E402


def _engine(bundle: Path, threads: int | None = None) -> Engine:
    from service.runtime import RuntimeSettings

    settings = EngineSettings(runtime=RuntimeSettings(intra_op_threads=threads))
    return Engine(bundle, settings=settings)


async def _annotate(bundle: Path, video: Path, repeats: int = 1) -> dict[str, Any]:
    engine = _engine(bundle)
    walls, records = [], 0
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            records = 0
            async for _ in engine.annotate_file(video):
                records += 1
            walls.append(time.perf_counter() - t0)
        seconds = float(engine.last_info.duration_s or 0.0)
    finally:
        await engine.close()
    return {
        "walls_s": [round(w, 3) for w in walls],
        "wall_s": min(walls),
        "video_s": seconds,
        "realtime_factor": seconds / min(walls),
        "records": records,
        "thread_policy": engine.thread_policy.describe(),
    }


# -- the eager model -------------------------------------------------------------------------


def eager_model(manifest: BundleManifest) -> tuple[Any, str]:
    """(ActionModel in eval mode, what it is) for the bundle (module docstring).

    Denormal floats are flushed to zero in PyTorch, as ONNX Runtime's CPU kernels do: the
    untrained stand-in weights otherwise produce denormals that made the eager tiny model
    run 1 s per clip in some runs and 13 ms in others, which measures the weights, not the
    runtime."""
    import torch

    from export.bundle import random_init_model

    torch.set_flush_denormal(True)

    prov = manifest.provenance.checkpoint or ""
    m = re.match(r"random-init:([\w]+):seed=(\d+)", prov)
    if m:
        loaded = random_init_model(m.group(1), seed=int(m.group(2)))
        return loaded.model.eval(), f"the bundle's own weights ({m.group(0)}, rebuilt)"
    p = manifest.preprocessing
    overrides = {
        "short_side": p.short_side,
        "num_frames": p.num_frames,
        "alpha": p.alpha,
        "sampling_rate": p.sampling_rate,
    }
    loaded = random_init_model(manifest.model.preset, overrides=overrides)
    return loaded.model.eval(), (
        f"untrained {manifest.model.preset} at the bundle's clip sizes {overrides} (the "
        "bundle's checkpoint is not in the repo; speed does not depend on the weights)"
    )


def _clip_feed(manifest: BundleManifest, video: Path) -> dict[str, np.ndarray]:
    from export.quantize import calibration_feeds

    calib, _, _ = calibration_feeds(manifest, video=video, count=1)
    return calib[0]


def _interleaved(fns: dict[str, Any], runs: int) -> dict[str, dict[str, float]]:
    for fn in fns.values():
        fn()  # warm-up (allocations, kernel selection)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "runs": len(v)}
        for k, v in times.items()
    }


def bench_c(bundle: Path, video: Path, runs: int) -> dict[str, Any]:
    import torch

    from service.runtime import OnnxRuntime

    manifest = load_manifest(bundle)
    cores = available_cores()
    torch.set_num_threads(cores)
    model, what = eager_model(manifest)
    feed = _clip_feed(manifest, video)
    ort = OnnxRuntime(bundle / manifest.graphs["backbone"].file, intra_op_threads=cores)
    tfeed = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in ("slow", "fast", "boxes")]

    def eager() -> None:
        with torch.inference_mode():
            model.features(*tfeed)

    t = _interleaved({"ort_fp32": lambda: ort.run(feed), "eager": eager}, runs)
    macs = _conv_macs(model, tfeed)
    peak = _gemm_peak_gflops(cores)
    ort_s, eager_s = t["ort_fp32"]["median_s"], t["eager"]["median_s"]
    floor_s = 2 * macs / (peak * 1e9)  # the backbone's arithmetic at the GEMM peak
    res = {
        "eager_model": what,
        "threads": cores,
        "clip_shape": list(feed["fast"].shape),
        "persons": int(len(feed["boxes"])),
        "times": t,
        "ort_vs_eager": eager_s / ort_s,
        # How close each runtime is to this CPU's float32 peak, and so how much faster than
        # eager any float32 runtime could be (module docstring, (c)).
        "conv_linear_gmacs": macs / 1e9,
        "gemm_peak_gflops": peak,
        "ort_gflops": 2 * macs / ort_s / 1e9,
        "eager_gflops": 2 * macs / eager_s / 1e9,
        "ceiling_vs_eager_at_gemm_peak": eager_s / floor_s,
    }
    print(
        f"(c) backbone per clip: ORT fp32 {ort_s * 1e3:.0f} ms vs eager PyTorch "
        f"{eager_s * 1e3:.0f} ms -> {res['ort_vs_eager']:.2f}x ({cores} threads each); "
        f"{macs / 1e9:.1f} GMAC of conv/linear: ORT {res['ort_gflops']:.0f}, eager "
        f"{res['eager_gflops']:.0f} GFLOP/s against a {peak:.0f} GFLOP/s float32 GEMM peak "
        f"(a runtime at that peak would be {res['ceiling_vs_eager_at_gemm_peak']:.2f}x eager)"
    )
    return res


def _conv_macs(model: Any, inputs: list[Any]) -> float:
    """Multiply-adds of every conv and linear layer in one eager forward of ``inputs``
    (output elements x input channels per group x kernel volume): the backbone's arithmetic."""
    import torch

    total = 0.0

    def count(mod: Any, _inp: Any, out: Any) -> None:
        nonlocal total
        if isinstance(mod, torch.nn.Linear):
            total += out.numel() * mod.in_features
        else:
            k = 1
            for d in mod.kernel_size:
                k *= d
            total += out.numel() * (mod.in_channels // mod.groups) * k

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.inference_mode():
            model.features(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return total


def _gemm_peak_gflops(threads: int, n: int = 2048, runs: int = 5) -> float:
    """This CPU's float32 GEMM throughput at ``threads`` threads (PyTorch's BLAS, square n x n
    matrices, best of ``runs``): what a convolution at full efficiency would reach."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bench_d(bundle: Path, int8: Path, video: Path, runs: int) -> dict[str, Any]:
    from service.runtime import OnnxRuntime

    m32, m8 = load_manifest(bundle), load_manifest(int8)
    cores = available_cores()
    feed = _clip_feed(m32, video)
    r32 = OnnxRuntime(bundle / m32.graphs["backbone"].file, intra_op_threads=cores)
    r8 = OnnxRuntime(int8 / m8.graphs["backbone"].file, intra_op_threads=cores)
    t = _interleaved({"fp32": lambda: r32.run(feed), "int8": lambda: r8.run(feed)}, runs)
    # ONNX Runtime's optimisation levels (``all`` adds the layout transformations: NCHWc for
    # float convs, NHWC for int8 ones), both graphs, side by side (RuntimeSettings default).
    sessions = {
        f"{tag}_{level}": OnnxRuntime(path, intra_op_threads=cores, graph_optimization=level)
        for tag, path in (
            ("fp32", bundle / m32.graphs["backbone"].file),
            ("int8", int8 / m8.graphs["backbone"].file),
        )
        for level in ("basic", "extended", "all")
    }
    levels = _interleaved(
        {k: (lambda r=r: r.run(feed)) for k, r in sessions.items()}, max(2, runs // 2)
    )
    file32 = asyncio.run(_annotate(bundle, video))
    file8 = asyncio.run(_annotate(int8, video))
    q = m8.quantization
    res = {
        "threads": cores,
        "backbone_times": t,
        "int8_vs_fp32_backbone": t["fp32"]["median_s"] / t["int8"]["median_s"],
        "opt_levels": levels,
        "file_fp32": file32,
        "file_int8": file8,
        "int8_vs_fp32_file": file32["wall_s"] / file8["wall_s"],
        "quantization": q.model_dump() if q is not None else None,
    }
    print(
        f"(d) backbone per clip: int8 {t['int8']['median_s'] * 1e3:.0f} ms vs fp32 "
        f"{t['fp32']['median_s'] * 1e3:.0f} ms -> {res['int8_vs_fp32_backbone']:.2f}x; one file "
        f"({file32['video_s']:.0f} s): fp32 {file32['realtime_factor']:.2f}x real time, int8 "
        f"{file8['realtime_factor']:.2f}x; optimisation levels (median ms): "
        + ", ".join(f"{k} {v['median_s'] * 1e3:.0f}" for k, v in levels.items())
    )
    return res


# -- (b) the peers' loop -----------------------------------------------------------------------


def _peer_loop(bundle: Path, video: Path, device: str = "cpu") -> dict[str, Any]:
    """Per keyframe: open, seek, decode the clip, detect (batch 1), eager model (batch 1).
    ``device="cuda"`` runs the eager model on the GPU when this torch has CUDA."""
    import torch

    from models.onnx_utils import HeadGraph
    from service.detector import PersonDetector
    from service.runtime import RuntimeSettings, create_runtime

    manifest = load_manifest(bundle)
    cores = available_cores()
    torch.set_num_threads(cores)
    model, what = eager_model(manifest)
    dev = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
    model = model.to(dev)
    head = HeadGraph(model, probabilities=True).eval()
    assert manifest.detector is not None
    detector = PersonDetector(
        create_runtime(bundle, manifest, "detector", RuntimeSettings(intra_op_threads=cores)),
        manifest.detector,
    )
    duration = video_duration_s(video)
    bank: list[tuple[float, torch.Tensor]] = []
    dim_bank = model.lfb.dim_bank if model.lfb is not None else 1
    half = (manifest.bank.window_seconds - 1) // 2
    records = 0
    t0 = time.perf_counter()
    for _, t, slow_np, fast_np, key in naive_keyframe_clips(video, manifest, duration):
        slow, fast = (torch.from_numpy(a).to(dev) for a in (slow_np, fast_np))
        dets = detector.detect([key])[0]
        keep = dets.scores >= detector.score_threshold
        boxes_f = dets.boxes[keep]
        if len(boxes_f) == 0:
            continue
        boxes = clip_boxes(boxes_f, key, fast_np)
        with torch.inference_mode():
            person, glob = model.features(slow, fast, torch.from_numpy(boxes).to(dev))
            k = len(person)
            past = [f for s_, f in bank if t - half <= s_ <= t]
            if past:
                window = torch.cat(past)[None].expand(k, -1, -1)
                mask = torch.ones(k, window.shape[1], device=dev)
            else:
                window = torch.zeros(k, 1, dim_bank, device=dev)
                mask = torch.zeros(k, 1, device=dev)
            if model.lfb is not None and model.lfb.num_slots is not None:
                slots = model.lfb.num_slots
                window = torch.zeros(k, slots, dim_bank, device=dev)
                mask = torch.zeros(k, slots, device=dev)
            head(person, glob.expand(k, -1), window[..., :dim_bank], mask)
            bank.append((t, person[:, :dim_bank].clone()))
            if dev.type == "cuda":
                torch.cuda.synchronize()
        records += k
    return {
        "wall_s": time.perf_counter() - t0,
        "video_s": duration,
        "records": records,
        "eager_model": what,
        "threads": cores,
        "device": str(dev),
    }


def bench_b(bundle: Path, video: Path, int8: Path | None) -> dict[str, Any]:
    streaming = asyncio.run(_annotate(bundle, video))
    peer = _peer_loop(bundle, video)
    res: dict[str, Any] = {
        "streaming": streaming,
        "peer_loop": peer,
        "speedup": peer["wall_s"] / streaming["wall_s"],
    }
    line = (
        f"(b) streaming (ORT fp32) {streaming['wall_s']:.1f} s vs the peers' eager loop "
        f"{peer['wall_s']:.1f} s -> {res['speedup']:.2f}x"
    )
    if int8 is not None:
        s8 = asyncio.run(_annotate(int8, video))
        res["streaming_int8"] = s8
        res["speedup_int8"] = peer["wall_s"] / s8["wall_s"]
        line += f"; int8 streaming {s8['wall_s']:.1f} s -> {res['speedup_int8']:.2f}x"
    print(line)
    return res


def bench_f(bundle: Path, video: Path, jobs: int) -> dict[str, Any]:
    run = asyncio.run(_annotate(bundle, video, repeats=jobs))
    total = sum(run["walls_s"])
    res = {
        "jobs": jobs,
        "job_walls_s": run["walls_s"],
        "video_s": run["video_s"],
        "jobs_per_hour": jobs * 3600 / total,
        "video_hours_per_hour": jobs * run["video_s"] / total,
        "cores": available_cores(),
        "thread_policy": run["thread_policy"],
    }
    print(
        f"(f) {jobs} back-to-back jobs of {run['video_s']:.0f} s: {res['jobs_per_hour']:.0f} "
        f"jobs/hour = {res['video_hours_per_hour']:.2f} video-hours per hour at "
        f"{res['cores']} cores"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--int8", type=Path, default=None, help="the int8 copy, for (d)")
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--which", default="b,c,d,f")
    ap.add_argument("--runs", type=int, default=5, help="backbone runs per variant in (c), (d)")
    ap.add_argument("--jobs", type=int, default=2, help="back-to-back jobs in (f)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    for w in args.which.split(","):
        w = w.strip()
        if w == "b":
            out["b"] = bench_b(args.bundle, args.video, args.int8)
        elif w == "c":
            out["c"] = bench_c(args.bundle, args.video, args.runs)
        elif w == "d":
            if args.int8 is None:
                sys.exit("(d) needs --int8 DIR")
            out["d"] = bench_d(args.bundle, args.int8, args.video, args.runs)
        elif w == "f":
            out["f"] = bench_f(args.bundle, args.video, args.jobs)
        else:
            sys.exit(f"--which: unknown bench {w!r} (b, c, d, f)")
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

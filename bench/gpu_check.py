"""GPU readiness check (issue 18): `bash bench/gpu_check.sh` / `make bench-gpu`, unattended.

    python bench/gpu_check.py [--out-dir runs/bench/gpu] [--max-streams 16] [--quick]

On a machine with an NVIDIA GPU and TensorRT >= 10 (``avaserve[gpu]``):

1. exports an untrained ``slowfast_r50_ava`` bundle with TensorRT fp16 engines
   (``avaserve export --tensorrt fp16``: the real export path, parity-gated on CPU first);
2. checks the engines against ONNX Runtime on the CPU on a real clip (backbone) and on
   random head inputs: max abs difference and cosine similarity per output;
3. (b) streaming on the engines (`Engine`, ``engine=tensorrt``) vs the peers' eager loop
   (PyTorch on the GPU when this torch has CUDA, else on the CPU, as the JSON says);
4. (e) one live stream at real-time pace over the WebSocket (ONNX Runtime's TensorRT
   provider), lag and drops;
5. concurrent live streams: 1, 2, 4, ... real-time streams at once until one drops a
   keyframe, raises its stride or its lag p95 exceeds 2 x the backbone's median: the
   largest count that held.

Prints one summary table and writes ``bench/results/gpu_check.json``. Without a GPU it stops
at once with exit code 2 and says what is missing (`check_gpu`). Budget: under 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
EXIT_NO_GPU = 2


class GpuUnavailable(RuntimeError):
    """No usable GPU stack here; the message lists what is missing."""


def check_gpu() -> dict[str, Any]:
    """What the GPU stack offers, or `GpuUnavailable` naming each missing piece."""
    missing: list[str] = []
    found: dict[str, Any] = {}
    smi = shutil.which("nvidia-smi")
    if smi is None:
        missing.append("nvidia-smi (no NVIDIA driver)")
    else:
        res = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0 or not res.stdout.strip():
            missing.append(f"a GPU visible to nvidia-smi ({res.stderr.strip()[:120]})")
        else:
            found["gpus"] = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    try:
        from export.tensorrt import require_tensorrt

        found["tensorrt"] = str(require_tensorrt().__version__)
    except Exception as e:  # noqa: BLE001 - TensorRTUnavailable or a broken install
        missing.append(f"TensorRT >= 10 ({str(e).splitlines()[0][:160]})")
    import onnxruntime as ort

    providers = ort.get_available_providers()
    found["onnxruntime_providers"] = providers
    if "CUDAExecutionProvider" not in providers:
        missing.append(
            f"onnxruntime with CUDAExecutionProvider (onnxruntime-gpu; this build has {providers})"
        )
    if missing:
        raise GpuUnavailable(
            "GPU check needs an NVIDIA GPU stack; missing: " + "; ".join(missing)
            + ". Install avaserve[gpu] on a GPU machine and rerun bench/gpu_check.sh."
        )  # fmt: skip
    return found


def compare(reference: Any, candidate: Any, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per output: max abs difference and smallest per-row cosine, candidate vs reference
    (two `service.runtime.Runtime`s; here TensorRT vs ONNX Runtime on the CPU)."""
    from export.quantize import _cosines

    out: dict[str, dict[str, float]] = {}
    for feed in feeds:
        a, b = reference.run(feed), candidate.run(feed)
        for name, ref in a.items():
            if ref.size == 0:
                continue
            got = np.asarray(b[name], dtype=np.float32)
            rec = out.setdefault(name, {"max_abs": 0.0, "min_cosine": 1.0})
            rec["max_abs"] = max(rec["max_abs"], float(np.max(np.abs(ref - got))))
            rec["min_cosine"] = min(rec["min_cosine"], float(np.min(_cosines(ref, got))))
    return out


def _head_feeds(manifest: Any, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    graph = manifest.graphs["head"]
    feed: dict[str, np.ndarray] = {}
    for spec in graph.inputs:
        rng_shape = graph.shape_ranges.get(spec.name)
        shape = tuple(rng_shape.opt) if rng_shape is not None else tuple(
            d if isinstance(d, int) else 2 for d in spec.shape
        )  # fmt: skip
        if spec.name == "mask":
            feed[spec.name] = (rng.random(shape) > 0.3).astype(np.dtype(spec.dtype))
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(np.dtype(spec.dtype))
    return [feed]


def parity(bundle: Path, video: Path) -> dict[str, Any]:
    from core.manifest import load_manifest
    from export.quantize import calibration_feeds
    from service.runtime import RuntimeSettings, create_runtime

    m = load_manifest(bundle)
    cpu = RuntimeSettings(intra_op_threads=0)
    trt = RuntimeSettings(engine="tensorrt")
    calib, _, _ = calibration_feeds(m, video=video, count=2)
    res = {}
    for role, feeds in (("backbone", calib), ("head", _head_feeds(m, np.random.default_rng(0)))):
        res[role] = compare(
            create_runtime(bundle, m, role, cpu), create_runtime(bundle, m, role, trt), feeds
        )
    return res


def _streams_once(port: int, n: int, frames: Any, fps: float) -> list[dict[str, Any]]:
    from bench.bench_ws_lag import _client

    ctx = multiprocessing.get_context("spawn")
    urls = [f"ws://127.0.0.1:{port}/v1/streams/gpu-{n}-{i}" for i in range(n)]
    with ctx.Pool(n) as pool:
        outs = pool.starmap(_client, [(u, frames, fps, 1.0) for u in urls])
    runs = []
    for notes, statuses, _ in outs:
        lags = [a["lag"] for a in notes if a.get("lag") is not None]
        last = statuses[-1] if statuses else {}
        runs.append(
            {
                "annotations": len(notes),
                "lag_p95_s": float(np.percentile(lags, 95)) if lags else None,
                "dropped": last.get("dropped_keyframes"),
                "stride": last.get("keyframe_stride"),
            }
        )
    return runs


def live_and_streams(bundle: Path, video: Path, seconds: float, max_streams: int) -> dict[str, Any]:
    """(e) one stream, then 1, 2, 4, ... concurrent streams on one server (module docstring)."""
    from bench._common import free_port
    from bench.bench_ws_lag import KEY, _frames, _looped, _serve
    from service.settings import Settings

    providers = "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"
    settings = Settings(
        bundle=bundle,
        port=free_port(),
        api_keys=KEY,
        ort_providers=providers,  # type: ignore[arg-type]
        max_streams_per_key=max_streams,
        max_streams_global=max_streams,
        live_queue_frames=256,
    )
    frames = _looped(_frames(video, 15.0, 256), seconds)
    app, server, thread = _serve(settings)
    engine = app.state.service.engine
    try:
        single = _streams_once(settings.port, 1, frames, 15.0)[0]
        backbone = float(np.median(list(engine.stats.samples["backbone_run"])))
        held, tried = 0, []
        n = 1
        while n <= max_streams:
            runs = _streams_once(settings.port, n, frames, 15.0)
            ok = all(
                r["dropped"] == 0
                and r["stride"] in (1, None)
                and r["lag_p95_s"] is not None
                and r["lag_p95_s"] <= 2 * backbone
                for r in runs
            )
            tried.append({"streams": n, "held": ok, "runs": runs})
            if not ok:
                break
            held = n
            n *= 2
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return {
        "single_stream": single,
        "backbone_median_s": backbone,
        "concurrent_streams_held": held,
        "tried": tried,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench" / "gpu")
    ap.add_argument("--video", type=Path, default=None)
    ap.add_argument("--max-streams", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each live run")
    ap.add_argument("--check-only", action="store_true", help="only report the GPU stack")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        stack = check_gpu()
    except GpuUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_NO_GPU)
    print(f"GPU stack: {stack}")
    if args.check_only:
        return
    from bench.run_all import BASKETBALL, YOLOX

    video = args.video or BASKETBALL
    bundle = args.out_dir / "r50_trt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if not (bundle / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "avaserve.cli", "export", "--preset", "slowfast_r50_ava",
             "--random-init", "--detector", f"yolox:{YOLOX}", "--parity-video", str(video),
             "--tensorrt", "fp16", "--out", str(bundle), "--force"],
            check=True, env=env, cwd=REPO,
        )  # fmt: skip
    report: dict[str, Any] = {"stack": stack, "bundle": str(bundle)}
    report["parity_trt_vs_ort_cpu"] = parity(bundle, video)
    from bench.bench_speed import _peer_loop
    from service.engine import Engine, EngineSettings
    from service.runtime import RuntimeSettings

    async def stream() -> float:
        engine = Engine(bundle, settings=EngineSettings(runtime=RuntimeSettings(engine="tensorrt")))
        t = time.perf_counter()
        async for _ in engine.annotate_file(video):
            pass
        wall = time.perf_counter() - t
        await engine.close()
        return wall

    import asyncio

    streaming = asyncio.run(stream())
    peer = _peer_loop(bundle, video, device="cuda")
    report["b"] = {
        "streaming_s": streaming,
        "peer_loop": peer,
        "speedup": peer["wall_s"] / streaming,
    }
    report["e_and_streams"] = live_and_streams(bundle, video, args.seconds, args.max_streams)
    report["wall_s"] = time.monotonic() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    rows = [
        (f"parity {role}.{out}", f"max abs {d['max_abs']:.3g}, cosine {d['min_cosine']:.5f}")
        for role, outs in report["parity_trt_vs_ort_cpu"].items()
        for out, d in outs.items()
    ]
    rows.append(("(b) streaming vs eager peer loop", f"{report['b']['speedup']:.2f}x"))
    live = report["e_and_streams"]
    s = live["single_stream"]
    rows.append(("(e) one live stream lag p95 / dropped", f"{s['lag_p95_s']} s / {s['dropped']}"))
    rows.append(("concurrent real-time streams held", str(live["concurrent_streams_held"])))
    rows.append(("wall", f"{report['wall_s'] / 60:.1f} min"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

"""``avaserve annotate VIDEO``: run the whole pipeline in-process on one video file.

Embedded defaults: the in-process feature bank, ONNX Runtime on the CPU. ``--redis-url`` puts
the bank in Redis instead. Outputs: JSON Lines (``--out``, default ``<video>.jsonl``), the
official AVA CSV (``--csv``), a rendered MP4 (``--render``). Ends with a one-screen summary
(persons, seconds of video, real-time factor, records whose long-term context was degraded).

Exit codes: 0 done; 2 bad command line; 3 the video was refused (``VideoInputError``: the
reason and what to do); 4 the bundle or detector cannot be used; 1 anything else.

Nothing heavy is imported at module level, so ``avaserve --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from core.defaults import TOP_K

__all__ = ["DEFAULT_BUNDLE", "annotate_command", "register"]

# The committed demo bundle (tiny SlowFast + YOLOX-nano), relative to the repository root.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "demo"

EXIT_VIDEO = 3
EXIT_BUNDLE = 4


def register(app: typer.Typer) -> None:
    """Add the ``annotate`` command to the ``avaserve`` app."""
    app.command("annotate")(annotate_command)


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def annotate_command(
    video: Path = typer.Argument(..., help="Video file (MP4/MOV, MKV/WebM, MPEG-TS or AVI)."),
    bundle: Path | None = typer.Option(
        None, "--bundle", help=f"Model bundle directory (default: {DEFAULT_BUNDLE})."
    ),
    detector: Path | None = typer.Option(
        None,
        "--detector",
        help="Your own person detector: a YOLOX ONNX export, or a graph with the bundle "
        "detector contract (+ PATH.json DetectorSpec). Default: the bundle's.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="JSON Lines results (default: <video name>.jsonl here)."
    ),
    csv_out: Path | None = typer.Option(None, "--csv", help="Official AVA CSV results."),
    csv_top_k: int = typer.Option(TOP_K, "--csv-top-k", min=1, help="AVA CSV: actions per box."),
    csv_min_score: float | None = typer.Option(
        None, "--csv-min-score", help="AVA CSV: every action >= this instead of top-k."
    ),
    render: Path | None = typer.Option(None, "--render", help="Rendered MP4 with boxes/actions."),
    window: int | None = typer.Option(
        None, "--window", min=1, help="Bank window in seconds (default: the bundle's, 61)."
    ),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="Keep the feature bank in Redis (redis://host:port/db)."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=0,
        help="ONNX Runtime threads for every graph (0: all cores). Default: chosen per graph "
        "from the model's cost, as the server does (AVASERVE_ORT_INTRA_OP_THREADS unset), so "
        "results are identical to a REST job's; other counts change scores in the last digits.",
    ),
    providers: str = typer.Option(
        "cpu", "--providers", help="Comma-separated: tensorrt,cuda,cpu (unavailable ones skip)."
    ),
    score_threshold: float | None = typer.Option(
        None, "--score-threshold", min=0.0, max=1.0, help="Person score (default: the bundle's)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Find every person, track them and name their actions once per second."""
    import asyncio

    from core.manifest import BundleError
    from service.errors import VideoInputError
    from service.runtime import RuntimeLoadError

    bundle_dir = bundle or DEFAULT_BUNDLE
    if not (bundle_dir / "manifest.json").is_file():
        hint = (
            "build one with `avaserve export` and pass --bundle DIR"
            if bundle is None
            else "pass a bundle directory (it holds manifest.json)"
        )
        raise _fail(f"no model bundle at {bundle_dir}: {hint}", EXIT_BUNDLE)
    if not video.is_file():
        raise _fail(f"{video}: no such file", EXIT_VIDEO)
    out = out or Path(f"{video.stem}.jsonl")
    try:
        summary = asyncio.run(
            _annotate(
                video,
                bundle_dir,
                detector=detector,
                out=out,
                csv_out=csv_out,
                csv_top_k=csv_top_k,
                csv_min_score=csv_min_score,
                render=render,
                window=window,
                redis_url=redis_url,
                threads=threads,
                providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
                score_threshold=score_threshold,
                quiet=quiet,
            )
        )
    except VideoInputError as e:
        raise _fail(f"{video.name}: {e.message} ({e.reason})", EXIT_VIDEO) from None
    except (BundleError, RuntimeLoadError) as e:
        raise _fail(str(e), EXIT_BUNDLE) from None
    except ValueError as e:  # a setting the bundle cannot honour (e.g. --window too long)
        raise _fail(str(e), 2) from None
    _print_summary(summary)


async def _annotate(
    video: Path,
    bundle_dir: Path,
    *,
    detector: Path | None,
    out: Path,
    csv_out: Path | None,
    csv_top_k: int,
    csv_min_score: float | None,
    render: Path | None,
    window: int | None,
    redis_url: str | None,
    threads: int | None,
    providers: tuple[str, ...],
    score_threshold: float | None,
    quiet: bool,
) -> dict[str, object]:
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from service.bank import FeatureBank
    from service.engine import Engine, EngineSettings
    from service.records import AvaCsvWriter, JsonlWriter, Prediction
    from service.runtime import RuntimeSettings

    settings = EngineSettings(
        runtime=RuntimeSettings(providers=providers or ("cpu",), intra_op_threads=threads),
        window_seconds=window,
        score_threshold=score_threshold,
    )
    bank: FeatureBank | None = None
    if redis_url:
        from service.bank_redis import RedisBank

        bank = RedisBank(redis_url, retention_s=settings.bank_retention_s)
    engine = Engine(bundle_dir, settings=settings, bank=bank, detector_path=detector)
    jsonl = JsonlWriter(out)
    csv_writer = (
        AvaCsvWriter(csv_out, top_k=csv_top_k, min_score=csv_min_score) if csv_out else None
    )
    kept: list[Prediction] = []
    tracks: set[int] = set()
    times: set[float] = set()
    degraded = 0
    t0 = time.perf_counter()
    last_pts = 0.0
    progress = Progress(
        TextColumn("[bold]annotate[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TimeElapsedColumn(),
        disable=quiet,
        transient=True,
    )
    task = progress.add_task(video.name, total=None, where="")

    def on_frame(pts: float) -> None:
        nonlocal last_pts
        last_pts = pts
        info = getattr(engine, "last_info", None)
        if info is not None and progress.tasks[0].total is None and info.duration_s:
            progress.update(task, total=info.duration_s)
        total = progress.tasks[0].total
        where = f"{pts:.0f}/{total:.0f} s" if total else f"{pts:.0f} s"
        progress.update(task, completed=pts, where=where)

    ok = False
    try:
        with progress:
            async for p in engine.annotate_file(video, progress=on_frame):
                jsonl.write([p])
                if csv_writer is not None:
                    csv_writer.write([p])
                if render is not None:
                    kept.append(p)
                tracks.add(p.track_id)
                times.add(p.time)
                degraded += p.context == "degraded"
        ok = True
    finally:
        jsonl.close()
        if csv_writer is not None:
            csv_writer.close()
        if not ok:  # a refused or failed video leaves no half-written results behind
            for path in (out, csv_out):
                if path is not None:
                    path.unlink(missing_ok=True)
        stats = engine.stats.summary()
        await engine.close()
    wall = time.perf_counter() - t0
    info = getattr(engine, "last_info", None)
    seconds = float(info.duration_s) if info is not None and info.duration_s else last_pts
    if render is not None:
        from service.render import render_video

        render_video(video, kept, render, keyframe_rate=engine.manifest.keyframe_rate)
    return {
        "video": str(video),
        "persons": len(tracks),
        "records": jsonl.count,
        "keyframes": int(stats["counters"].get("keyframes", 0)),
        "keyframes_with_persons": len(times),
        "seconds": seconds,
        "wall_s": wall,
        "realtime_factor": seconds / wall if wall > 0 else float("inf"),
        "degraded": degraded,
        "threads": engine.thread_policy.describe(),
        **({"cpu": engine.cpu_note} if engine.cpu_note else {}),
        "outputs": [str(p) for p in (out, csv_out, render) if p is not None],
    }


def _print_summary(s: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="avaserve annotate", show_header=False)
    table.add_row("video", str(s["video"]))
    table.add_row("persons (tracks)", str(s["persons"]))
    table.add_row("records", f"{s['records']} over {s['keyframes_with_persons']} keyframes")
    table.add_row("video seconds", f"{s['seconds']:.1f}")
    table.add_row("wall seconds", f"{s['wall_s']:.1f}")
    table.add_row("real-time factor", f"{s['realtime_factor']:.2f}x")
    table.add_row("degraded context", str(s["degraded"]))
    table.add_row("thread policy", str(s["threads"]))
    if "cpu" in s:
        table.add_row("cpu", str(s["cpu"]))
    table.add_row("written", ", ".join(s["outputs"]))  # type: ignore[arg-type]
    Console().print(table)

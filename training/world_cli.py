"""`avaserve make-world` and `avaserve world-preview`.

Heavy imports (numpy, PIL, PyAV) happen inside the command bodies so that
`avaserve --help` stays instant.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import typer

# What make-world writes; --force removes exactly these, never anything else in OUT.
_WORLD_ENTRIES = ("videos", "annotations", "classification", "dataset.json", "CARD.md")


def _parse_range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition("-")
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected MIN-MAX, e.g. 2-4") from None
    if not 1 <= a <= b <= 12:
        raise typer.BadParameter(f"{text!r}: need 1 <= MIN <= MAX <= 12")
    return a, b


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected WIDTHxHEIGHT, e.g. 320x240") from None
    return w, h


def make_world(
    out: Path = typer.Argument(..., help="Directory to write the world into (created)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; same seed, same world."),
    videos: int = typer.Option(8, "--videos", min=0, help="Number of train videos."),
    val_videos: int = typer.Option(3, "--val-videos", min=0, help="Number of val videos."),
    seconds: int = typer.Option(
        60, "--seconds", min=5, help="Length of each video. Long-term labels need >= 26 s."
    ),
    persons: str = typer.Option(
        "2-4", "--persons", help="MIN-MAX people on screen at a time, e.g. 2-4."
    ),
    fps: int = typer.Option(15, "--fps", help="Frame rate of the videos."),
    size: str = typer.Option("320x240", "--size", help="Frame size WIDTHxHEIGHT (even)."),
    classification: bool = typer.Option(
        False,
        "--classification",
        help="Also write the clip-level variant (classification/{train,val}.csv, path,label).",
    ),
    cls_per_class: int = typer.Option(
        100, "--cls-per-class", min=1, help="Classification train clips per class."
    ),
    cls_val_per_class: int = typer.Option(
        20, "--cls-val-per-class", min=1, help="Classification val clips per class."
    ),
    crf: int = typer.Option(22, "--crf", min=0, max=51, help="x264 quality (lower = better)."),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Processes rendering in parallel (0 = one per core, max 2)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace a world already in OUT (only the world's own files)."
    ),
) -> None:
    """Generate a synthetic AVA-format world: videos, annotations, label map, card.

    Deterministic: the same options give byte-identical annotation CSVs. See the
    CARD.md it writes for the classes, the long-term rule and the limitations.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from training.world.generate import WorldConfig, generate_world

    lo, hi = _parse_range(persons)
    width, height = _parse_size(size)
    try:
        config = WorldConfig(
            seed=seed,
            train_videos=videos,
            val_videos=val_videos,
            seconds=seconds,
            min_persons=lo,
            max_persons=hi,
            fps=fps,
            width=width,
            height=height,
            crf=crf,
            classification=classification,
            cls_train_per_class=cls_per_class,
            cls_val_per_class=cls_val_per_class,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            typer.echo(
                f"error: {out} is not empty; pick an empty directory or pass --force to "
                "replace the world in it",
                err=True,
            )
            raise typer.Exit(2)
        for name in _WORLD_ENTRIES:
            entry = out / name
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
    start = time.perf_counter()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("rendering", total=None)

        def progress(total: int) -> Callable[[str], None]:
            bar.update(task, total=total)
            return lambda name: bar.update(task, advance=1, description=f"rendered {name}")

        info = generate_world(out, config, workers=workers or None, progress=progress)
    elapsed = time.perf_counter() - start
    counts = {c["id"]: (c["count_train"], c["count_val"]) for c in info["classes"]}
    typer.echo(
        f"wrote {len(info['videos'])} videos to {out} in {elapsed:.1f} s; "
        f"class counts (train, val): {counts}; see {out / 'CARD.md'}"
    )


def world_preview(
    data_dir: Path = typer.Argument(..., help="A world (or AVA-layout) directory."),
    video: str | None = typer.Option(
        None, "--video", help="Video id to show (default: the first of the split)."
    ),
    split: str = typer.Option("train", "--split", help="Annotation split: train or val."),
    out: Path | None = typer.Option(
        None, "--out", help="PNG to write (default DIR/preview_<video>.png)."
    ),
    cols: int = typer.Option(4, "--cols", min=1, help="Tiles per row."),
    rows: int = typer.Option(3, "--rows", min=1, help="Rows of tiles."),
    scale: float = typer.Option(1.5, "--scale", min=0.5, max=4.0, help="Tile upscaling."),
) -> None:
    """Render a contact sheet PNG: keyframes with GT boxes, person ids and labels."""
    from training.world.preview import contact_sheet

    if not (data_dir / "dataset.json").is_file():
        raise typer.BadParameter(f"{data_dir} has no dataset.json; is it a world directory?")
    if split not in ("train", "val"):
        raise typer.BadParameter(f"--split {split!r}: use train or val")
    target = out if out is not None else data_dir / f"preview_{video or split}.png"
    try:
        path = contact_sheet(
            data_dir, target, video_id=video, split=split, cols=cols, rows=rows, scale=scale
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("make-world")(make_world)
    app.command("world-preview")(world_preview)

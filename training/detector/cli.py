"""``avaserve train-detector`` and ``avaserve eval-detector``.

Nothing heavy is imported at module level (only typer): torch, PyAV and ONNX Runtime load
inside the commands, so ``avaserve --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["eval_detector_command", "register", "train_detector_command"]


def register(app: typer.Typer) -> None:
    """Add ``train-detector`` and ``eval-detector`` to the ``avaserve`` app."""
    app.command("train-detector", help=train_detector_command.__doc__)(train_detector_command)
    app.command("eval-detector", help=eval_detector_command.__doc__)(eval_detector_command)


def train_detector_command(
    data: Path = typer.Argument(..., help="Dataset directory (a world or an AVA layout)."),
    out: Path = typer.Argument(..., help="Output directory: detector.pt, detector_log.csv."),
    iterations: int = typer.Option(
        1000, "--iterations", min=1, help="Training iterations (batches of --batch-size)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, augmentation and init."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per iteration."),
    lr: float = typer.Option(3e-3, "--lr", min=0.0, help="Peak AdamW learning rate."),
    threads: int = typer.Option(
        0,
        "--threads",
        min=0,
        help="Torch CPU threads (0 = one per core). On a machine shared with other jobs, 1 "
        "is often faster: idle threads of a busy pool spin.",
    ),
    onnx: bool = typer.Option(
        True,
        "--onnx/--no-onnx",
        help="Also write OUT/detector.onnx (NMS in the graph, parity-checked against PyTorch) "
        "for `avaserve export --detector onnx:OUT/detector.onnx` and `eval --boxes detector`.",
    ),
) -> None:
    """Train the person detector on a dataset's keyframe boxes; prints val person AP@0.5."""
    from core.ava import AvaFormatError
    from training.detector.train import DetectorTrainConfig, train_detector

    config = DetectorTrainConfig(
        iterations=iterations, seed=seed, batch_size=batch_size, lr=lr, threads=threads
    )
    try:
        result = train_detector(data, out, config=config)
    except (AvaFormatError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"checkpoint: {result.checkpoint}")
    typer.echo(f"log: {result.log}")
    typer.echo(f"training time: {result.seconds:.1f} s, final loss {result.final_loss:.4f}")
    if result.score_threshold is not None:
        typer.echo(f"best-F1 score threshold (val): {result.score_threshold:.2f}")
    if result.val_ap is not None:
        typer.echo(f"person AP@0.5 (val): {result.val_ap:.4f}")
    if onnx:
        from training.detector.export import export_detector_onnx

        onnx_path = Path(out) / "detector.onnx"
        exported = export_detector_onnx(result.checkpoint, onnx_path)
        worst = max(exported.parity.values(), default=0.0)
        typer.echo(
            f"onnx: {onnx_path} (score threshold {exported.spec.score_threshold:.2f}; parity "
            f"max abs diff {worst:.2e} over {exported.num_frames} frames)"
        )


def eval_detector_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="detector.pt from train-detector (eager PyTorch)."
    ),
    onnx_path: Path | None = typer.Option(
        None, "--onnx", help="detector.onnx from the detector export (ONNX Runtime)."
    ),
    split: str = typer.Option("val", "--split", help="Split to evaluate (train or val)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write the detections as an AVA proposals CSV "
        "(video_id,timestamp,x1,y1,x2,y2,score; normalised boxes).",
    ),
    min_score: float = typer.Option(
        0.0, "--min-score", min=0.0, max=1.0, help="Drop detections below this score."
    ),
    sweep: bool = typer.Option(
        False, "--sweep", help="Also print precision / recall / F1 at score thresholds 0-0.9."
    ),
) -> None:
    """Person AP@0.5 (VOC all-point) of a detector on a split. Last line: person AP@0.5: <v>."""
    if (checkpoint is None) == (onnx_path is None):
        typer.echo("error: give exactly one of --checkpoint and --onnx", err=True)
        raise typer.Exit(code=2)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from core.ava import AvaFormatError
    from training.detector.data import load_keyframe_images
    from training.detector.eval import (
        person_ap,
        run_checkpoint,
        run_onnx,
        threshold_sweep,
        write_proposals,
    )

    try:
        items = load_keyframe_images(data, split)
    except AvaFormatError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if not items:
        typer.echo(f"error: {data}: split {split!r} has no labelled keyframes", err=True)
        raise typer.Exit(code=2)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("detecting", total=len(items))

        def progress(done: int) -> None:
            bar.update(task, completed=done)

        try:
            if checkpoint is not None:
                dets, _ = run_checkpoint(checkpoint, items, progress)
            else:
                assert onnx_path is not None
                dets, _ = run_onnx(onnx_path, items, progress=progress)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
    if min_score > 0:
        from training.detector.eval import DetectionSet

        dets = [
            DetectionSet(d.video_id, d.timestamp, d.boxes[keep], d.scores[keep])
            for d in dets
            for keep in [d.scores >= min_score]
        ]
    if out is not None:
        n = write_proposals(dets, out)
        typer.echo(f"wrote {n} proposals to {out}")
    if sweep:
        typer.echo("threshold  precision  recall  f1")
        for row in threshold_sweep(dets, items):
            typer.echo(
                f"{row['threshold']:9.2f}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                f"{row['f1']:.4f}"
            )
    result = person_ap(dets, items)
    typer.echo(
        f"keyframes: {result.num_keyframes}, ground-truth persons: {result.num_gt}, "
        f"detections: {result.num_detections}"
    )
    typer.echo(f"person AP@0.5: {result.ap:.4f}")

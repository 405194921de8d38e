"""`avaserve plot-cooccurrence`: report B's data balancing (CP-IA then LS) on an AVA CSV,
drawn as the label co-occurrence matrix before/after, with a per-class count table.

Only typer is imported at module level, so ``avaserve --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["plot_cooccurrence_command", "register"]


def register(app: typer.Typer) -> None:
    """Add the ``plot-cooccurrence`` command to the ``avaserve`` app."""
    app.command("plot-cooccurrence", help=plot_cooccurrence_command.__doc__)(
        plot_cooccurrence_command
    )


def plot_cooccurrence_command(
    annotations: Path = typer.Option(
        ...,
        "--annotations",
        help="AVA annotation CSV (video_id,timestamp,x1,y1,x2,y2,action_id,person_id).",
    ),
    label_map: Path | None = typer.Option(
        None, "--label-map", help="Label map .pbtxt; default: the 80 AVA v2.2 classes."
    ),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    frequent_threshold: float = typer.Option(
        10_000,
        "--frequent-threshold",
        help=(
            "LS trims classes with more instances than this (report B: 10000 on AVA). "
            "A value below 1 is a share of all labels, e.g. 0.05 for a small data set."
        ),
    ),
    target: int | None = typer.Option(
        None,
        "--target",
        help="CP-IA raises rare classes towards this count; default: the frequent threshold.",
    ),
    max_copies: int = typer.Option(10, "--max-copies", help="CP-IA: most copies of one box."),
    allow_empty: bool = typer.Option(
        False,
        "--ls-allow-empty",
        help="LS may drop a box's last label (default: it never does; see docs/balancing.md).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of CP-IA's tie-breaks and jitter and LS's draws."
    ),
) -> None:
    """Balance an AVA CSV with CP-IA then LS and plot the co-occurrence matrix before/after."""
    import numpy as np

    from core.ava import AvaFormatError, LabelMap, read_label_map_pbtxt
    from core.ava_data import read_keyframes
    from training.balancing import balance, cooccurrence_matrix
    from training.plots import plot_cooccurrence

    try:
        lm = read_label_map_pbtxt(label_map) if label_map is not None else LabelMap.ava_all()
        frames = read_keyframes(annotations, lm, unknown_classes="skip")
    except (AvaFormatError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not frames:
        typer.echo(f"error: {annotations}: no annotated boxes in the label map's classes", err=True)
        raise typer.Exit(2)
    labels = np.concatenate([f.label_matrix(lm) for f in frames], axis=0) > 0  # (N, C)
    boxes = np.concatenate([f.boxes for f in frames], axis=0)  # (N, 4) normalised xyxy
    try:
        result = balance(
            labels,
            boxes,
            frequent_threshold=frequent_threshold,
            cpia_target=target,
            max_copies=max_copies,
            keep_last_label=not allow_empty,
            seed=seed,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    before = cooccurrence_matrix(labels)
    after = cooccurrence_matrix(result.labels)
    names = [f"{i} {n}" for i, n in zip(lm.ids, lm.names, strict=True)]
    plot_cooccurrence(before, after, names, out)

    counts0 = result.plan.counts_before
    counts1 = result.plan.counts_after
    counts2 = result.counts
    typer.echo(f"{'id':>4}  {'class':<40} {'before':>8} {'+CP-IA':>8} {'LS p':>6} {'+LS':>8}")
    for k, class_id in enumerate(lm.ids):
        if counts0[k] == 0 and counts2[k] == 0:
            continue
        typer.echo(
            f"{class_id:>4}  {lm.names[k][:40]:<40} {counts0[k]:>8d} {counts1[k]:>8d} "
            f"{result.drop_prob[k]:>6.3f} {counts2[k]:>8d}"
        )
    typer.echo(
        f"boxes: {labels.shape[0]} -> {result.labels.shape[0]} "
        f"({result.plan.indices.shape[0]} CP-IA copies); labels dropped by LS: "
        f"{int(result.dropped.sum())}"
    )
    typer.echo(f"wrote {out}")

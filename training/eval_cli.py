"""`avaserve eval`: AVA frame-mAP@0.5IOU of a results CSV against ground truth.

The command is built in two steps so that later options can be added without changing
the existing ones: `_resolve_inputs` turns the options into (ground truth rows,
detection rows, label map, excluded keyframes) -- today from CSV files; a later
``--checkpoint/--data/--split/--boxes`` branch will produce detections by running a
model and read GT from a dataset directory -- and `_report` prints the table and the
last line ``mAP@0.5IOU: <value>``, which scripts parse.

Nothing heavy is imported at module level (only typer), so ``avaserve --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from models.ava import LabelMap
    from training.ava_data import AnnotationRow, DetectionRow, KeyframeKey
    from training.evaluation import EvalResult

__all__ = ["eval_command", "register"]


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the ``avaserve`` app."""
    app.command("eval", help=eval_command.__doc__)(eval_command)


def eval_command(
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="Ground-truth AVA CSV (video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]).",
    ),
    detections: Path | None = typer.Option(
        None,
        "--detections",
        help="Results CSV in the official format video_id,timestamp,x1,y1,x2,y2,action_id,score.",
    ),
    label_map: Path = typer.Option(
        ..., "--label-map", help="Label map .pbtxt; only its classes are evaluated."
    ),
    excluded: Path | None = typer.Option(
        None, "--excluded", help="Excluded timestamps CSV (video_id,timestamp)."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the per-class results to this JSON file."
    ),
    max_per_keyframe: int = typer.Option(
        50,
        "--max-per-keyframe",
        help="Keep the N best-scoring detections per keyframe (the official evaluator: 50; "
        "0 = no cap).",
    ),
) -> None:
    """Frame-mAP at IoU 0.5 with the ActivityNet AVA protocol. Last line: mAP@0.5IOU: <value>."""
    from models.ava import AvaFormatError

    try:
        gt_rows, det_rows, labels, excluded_keys = _resolve_inputs(
            gt=gt, detections=detections, label_map=label_map, excluded=excluded
        )
    except AvaFormatError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None

    from training.evaluation import evaluate_frame_map

    result = evaluate_frame_map(
        gt_rows, det_rows, labels, excluded_keys, max_detections_per_keyframe=max_per_keyframe
    )
    _report(result, json_out)


def _resolve_inputs(
    *, gt: Path | None, detections: Path | None, label_map: Path, excluded: Path | None
) -> tuple[list[AnnotationRow], list[DetectionRow], LabelMap, set[KeyframeKey]]:
    """Read what the options name. Raises AvaFormatError with file/line/field on bad input."""
    from models.ava import read_label_map_pbtxt
    from training.ava_data import read_annotations, read_excluded_timestamps, read_results

    if gt is None:
        raise typer.BadParameter("give the ground truth with --gt GT.csv", param_hint="--gt")
    if detections is None:
        raise typer.BadParameter(
            "give the results with --detections DET.csv", param_hint="--detections"
        )
    labels = read_label_map_pbtxt(label_map)
    # The official evaluator ignores rows of classes outside the label map (e.g. the
    # 20 AVA classes the challenge does not score), on both sides.
    gt_rows = read_annotations(gt, labels, unknown_classes="skip")
    det_rows = read_results(detections, labels, unknown_classes="skip")
    return gt_rows, det_rows, labels, read_excluded_timestamps(excluded)


def _report(result: EvalResult, json_out: Path | None) -> None:
    """Per-class table, optional JSON, and the mAP line last."""
    import json
    import math

    from rich.console import Console
    from rich.table import Table

    from training.evaluation import format_map_line

    table = Table(title="AVA frame-AP@0.5IOU per class", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("AP", justify="right")
    table.add_column("GT", justify="right")
    table.add_column("det", justify="right")
    for c in result.classes:
        ap = "no GT" if math.isnan(c.ap) else f"{c.ap:.4f}"
        table.add_row(str(c.class_id), c.name, ap, str(c.num_gt), str(c.num_detections))
    console = Console(soft_wrap=False)
    console.print(table)
    missing = result.classes_without_gt
    if missing:
        console.print(
            f"{len(missing)} of {len(result.classes)} classes have no ground truth and are "
            "left out of the mean."
        )
    console.print(
        f"keyframes: {result.num_gt_keyframes} with GT, {result.num_detection_keyframes} with "
        f"detections; excluded {result.num_excluded_gt_keyframes} GT / "
        f"{result.num_excluded_detection_keyframes} detection keyframes; "
        f"{result.num_capped_detections} detections over the per-keyframe cap",
        highlight=False,
    )
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    # Plain echo (not rich) so the line is exact and always last.
    typer.echo(format_map_line(result))

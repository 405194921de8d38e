"""`avaserve eval`: AVA frame-mAP@0.5IOU of a results CSV against ground truth, or of a
model run over a dataset split.

Two modes share the report:

* CSV mode (``--gt --detections --label-map [--strict]``): `training.eval_csv` reads the
  files as the official evaluator does (``--strict``: avaserve's validating readers);
* model mode (``--checkpoint CKPT [--checkpoint CKPT2 ...] --data DIR --split val
  --boxes gt|detector|FILE [--tta] [--sweep]``): `_model_eval` runs the checkpoint(s)
  through `training.run_eval` (multi-scale + flip test-time augmentation, score-averaging
  ensembles, a detector-threshold sweep) and scores the results.

`_report` prints the table and the last line ``mAP@0.5IOU: <value>``, which scripts
parse; with ``--sweep`` the table of thresholds comes first and the best threshold's
mAP line is last.

Nothing heavy is imported at module level (only typer), so ``avaserve --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from core.ava import LabelMap
    from training.eval_csv import EvalInputs
    from training.evaluation import EvalResult

__all__ = ["eval_command", "register"]


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the ``avaserve`` app."""
    app.command("eval", help=eval_command.__doc__)(eval_command)


def eval_command(
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="Ground-truth AVA CSV (video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]; "
        "video_id,timestamp lists a keyframe with no actions).",
    ),
    detections: Path | None = typer.Option(
        None,
        "--detections",
        help="Results CSV in the official format video_id,timestamp,x1,y1,x2,y2,action_id,score.",
    ),
    label_map: Path | None = typer.Option(
        None,
        "--label-map",
        help="Label map .pbtxt; only its classes are evaluated. With --data it defaults to "
        "DATA/annotations/label_map.pbtxt.",
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
    checkpoint: list[Path] | None = typer.Option(
        None,
        "--checkpoint",
        help="Run this model checkpoint over --data/--split instead of reading --detections. "
        "Repeat for an ensemble (probabilities averaged).",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset directory (a world or an AVA copy) for --checkpoint."
    ),
    split: str = typer.Option("val", "--split", help="Split to evaluate (train or val)."),
    boxes: str = typer.Option(
        "gt",
        "--boxes",
        help="Person boxes: gt, detector (needs --detector) or a proposals CSV "
        "(video_id,timestamp,x1,y1,x2,y2,score).",
    ),
    detector: Path | None = typer.Option(
        None, "--detector", help="Person-detector ONNX graph for --boxes detector."
    ),
    min_score: float = typer.Option(
        0.0,
        "--min-score",
        help="Drop boxes scoring below this (reports: 0.8 / 0.85; pick it with --sweep).",
    ),
    tta: bool = typer.Option(
        False,
        "--tta",
        help="Test-time augmentation: horizontal flip and three short sides (the model's "
        "short side x 224/256, 1, 320/256 -- 224/256/320 for a 256-px model).",
    ),
    scales: str | None = typer.Option(
        None,
        "--scales",
        help="Comma-separated short sides for multi-scale testing, e.g. 224,256,320.",
    ),
    sweep: bool = typer.Option(
        False,
        "--sweep",
        help="Print mAP at detector-score thresholds 0.0..0.9, then the best one (last line).",
    ),
    bank: Path | None = typer.Option(
        None,
        "--bank",
        help="Feature bank for a stage-2 model (BANKDIR from extract-bank; its SPLIT folder "
        "is read). Default: the bank the checkpoint was trained with, same split.",
    ),
    results_out: Path | None = typer.Option(
        None, "--results-out", help="With --checkpoint: also write the results CSV here."
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Refuse rows the AVA v2 format does not allow (2-column rows, rows without a "
        "score, non-whole-second timestamps, boxes outside [0,1] or with x2<=x1 or y2<=y1) "
        "instead of reading them as the official evaluator does.",
    ),
) -> None:
    """Frame-mAP at IoU 0.5 with the ActivityNet AVA protocol. Last line: mAP@0.5IOU: <value>."""
    from core.ava import AvaFormatError

    if checkpoint:
        _model_eval(
            checkpoints=checkpoint,
            data=data,
            split=split,
            boxes=boxes,
            detector=detector,
            min_score=min_score,
            tta=tta,
            scales=scales,
            sweep=sweep,
            bank=bank,
            results_out=results_out,
            json_out=json_out,
        )
        return
    if label_map is None:
        raise typer.BadParameter("give the label map with --label-map", param_hint="--label-map")
    from training.evaluation import evaluate_tables

    try:
        labels, inputs = _resolve_inputs(
            gt=gt,
            detections=detections,
            label_map=label_map,
            excluded=excluded,
            strict=strict,
            max_per_keyframe=max_per_keyframe,
        )
        result = evaluate_tables(inputs.gt, inputs.detections, labels, inputs.excluded)
    except AvaFormatError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _report(result, json_out)


def _tta_scales(short_side: int) -> list[int]:
    # Report A tests a 256-px model at 224/256/320; other presets keep those ratios.
    return sorted({round(short_side * 224 / 256), short_side, round(short_side * 320 / 256)})


def _model_eval(
    *,
    checkpoints: list[Path],
    data: Path | None,
    split: str,
    boxes: str,
    detector: Path | None,
    min_score: float,
    tta: bool,
    scales: str | None,
    sweep: bool,
    bank: Path | None,
    results_out: Path | None,
    json_out: Path | None,
) -> None:
    """--checkpoint mode: predict with the model(s), then score like the CSV mode."""
    if data is None:
        raise typer.BadParameter("--checkpoint needs --data DIR", param_hint="--data")
    for c in checkpoints:
        if not c.is_file():
            raise typer.BadParameter(f"{c} is not a file", param_hint="--checkpoint")
    from rich.progress import Progress

    from core.ava import AvaFormatError
    from training.run_eval import long_term_ids, run_evaluation, sweep_thresholds

    scale_list: list[int] | None = None
    if scales:
        try:
            scale_list = [int(v) for v in scales.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(f"{scales!r}: expected e.g. 224,256,320") from None
    elif tta:
        from core.preset_info import preset_info
        from models.checkpoints import load_checkpoint

        first = load_checkpoint(checkpoints[0])
        short = int(
            first.preset_overrides.get("short_side") or preset_info(first.preset).short_side
        )
        scale_list = _tta_scales(short)
    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("evaluating", total=None)
            result, predictions, class_ids = run_evaluation(
                checkpoints,
                data,
                split,
                boxes=boxes,
                detector=detector,
                min_score=0.0 if sweep else min_score,
                scales=scale_list,
                flip=tta,
                bank_dir=bank,
                results_csv=results_out,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (AvaFormatError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    long_term = long_term_ids(data)
    if not sweep:
        _report(result, json_out, long_term=long_term)
        return
    table = sweep_thresholds(predictions, class_ids, data, split)
    typer.echo("detector threshold sweep (boxes scoring below the threshold dropped)")
    typer.echo("threshold  mAP@0.5IOU")
    for threshold, res in table:
        typer.echo(f"{threshold:9.1f}  {res.mean_ap:.4f}")
    best_t, best = max(table, key=lambda tr: tr[1].mean_ap)
    typer.echo(f"best threshold: {best_t:.1f}")
    from training.evaluation import format_map_line

    typer.echo(format_map_line(best))


def _resolve_inputs(
    *,
    gt: Path | None,
    detections: Path | None,
    label_map: Path,
    excluded: Path | None,
    strict: bool,
    max_per_keyframe: int,
) -> tuple[LabelMap, EvalInputs]:
    """Read what the options name. Raises AvaFormatError with file/line/field on bad input."""
    from core.ava import read_label_map_pbtxt
    from training.eval_csv import read_eval_inputs

    if gt is None:
        raise typer.BadParameter("give the ground truth with --gt GT.csv", param_hint="--gt")
    if detections is None:
        raise typer.BadParameter(
            "give the results with --detections DET.csv", param_hint="--detections"
        )
    labels = read_label_map_pbtxt(label_map)
    inputs = read_eval_inputs(
        gt,
        detections,
        labels,
        excluded,
        strict=strict,
        max_detections_per_keyframe=max_per_keyframe,
    )
    return labels, inputs


def _report(result: EvalResult, json_out: Path | None, *, long_term: tuple[int, ...] = ()) -> None:
    """Per-class table, optional JSON, the long-term classes' mean AP, and the mAP line last."""
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
        f"detections scored; excluded {result.num_excluded_gt_keyframes} GT / "
        f"{result.num_excluded_detection_keyframes} detection keyframes",
        highlight=False,
    )
    console.print(_rules_table(result), highlight=False)
    if long_term:
        aps = {c.class_id: c.ap for c in result.classes}
        parts = [f"{i}: {aps[i]:.4f}" for i in long_term if i in aps and not math.isnan(aps[i])]
        values = [aps[i] for i in long_term if i in aps and not math.isnan(aps[i])]
        if values:
            typer.echo(
                f"long-term classes AP ({', '.join(parts)}); mean {sum(values) / len(values):.4f}"
            )
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    # Plain echo (not rich) so the line is exact and always last.
    typer.echo(format_map_line(result))


def _rules_table(result: EvalResult) -> Table:
    """How many rows each protocol rule touched (training.evaluation.RuleCounts)."""
    from rich.table import Table

    r = result.rules
    cap = result.max_detections_per_keyframe
    rows = [
        ("class not in the label map (dropped)", r.gt_unknown_class, r.det_unknown_class),
        (
            "video_id,timestamp row (keyframe listed, no box)",
            r.gt_empty_keyframe,
            r.det_empty_keyframe,
        ),
        (
            f"over {cap} per keyframe (dropped)" if cap else "per-keyframe cap (off)",
            None,
            r.det_over_cap,
        ),
        ("excluded keyframe (dropped)", r.gt_excluded, r.det_excluded),
        (
            f"keyframe not listed in the GT (ignored; {r.unlisted_keyframes} keyframes)",
            None,
            r.det_unlisted_keyframe,
        ),
        ("box with x2<=x1 or y2<=y1 (dropped)", None, r.det_invalid_box),
        ("no score column (scored 1.0)", None, r.det_without_score),
        ("box outside [0,1] (used as given)", r.gt_outside_frame, r.det_outside_frame),
    ]
    table = Table(title="protocol rules: rows each touched", title_justify="left")
    table.add_column("rule")
    table.add_column("GT", justify="right")
    table.add_column("detections", justify="right")
    for name, gt_n, det_n in rows:
        table.add_row(name, "-" if gt_n is None else str(gt_n), str(det_n))
    return table

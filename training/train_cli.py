"""`avaserve train`, `avaserve extract-bank` and `avaserve demo-recipe`.

Heavy imports (torch, PyAV) happen inside the command bodies so `avaserve --help` stays
instant. Distributed training: start `avaserve train` under ``torchrun --nproc_per_node N``
(the loop reads torchrun's environment variables; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``train``, ``extract-bank`` and ``demo-recipe`` to the ``avaserve`` app."""
    app.command("train", help=train_command.__doc__)(train_command)
    app.command("extract-bank", help=extract_bank_command.__doc__)(extract_bank_command)
    app.command("demo-recipe", help=demo_recipe_command.__doc__)(demo_recipe_command)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def train_command(
    data: Path = typer.Argument(..., help="Dataset directory (a world or an AVA-format copy)."),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoints, metrics.csv."),
    stage: str = typer.Option(
        "stage1",
        "--stage",
        help="stage1: SlowFast + RoI head, no bank. stage2: LFB + global head reading "
        "--bank. classify: clip classification pre-training (DATA/classification/train.csv, "
        "a path,label CSV, or a folder per class).",
    ),
    recipe: str = typer.Option(
        "tiny",
        "--recipe",
        help="Starting settings: tiny (the tiny preset on a world, 2 CPU cores) or ava-r50 "
        "(report A's AVA fine-tune / Kinetics pre-training). Options below override it.",
    ),
    iterations: int | None = typer.Option(None, "--iterations", min=1, help="SGD iterations."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Global batch in clips (split over DDP processes)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Base learning rate lr0."),
    schedule: str | None = typer.Option(
        None, "--schedule", help="cosine (warm-up + half-cosine) or steps (/10 at --steps)."
    ),
    steps: str | None = typer.Option(
        None, "--steps", help="Comma-separated iterations where lr drops /10 (steps schedule)."
    ),
    warmup: int | None = typer.Option(None, "--warmup", min=0, help="Linear warm-up iterations."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="SGD weight decay."),
    freeze_bn: bool | None = typer.Option(
        None, "--freeze-bn/--no-freeze-bn", help="Freeze BatchNorm (fine-tuning; DDP exactness)."
    ),
    balance: bool | None = typer.Option(
        None, "--balance/--no-balance", help="CP-IA then label subsampling (report B)."
    ),
    bank: Path | None = typer.Option(
        None, "--bank", help="Stage 2: BANKDIR written by extract-bank (its train/ is read)."
    ),
    train_backbone: bool | None = typer.Option(
        None,
        "--train-backbone/--frozen-backbone",
        help="Stage 2: also train the backbone (report A), or learn the head only from the "
        "bank's features (fast on a CPU; the tiny recipe's default).",
    ),
    bank_time: bool | None = typer.Option(
        None,
        "--bank-time/--no-bank-time",
        help="Stage 2: time-aware LFB (each bank slot carries its offset from the keyframe, "
        "so 'done 20 s ago' differs from 'done 20 s ahead'); the tiny recipe's default.",
    ),
    bank_recall: bool | None = typer.Option(
        None,
        "--bank-recall/--no-bank-recall",
        help="Stage 2: add the LFB's recall path (did this person do class c long ago / "
        "recently / now / ahead? a max over their own bank rows, with an auxiliary loss); "
        "needs a bank written with --appearance.",
    ),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Initialise from this checkpoint (stage 1 for stage 2, or a classify "
        "checkpoint's backbone). Missing/unexpected keys are printed.",
    ),
    short_side: int | None = typer.Option(
        None, "--short-side", min=16, help="Training short side (overrides the preset's)."
    ),
    frames: int | None = typer.Option(
        None, "--frames", min=1, help="Fast-pathway frames per clip (overrides the preset's)."
    ),
    preset: str | None = typer.Option(None, "--preset", help="Model preset name."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (init, data order, augmentation)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from OUT/last.pt if it exists."
    ),
) -> None:
    """Train the action model (stage 1 / stage 2) or pre-train its backbone (classify)."""
    from training.config import ava_r50_recipe, pretrain_recipe, tiny_world_recipe

    if stage not in ("stage1", "stage2", "classify"):
        _fail(f"--stage {stage!r}: use stage1, stage2 or classify")
    changes: dict[str, Any] = {}
    for name, value in (
        ("iterations", iterations),
        ("batch_size", batch_size),
        ("lr", lr),
        ("schedule", schedule),
        ("warmup_iters", warmup),
        ("weight_decay", weight_decay),
        ("freeze_bn", freeze_bn),
        ("balance", balance),
        ("train_backbone", train_backbone),
        ("bank_time", bank_time),
        ("bank_recall", bank_recall),
        ("seed", seed),
        ("threads", threads),
        ("preset", preset),
    ):
        if value is not None:
            changes[name] = value
    if steps:
        try:
            changes["lr_steps"] = tuple(int(v) for v in steps.split(","))
        except ValueError:
            _fail(f"--steps {steps!r}: expected comma-separated integers, e.g. 16000,21000")
    if bank is not None:
        changes["bank_dir"] = str(bank)
    if init is not None:
        if not init.is_file():
            _fail(f"--init {init}: no such checkpoint")
        changes["init_checkpoint"] = str(init)
    try:
        if recipe == "tiny":
            config = tiny_world_recipe(stage)  # type: ignore[arg-type]
        elif recipe == "ava-r50":
            config = pretrain_recipe() if stage == "classify" else ava_r50_recipe(stage)  # type: ignore[arg-type]
        else:
            _fail(f"--recipe {recipe!r}: use tiny or ava-r50")
        overrides = dict(config.preset_overrides)
        if init is not None and stage == "stage2":
            # The backbone must see inputs as it did in stage 1: take that run's settings.
            overrides.update(_init_overrides(init))
        if short_side is not None:
            overrides["short_side"] = short_side
        if frames is not None:
            overrides["num_frames"] = frames
        if "warmup_iters" not in changes and "iterations" in changes:
            changes["warmup_iters"] = min(config.warmup_iters, changes["iterations"])
        config = dataclasses.replace(config, preset_overrides=overrides, **changes)
    except ValueError as exc:
        _fail(str(exc))
    if (
        config.stage == "stage2"
        and config.bank_dir
        and not (Path(config.bank_dir) / "train").is_dir()
    ):
        _fail(
            f"--bank {config.bank_dir}: no train/ folder; run avaserve extract-bank --split train"
        )
    if not data.is_dir() and config.stage != "classify":
        _fail(f"{data} is not a dataset directory")

    from training.train import train

    try:
        final = train(config, data, out, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if config.stage == "classify":
        from training.pretrain import evaluate_classifier, format_result

        val = data / "classification" / "val.csv" if data.is_dir() else None
        if val is not None and val.is_file():
            typer.echo(format_result(evaluate_classifier(final, val)))
    typer.echo(f"checkpoint: {final}")


def _init_overrides(path: Path) -> dict[str, Any]:
    from models.checkpoints import CHECKPOINT_FORMAT, read_checkpoint_file

    state = read_checkpoint_file(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state.get("training") or {}
    raw = state.get("config", {}) if isinstance(state, dict) else {}
    keep = ("short_side", "num_frames", "alpha", "sampling_rate")
    return {k: v for k, v in raw.get("preset_overrides", {}).items() if k in keep}


def extract_bank_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Stage-1 checkpoint."),
    data: Path = typer.Option(..., "--data", help="Dataset directory."),
    split: str = typer.Option("train", "--split", help="Split whose keyframes fill the bank."),
    out: Path = typer.Option(..., "--out", help="BANKDIR; writes BANKDIR/SPLIT/*.npz."),
    boxes: str = typer.Option(
        "gt",
        "--boxes",
        help="gt (training, and oracle-box testing), detector (needs --detector) or a "
        "proposals CSV. Use the same source the evaluation will use.",
    ),
    detector: Path | None = typer.Option(None, "--detector", help="Person-detector ONNX."),
    min_score: float = typer.Option(0.0, "--min-score", help="Drop boxes scoring below this."),
    persons: int = typer.Option(5, "--persons", min=1, help="Persons kept per second (5)."),
    appearance: bool = typer.Option(
        False,
        "--appearance/--no-appearance",
        help="Append each box's colour cells to its features (same-person cue for the LFB: "
        "a stage-2 model trained on this bank learns who a row was). The tiny recipe's "
        "default; Wu et al.'s bank has none.",
    ),
) -> None:
    """Write per-video, per-second, per-person features of a stage-1 model (the LFB)."""
    if not checkpoint.is_file():
        _fail(f"--checkpoint {checkpoint}: no such file")
    import time

    from rich.progress import Progress

    from training.bank_extract import extract_bank
    from training.boxes import resolve_boxes
    from training.train import load_split, load_trained_model

    try:
        model, config, _ = load_trained_model(checkpoint)
        if appearance and model.appearance is None:
            from models.roi import DEFAULT_APPEARANCE_GRID

            model.enable_appearance(DEFAULT_APPEARANCE_GRID)
        split_data = load_split(data, split)
        proposals = resolve_boxes(
            boxes,
            keyframes=split_data.keyframes,
            data_dir=data,
            info=split_data.info,
            detector=detector,
            min_score=min_score,
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    ids = {kf.key: kf.person_ids for kf in split_data.keyframes} if boxes == "gt" else None
    start = time.perf_counter()
    with Progress() as bar:
        task = bar.add_task(f"bank {split}", total=len(proposals))
        folder = extract_bank(
            model,
            data,
            split,
            out,
            proposals=proposals,
            person_ids=ids,
            persons_per_second=persons,
            meta={"checkpoint": str(checkpoint), "boxes": boxes, "split": split},
            progress=lambda done, total: bar.update(task, completed=done),
        )
    typer.echo(f"bank: {folder} ({len(proposals)} keyframes, {time.perf_counter() - start:.1f} s)")


def demo_recipe_command(
    out: Path = typer.Argument(..., help="Directory for the world, runs, banks and results."),
    mini: bool = typer.Option(
        False, "--mini", help="CI miniature: a tiny world and a few iterations (< 4 min)."
    ),
    seed: int = typer.Option(0, "--seed", help="World and training seed."),
) -> None:
    """World -> detector -> stage 1 -> bank -> stage 2 -> evaluation, on a CPU (<= 30 min)."""
    from training.recipes import demo_recipe

    try:
        summary = demo_recipe(out, mini=mini, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    for line in summary.lines():
        typer.echo(line)

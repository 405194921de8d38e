"""Train the person detector on a dataset's keyframe boxes (issue 4, item 6).

A plain loop, top to bottom: sample a batch of keyframes, augment (random scale and
placement on the letterbox canvas, flip, colour), encode CenterNet targets, one AdamW
step under a warm-up + half-cosine schedule, log. At the end: checkpoint, and person
AP@0.5 on the val split when the dataset has one.

Loss (TTFNet, Liu et al. 2020): CenterNet's penalty-reduced pixel-wise focal loss on the
heatmap (alpha 2, beta 4; Zhou et al. 2019, eq. 1) divided by the number of people, plus
``GIOU_WEIGHT`` times the Gaussian-weighted GIoU loss of the boxes regressed at the cells
around each centre (each person's weights sum to 1, so the box term is a per-person mean).

Why AdamW and not the action model's SGD: the detector starts from scratch (no
pre-trained backbone exists here) and must converge in a few CPU minutes; Adam reaches a
good AP in far fewer iterations on this small network.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.detector.checkpoint import CHECKPOINT_NAME, save_detector_checkpoint
from training.detector.data import KeyframeImage, augment, load_keyframe_images, stack_batch
from training.detector.model import (
    DetectorConfig,
    PersonDetectorNet,
    detector_spec,
    encode_targets,
    ltrb_to_boxes,
)
from training.schedule import set_lr, warmup_cosine_lr

__all__ = [
    "DetectorTrainConfig",
    "TrainResult",
    "detector_loss",
    "train_detector",
]

StrPath = str | PathLike[str]
LOG_NAME = "detector_log.csv"


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Training settings; every default is the demo recipe's."""

    iterations: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 60
    seed: int = 0
    # Frames on each side of a keyframe used with the keyframe's boxes: 3x the views for
    # free; people move ~1-2 px per frame at 15 fps, well inside AP@0.5's tolerance.
    context_frames: int = 1
    # Scale jitter on top of the letterbox scale; the world's people are 65-150 px tall.
    scale_range: tuple[float, float] = (0.7, 1.3)
    log_every: int = 20
    # Write OUT/detector.pt every this many iterations too (0 = only at the end), so a
    # long run can be evaluated while it trains.
    checkpoint_every: int = 250
    # Torch intra-op threads (0 = torch's default, one per core).
    threads: int = 0
    model: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    log: Path
    seconds: float
    final_loss: float
    val_ap: float | None
    # Best-F1 score threshold on val (None without a val split); export's default.
    score_threshold: float | None = None


def focal_heat_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed (the caller normalises).

    logits, target (B, 1, h, w); target is 1 at centres and a Gaussian around them.
    """
    # logsigmoid keeps log(p) and log(1 - p) finite where a clamp on p would zero the grad.
    log_p = torch.nn.functional.logsigmoid(logits)
    log_1mp = torch.nn.functional.logsigmoid(-logits)
    p = log_p.exp()
    pos = target.eq(1).to(logits.dtype)
    pos_loss = -((1 - p) ** 2) * log_p * pos
    neg_loss = -((1 - target) ** 4) * p**2 * log_1mp * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()


# TTFNet's weight of the box term against the heatmap term.
GIOU_WEIGHT = 5.0


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of paired boxes (N, 4) xyxy -> (N,)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])) * (
        torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    )
    eps = 1e-6
    return inter / (union + eps) - (hull - union) / (hull + eps)


def detector_loss(
    outputs: tuple[torch.Tensor, torch.Tensor],
    targets: dict[str, torch.Tensor],
    *,
    stride: int,
) -> dict[str, torch.Tensor]:
    """Heat focal / people + ``GIOU_WEIGHT`` * weighted GIoU loss / people."""
    heat, ltrb = outputs
    weight = targets["weight"]  # (B, 1, h, w)
    n = targets["heat"].eq(1).sum().to(heat.dtype).clamp(min=1.0)
    heat_loss = focal_heat_loss(heat, targets["heat"]) / n
    cells = weight[:, 0] > 0  # (B, h, w)
    pred = ltrb_to_boxes(ltrb, stride).permute(0, 2, 3, 1)[cells]  # (M, 4)
    gt = targets["box"].permute(0, 2, 3, 1)[cells]  # (M, 4)
    w = weight[:, 0][cells]  # (M,)
    box_loss = GIOU_WEIGHT * (w * (1 - giou(pred, gt))).sum() / weight.sum().clamp(min=1.0)
    return {"loss": heat_loss + box_loss, "heat": heat_loss, "box": box_loss}


def _targets(boxes: list[np.ndarray], config: DetectorConfig) -> dict[str, torch.Tensor]:
    per = [encode_targets(b, config.out_hw, config.stride) for b in boxes]
    return {k: torch.from_numpy(np.stack([p[k] for p in per])) for k in per[0]}


def train_detector(
    data_dir: StrPath,
    out_dir: StrPath,
    *,
    config: DetectorTrainConfig | None = None,
    iterations: int | None = None,
    seed: int | None = None,
    train_items: list[KeyframeImage] | None = None,
    val_items: list[KeyframeImage] | None = None,
    progress: bool = True,
    evaluate: bool = True,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train on ``data_dir``'s train split; write ``OUT/detector.pt`` and ``OUT/detector_log.csv``.

    ``iterations`` / ``seed`` override the config's. ``train_items`` / ``val_items`` skip
    decoding (tests pass tiny in-memory sets). With ``evaluate`` and a val split, the
    person AP@0.5 on val goes into the checkpoint's metrics and the result.
    """
    cfg = config or DetectorTrainConfig()
    overrides: dict[str, Any] = {}
    if iterations is not None:
        overrides["iterations"] = iterations
    if seed is not None:
        overrides["seed"] = seed
    if overrides:
        cfg = replace(cfg, **overrides)
    if cfg.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {cfg.iterations}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    start = time.perf_counter()
    items = train_items
    if items is None:
        items = load_keyframe_images(data_dir, "train", context_frames=cfg.context_frames)
    if not items:
        raise ValueError(f"{data_dir}: the train split has no labelled keyframes")
    model = PersonDetectorNet(cfg.model)
    spec = detector_spec(cfg.model)
    # No weight decay on BatchNorm and biases (the usual practice; decaying BN scales
    # fights the normalisation).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    log_path = out / LOG_NAME
    log_file = log_path.open("w", newline="", encoding="utf-8")
    writer = csv.DictWriter(
        log_file, fieldnames=["iteration", "lr", "loss", "heat", "box", "seconds"]
    )
    writer.writeheader()
    bar = _progress(cfg.iterations) if progress else None
    running: dict[str, float] = {}
    model.train()
    try:
        for it in range(cfg.iterations):
            lr = warmup_cosine_lr(
                it,
                lr0=cfg.lr,
                it_max=cfg.iterations,
                warmup_iters=min(cfg.warmup_iters, cfg.iterations),
                warmup_start_lr=cfg.lr * 0.01,
            )
            set_lr(optimizer, lr)
            idx = rng.integers(0, len(items), size=cfg.batch_size)
            images, boxes = stack_batch(
                [augment(items[i], spec, rng, scale_range=cfg.scale_range) for i in idx]
            )
            targets = _targets(boxes, cfg.model)
            losses = detector_loss(
                model(torch.from_numpy(images)), targets, stride=cfg.model.stride
            )
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for k, v in losses.items():
                # Exponential moving average: the per-batch loss is noisy at batch 16.
                x = float(v.detach())
                running[k] = x if k not in running else 0.9 * running[k] + 0.1 * x
            if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
                row = {"iteration": it + 1, "lr": lr, **running}
                row["seconds"] = time.perf_counter() - start
                writer.writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                )
                log_file.flush()
                if on_log is not None:
                    on_log({k: float(v) for k, v in row.items()})
            if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
                save_detector_checkpoint(
                    out / CHECKPOINT_NAME, model, iteration=it + 1, train_config=asdict(cfg)
                )
            if bar is not None:
                bar(it + 1, running["loss"])
    finally:
        log_file.close()
        if bar is not None:
            bar(-1, 0.0)
    model.eval()
    metrics: dict[str, Any] = {"train_loss": running["loss"]}
    val_ap: float | None = None
    if evaluate:
        val = val_items
        val_csv = Path(data_dir) / "annotations" / "val.csv"
        if val is None and val_csv.is_file():
            val = load_keyframe_images(data_dir, "val")
        if val:
            ckpt_tmp = save_detector_checkpoint(
                out / CHECKPOINT_NAME, model, iteration=cfg.iterations
            )
            from training.detector.eval import person_ap, run_checkpoint, threshold_sweep

            dets, _ = run_checkpoint(ckpt_tmp, val)
            val_ap = person_ap(dets, val).ap
            metrics["val_person_ap50"] = val_ap
            # The export's default keep threshold: the best F1 on val. The action model's
            # frame-mAP sweep (avaserve eval --sweep) may prefer another; export takes both.
            best = max(threshold_sweep(dets, val), key=lambda r: r["f1"])
            # Below the NMS floor every threshold keeps the same boxes: never pick one there.
            metrics["score_threshold"] = max(best["threshold"], cfg.model.nms_score_threshold)
            metrics["val_precision"], metrics["val_recall"] = best["precision"], best["recall"]
    metrics["seconds"] = time.perf_counter() - start
    ckpt = save_detector_checkpoint(
        out / CHECKPOINT_NAME,
        model,
        iteration=cfg.iterations,
        train_config=asdict(cfg),
        metrics=metrics,
    )
    return TrainResult(
        checkpoint=ckpt,
        log=log_path,
        seconds=float(metrics["seconds"]),
        final_loss=float(running["loss"]),
        val_ap=val_ap,
        score_threshold=metrics.get("score_threshold"),
    )


def _progress(total: int) -> Callable[[int, float], None]:
    """A rich progress bar as a callback ``(done, loss)``; ``done = -1`` closes it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
    task = bar.add_task("detector", total=total)
    bar.start()

    def update(done: int, loss: float) -> None:
        if done < 0:
            bar.stop()
            return
        if math.isfinite(loss):
            bar.update(task, completed=done, description=f"detector loss {loss:.3f}")

    return update

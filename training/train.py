"""The training loop: stage 1 (no bank), stage 2 (LFB + global), read top to bottom.

    setup (seed, threads, DDP from torchrun's env vars)
    data   (keyframes -> entries (CP-IA + LS per epoch) -> ActionDataset | BankFeatureDataset)
    model  (preset, optional init checkpoint, frozen BN, DDP wrapper)
    loop   for it in range(start, iterations):
               lr = schedule(it); batch; loss; backward; SGD step; log; checkpoint

Data-parallel training (DESIGN.md: synchronous SGD) runs under ``torchrun`` with gloo on
CPU or NCCL on GPU; each of the N processes takes ``batch_size / N`` clips, chosen by a
`DistributedSampler` from one seeded permutation, so the N local batches together are
exactly the batch a single process would take. The loss is normalised by the *global*
number of persons (`_global_mean`), so N processes compute the same gradient as one.

Checkpoints hold the model, optimizer, iteration, RNG states and config; resuming from
one continues the same run (the data order is a function of (seed, epoch), and the
batches already used in the current epoch are skipped by index).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from core.ava import LabelMap, read_label_map_pbtxt
from core.ava_data import (
    DatasetInfo,
    KeyframeAnnotation,
    read_dataset_info,
    read_excluded_timestamps,
    read_keyframes,
)
from models.action_model import ActionModel
from models.checkpoints import (
    Checkpoint,
    action_head_options,
    build_model,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from training.config import TrainConfig, config_from_dict
from training.dataset import (
    ActionDataset,
    Augmentation,
    BankFeatureDataset,
    Batch,
    Entry,
    balanced_entries,
    collate,
    collate_feature_batches,
    plain_entries,
)
from training.losses import pose_loss, scene_loss, sigmoid_loss
from training.nonfinite import NonFiniteGuard
from training.schedule import learning_rate, seed_everything, set_lr

__all__ = [
    "DistInfo",
    "build_training_model",
    "freeze_batchnorm",
    "load_init",
    "load_split",
    "load_trained_model",
    "save_training_checkpoint",
    "train",
    "training_model_options",
]


# -- setup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / MASTER_ADDR ...

    One process (no WORLD_SIZE, or 1) runs without a process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitData:
    info: DatasetInfo
    labels: LabelMap
    keyframes: list[KeyframeAnnotation]


def load_split(data_dir: str | Path, split: str) -> SplitData:
    """dataset.json, the label map and the split's keyframes minus excluded ones."""
    data_dir = Path(data_dir)
    info = read_dataset_info(data_dir)
    labels = read_label_map_pbtxt(data_dir / "annotations" / "label_map.pbtxt")
    excluded_path = data_dir / "annotations" / f"excluded_{split}.csv"
    excluded = read_excluded_timestamps(excluded_path if excluded_path.is_file() else None)
    keyframes = read_keyframes(
        data_dir / "annotations" / f"{split}.csv", labels, excluded=excluded, unknown_classes="skip"
    )
    return SplitData(info, labels, keyframes)


def _entries(config: TrainConfig, data: SplitData, epoch: int) -> list[Entry]:
    if config.balance:
        # A new seed per epoch: LS drops different labels each time (report B).
        return balanced_entries(
            data.keyframes,
            data.labels,
            frequent_share=config.ls_frequent_share,
            seed=config.seed + epoch,
        )
    return plain_entries(data.keyframes, data.labels)


def _bank_info(config: TrainConfig) -> tuple[int | None, tuple[int, int] | None]:
    """Stage 2: the bank's feature size and appearance grid (None, None otherwise). The
    model follows the bank: a bank written with ``extract-bank --appearance`` holds box
    colour cells, and the stage-2 model then computes and compares the same ones."""
    if config.stage != "stage2" or config.bank_dir is None:
        return None, None
    from training.bank_extract import load_bank

    bank = load_bank(config.bank_dir, "train")
    return bank.dim, bank.appearance_grid


def _dataset(
    config: TrainConfig, data: SplitData, data_dir: Path, model: ActionModel, epoch: int
) -> Dataset[Any]:
    from training.bank_extract import load_bank
    from training.frame_cache import FrameCache

    entries = _entries(config, data, epoch)
    bank = (
        load_bank(config.bank_dir, "train")
        if config.stage == "stage2" and config.bank_dir
        else None
    )
    if config.stage == "stage2" and not config.train_backbone:
        assert bank is not None
        return BankFeatureDataset(
            data.keyframes,
            entries,
            bank,
            bank_window_seconds=config.bank_window_seconds,
            bank_persons=config.bank_persons_per_second,
        )
    preset = model.preset_info
    assert preset is not None
    short = config.cache_short_side or preset.short_side
    ds = ActionDataset(
        data.keyframes,
        entries,
        FrameCache(data_dir, short, fps=data.info.fps),
        data.info,
        preset,
        augmentation=Augmentation(
            flip=config.flip,
            box_jitter=config.box_jitter,
            color_jitter=config.color_jitter,
            scale_jitter=config.scale_jitter,
        ),
        bank=bank,
        bank_window_seconds=config.bank_window_seconds,
        bank_persons=config.bank_persons_per_second,
        seed=config.seed,
    )
    ds.set_epoch(epoch)
    return ds


def _epoch_batches(
    n: int, per_process: int, epoch: int, seed: int, dist_info: DistInfo
) -> list[list[int]]:
    """This process's index batches for ``epoch``: DistributedSampler's split of one
    seeded permutation; incomplete batches are dropped so every process steps together."""
    sampler: DistributedSampler[int] = DistributedSampler(
        range(n),  # type: ignore[arg-type]
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
        shuffle=True,
        seed=seed,
        drop_last=False,
    )
    sampler.set_epoch(epoch)
    # Rank r takes perm[r::N]; chunking each rank's list by per_process keeps, in every
    # step, exactly the elements a 1-process run takes in that step (perm[s*B:(s+1)*B]).
    idx = list(sampler)
    steps = len(idx) // per_process
    return [idx[s * per_process : (s + 1) * per_process] for s in range(steps)]


# -- model -----------------------------------------------------------------------------------


def training_model_options(
    config: TrainConfig,
    class_ids: tuple[int, ...],
    bank_dim: int | None = None,
    appearance_grid: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Every keyword the preset is built with: the config's overrides, the dataset's classes;
    LFB + global for stage 2 (with the bank's appearance grid, if it has one). Saved in the
    checkpoint, so export and evaluation rebuild exactly this model."""
    head = action_head_options(
        class_ids=class_ids,
        stage2=config.stage == "stage2",
        bank_dim=bank_dim,
        use_global=config.use_global,
        bank_time=config.bank_time,
        bank_window_seconds=config.bank_window_seconds,
        bank_persons_per_second=config.bank_persons_per_second,
        bank_recall=config.bank_recall,
        appearance_grid=appearance_grid,
        bank_dir=config.bank_dir,
    )
    return {**config.preset_overrides, **head}


def build_training_model(
    config: TrainConfig,
    class_ids: tuple[int, ...],
    bank_dim: int | None = None,
    appearance_grid: tuple[int, int] | None = None,
) -> ActionModel:
    """The preset built with `training_model_options`."""
    from models.presets import PRESETS

    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}; known: {sorted(PRESETS)}")
    options = training_model_options(config, class_ids, bank_dim, appearance_grid)
    return PRESETS[config.preset](**options)


@dataclass(frozen=True)
class LoadReport:
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]  # same name, different shape (e.g. a new classifier)

    def summary(self) -> str:
        def short(keys: tuple[str, ...]) -> str:
            return ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "") if keys else "none"

        return (
            f"missing {len(self.missing)} ({short(self.missing)}); unexpected "
            f"{len(self.unexpected)} ({short(self.unexpected)}); shape-mismatched "
            f"{len(self.mismatched)} ({short(self.mismatched)})"
        )


def load_init(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``model`` from a checkpoint's weights (stage 1, or a classification
    backbone from `training.pretrain`); keys whose shapes differ are left at their init.
    A stage-2 LFB's recall row classifier starts as stage 1's person classifier."""
    weights = dict(load_weights(path))
    own = model.state_dict()
    # A stage-1 person classifier (C, D) reads the features the LFB's recall row classifier
    # reads, for the same classes: the recall starts from it (models.lfb, "Recall").
    for name in ("weight", "bias"):
        src, dst = f"classifier.{name}", f"lfb.recall.{name}"
        fits = dst in own and src in weights and weights[src].shape == own[dst].shape
        if fits and dst not in weights:
            weights[dst] = weights[src]
    mismatched = tuple(k for k, v in weights.items() if k in own and own[k].shape != v.shape)
    usable = {k: v for k, v in weights.items() if k not in mismatched}
    result = model.load_state_dict(usable, strict=False)
    return LoadReport(tuple(result.missing_keys), tuple(result.unexpected_keys), mismatched)


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm in eval mode with fixed affine parameters (report A's fine-tuning)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


class _Step(nn.Module):
    """Model + how a batch enters it, so DDP wraps the whole forward.

    Returns (action_logits (K, C), scene_logits (B, C) or (K, C) or None, recall_logits
    (K, C) or None): the last is the LFB recall's row classifier on the persons' own
    features, for its auxiliary loss (`models.lfb`, "Recall").
    """

    def __init__(self, model: ActionModel, from_bank_features: bool) -> None:
        super().__init__()
        self.model = model
        self.from_bank_features = from_bank_features

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.from_bank_features:
            assert batch.person_features is not None and batch.global_features is not None
            assert batch.bank is not None and batch.bank_mask is not None
            action, scene = self.model.head(
                batch.person_features, batch.global_features, batch.bank, batch.bank_mask
            )  # scene logits per person (K, C)
            person = batch.person_features
        else:
            out = self.model(batch.slow, batch.fast, batch.boxes, batch.bank, batch.bank_mask)
            action, scene, person = out.action_logits, out.scene_logits, out.person_features
        lfb = self.model.lfb
        recall = None if lfb is None or lfb.recall is None else lfb.recall_logits(person)
        return action, scene, recall


def _global_mean(value: Tensor, count: float, dist_info: DistInfo) -> Tensor:
    """Turn a local mean over ``count`` items into this process's share of the global mean.

    DDP averages gradients over N processes; ``mean_r * count_r * N / sum(count)``
    averaged over r is ``sum_r(mean_r * count_r) / sum(count)``, the 1-process mean.
    """
    if dist_info.world_size == 1:
        return value
    total = torch.tensor([float(count)])
    dist.all_reduce(total)
    if float(total) == 0:
        return value * 0.0
    return value * (count * dist_info.world_size / float(total))


# The tensors of a `Batch` (the rest is bookkeeping: keys, normalised boxes).
_BATCH_TENSORS = (
    "slow",
    "fast",
    "boxes",
    "targets",
    "scene_targets",
    "bank",
    "bank_mask",
    "person_features",
    "global_features",
)


def _to(batch: Batch, device: torch.device) -> Batch:
    for name in _BATCH_TENSORS:
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value.to(device, non_blocking=True))
    return batch


def _nonfinite_cause(batch: Batch, lr: float) -> str:
    """What likely made a step's loss or gradients non-finite (`NonFiniteGuard`'s error)."""
    bad = [
        name
        for name in _BATCH_TENSORS
        if (value := getattr(batch, name)) is not None
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        return f"the batch's {', '.join(bad)} hold NaN/inf (check the data or the bank)"
    return (
        f"the inputs are finite, so the training diverged: lr {lr:.3g} is likely too high for "
        "this batch size and feature scale (lower lr, lengthen the warm-up or set grad_clip)"
    )


# -- checkpoints -----------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as plain data and tensors (a safe load reads it back)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    keys = np.asarray(keys.numpy() if isinstance(keys, Tensor) else keys, dtype=np.uint32)
    np.random.set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_training_checkpoint(
    path: Path,
    model: ActionModel,
    options: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    iteration: int,
    config: TrainConfig,
    extra: dict[str, Any],
) -> None:
    """The model in the one checkpoint format (`models.checkpoints`), ``options`` being every
    keyword its preset was built with, plus the trainer's state (optimizer, RNGs, config)."""
    save_checkpoint(
        path,
        Checkpoint(
            model=model.state_dict(),
            preset=config.preset,
            preset_overrides=options,
            classes=[int(c) for c in model.class_ids],
            training={
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "config": config.to_dict(),
                "rng": _rng_state(),
                **extra,
            },
        ),
    )


def load_trained_model(path: str | Path) -> tuple[ActionModel, TrainConfig, Checkpoint]:
    """Rebuild the model a checkpoint was trained as, with its weights (eval mode), and the
    config it was trained with."""
    checkpoint = load_checkpoint(path)
    if checkpoint.training is None or not isinstance(checkpoint.training.get("config"), dict):
        raise ValueError(f"{path}: not a training checkpoint (no training config)")
    return build_model(checkpoint), config_from_dict(checkpoint.training["config"]), checkpoint


# -- the loop --------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train per ``config`` on ``data_dir``'s train split; checkpoints in ``out_dir``.

    ``resume``: continue from ``out_dir/last.pt`` if present. ``stop_after``: return after
    that many iterations in total (tests of resuming). Returns the last checkpoint path.
    """
    if config.stage == "classify":
        from training.pretrain import train_classifier

        return train_classifier(
            config, data_dir, out_dir, resume=resume, progress=progress, log=log
        )

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dist_info = init_distributed()
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = torch.device(f"cuda:{dist_info.local_rank}" if torch.cuda.is_available() else "cpu")
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(config.to_json() + "\n", encoding="utf-8")

    # -- data
    data = load_split(data_dir, "train")
    if not data.keyframes:
        raise ValueError(f"{data_dir}/annotations/train.csv has no keyframes to train on")
    class_ids = data.labels.ids
    per_process = config.batch_size // dist_info.world_size
    if per_process < 1 or config.batch_size % dist_info.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} must be a multiple of the "
            f"{dist_info.world_size} processes"
        )

    # -- model (same init on every rank: seeded above; DDP also broadcasts rank 0's)
    bank_dim, appearance_grid = _bank_info(config)
    options = training_model_options(config, class_ids, bank_dim, appearance_grid)
    model = build_training_model(config, class_ids, bank_dim, appearance_grid)
    if config.init_checkpoint:
        report = load_init(model, config.init_checkpoint)
        if dist_info.is_main:
            log(f"init from {config.init_checkpoint}: {report.summary()}")
    model.to(device)
    from_bank = config.stage == "stage2" and not config.train_backbone
    if not config.train_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    if config.freeze_bn:
        freeze_batchnorm(model)  # before DDP, which syncs only parameters that need grads
    step = _Step(model, from_bank)
    if dist_info.world_size > 1:
        step = nn.parallel.DistributedDataParallel(step)  # type: ignore[assignment]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    # The pose term's columns: the softmax group of the model's output activation (none
    # with "sigmoid", where every column, pose included, takes the sigmoid loss).
    pose_mask = model.softmax_mask

    # -- resume
    start = 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        resumed = load_checkpoint(last)
        state = resumed.training or {}
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        _set_rng_state(state["rng"])
        if dist_info.is_main:
            log(f"resumed from {last} at iteration {start}")
    extra = {"class_ids": list(class_ids), "bank_dim": bank_dim, "stage": config.stage}

    # -- the loop
    metrics_path = out_dir / "metrics.csv"
    metrics_file = None
    if dist_info.is_main:
        new_file = start == 0 or not metrics_path.is_file()
        metrics_file = metrics_path.open("w" if new_file else "a", newline="", encoding="utf-8")
        writer = csv.writer(metrics_file)
        if new_file:
            writer.writerow(
                [
                    "iteration",
                    "lr",
                    "loss",
                    "loss_pose",
                    "loss_other",
                    "loss_scene",
                    "seconds",
                    "loss_recall",  # the LFB recall's auxiliary term; 0 without it
                ]
            )
    bar = _progress(config, start, enabled=progress and dist_info.is_main)
    end = config.iterations if stop_after is None else min(config.iterations, stop_after)
    batches = _batch_stream(config, data, data_dir, model, per_process, dist_info, start, from_bank)
    use_amp = device.type == "cuda"
    guard = NonFiniteGuard()
    t0 = time.perf_counter()
    for it in range(start, end):
        lr = learning_rate(config, it)
        set_lr(optimizer, lr)
        model.train()
        if config.freeze_bn:
            freeze_batchnorm(model)
        batch = _to(next(batches), device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            action_logits, scene_logits, recall_logits = step(batch)
        # Each term is a local mean turned into this process's share of the global mean
        # (see _global_mean), so N processes take exactly the 1-process step.
        pose_part, other_part = _person_terms(
            action_logits.float(), batch.targets, pose_mask, config
        )
        n_pose = float((batch.targets[:, pose_mask].sum(1) > 0).sum())
        n_persons = float(batch.targets.shape[0])
        if scene_logits is not None:
            # (B, C) clip-level, or (K, C) per person when the head runs on bank features.
            scene_part = scene_loss(scene_logits.float(), batch.scene_targets)
            n_scene = float(scene_logits.shape[0])
        else:
            scene_part, n_scene = action_logits.sum() * 0.0, 1.0
        loss = (
            config.pose_weight * _global_mean(pose_part, n_pose, dist_info)
            + config.other_weight * _global_mean(other_part, n_persons, dist_info)
            + config.scene_weight * _global_mean(scene_part, n_scene, dist_info)
        )
        recall_part = action_logits.new_zeros(())
        if recall_logits is not None:
            # The recall's row classifier learns what a row shows from the query's labels.
            recall_part = nn.functional.binary_cross_entropy_with_logits(
                recall_logits.float(), batch.targets
            )
            loss = loss + config.recall_weight * _global_mean(recall_part, n_persons, dist_info)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        done = it + 1
        # A non-finite loss or gradient must not reach the weights: skip the step.
        if guard.check(done, loss, params, functools.partial(_nonfinite_cause, batch, lr)):
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
        elif dist_info.is_main:
            log(
                f"{config.stage} iteration {done}: non-finite loss ({float(loss.detach())}) "
                f"or gradient, step skipped ({guard.skipped} so far)"
            )
        loss = loss.detach()
        if dist_info.is_main:
            assert metrics_file is not None
            if done % config.log_every == 0 or done == end:
                csv.writer(metrics_file).writerow(
                    [
                        done,
                        f"{lr:.6g}",
                        f"{float(loss):.5f}",
                        f"{float(pose_part.detach()):.5f}",
                        f"{float(other_part.detach()):.5f}",
                        f"{float(scene_part.detach()):.5f}",
                        f"{time.perf_counter() - t0:.1f}",
                        f"{float(recall_part.detach()):.5f}",
                    ]
                )
                metrics_file.flush()
            if bar is not None:
                bar[0].update(
                    bar[1], advance=1, description=f"{config.stage} loss {float(loss):.3f}"
                )
            if done % config.checkpoint_every == 0 or done == end:
                save_training_checkpoint(last, model, options, optimizer, done, config, extra)
        if dist_info.world_size > 1 and (done % config.checkpoint_every == 0 or done == end):
            dist.barrier()
    if bar is not None:
        bar[0].stop()
    if metrics_file is not None:
        metrics_file.close()
    final = out_dir / "final.pt"
    if dist_info.is_main and end == config.iterations:
        save_training_checkpoint(final, model, options, optimizer, end, config, extra)
        skipped = f" ({guard.skipped} non-finite steps skipped)" if guard.skipped else ""
        log(
            f"{config.stage}: {end - start} iterations in "
            f"{time.perf_counter() - t0:.1f} s -> {final}{skipped}"
        )
    if dist_info.world_size > 1:
        dist.barrier()
    return final if end == config.iterations else last


def _person_terms(
    logits: Tensor, targets: Tensor, pose_mask: Tensor, config: TrainConfig
) -> tuple[Tensor, Tensor]:
    return (
        pose_loss(logits, targets, pose_mask),
        sigmoid_loss(
            logits, targets, pose_mask, kind=config.other_loss, focal_gamma=config.focal_gamma
        ),
    )


def _batch_stream(
    config: TrainConfig,
    data: SplitData,
    data_dir: Path,
    model: ActionModel,
    per_process: int,
    dist_info: DistInfo,
    start: int,
    from_bank: bool,
) -> Iterator[Batch]:
    """Endless batches from iteration ``start`` on; epoch e's order depends on (seed, e)."""
    epoch, skip = 0, start
    while True:
        dataset = _dataset(config, data, data_dir, model, epoch)
        batches = _epoch_batches(len(dataset), per_process, epoch, config.seed, dist_info)  # type: ignore[arg-type]
        if not batches:
            raise ValueError(
                f"{len(dataset)} training items cannot fill one batch of {per_process} per process"  # type: ignore[arg-type]
            )
        if skip >= len(batches):
            skip -= len(batches)
            epoch += 1
            continue
        loader = DataLoader(
            dataset,
            batch_sampler=batches[skip:],
            collate_fn=collate_feature_batches if from_bank else collate,
            num_workers=config.num_workers,
            # Its own generator: creating an iterator must not draw from the global RNG,
            # or a resumed run's dropout masks would differ from an uninterrupted run's.
            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch),
        )
        skip = 0
        yield from loader
        epoch += 1


def _progress(config: TrainConfig, start: int, *, enabled: bool) -> tuple[Any, Any] | None:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    task = bar.add_task(config.stage, total=config.iterations, completed=start)
    bar.start()
    return bar, task


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    return max(1, math.floor(num_items / batch_size))

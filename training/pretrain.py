"""Backbone pre-training as clip classification (report A's Kinetics step, "Task A").

A Kinetics-format dataset is either a CSV of ``path,label`` rows (no header; paths
relative to the CSV; a ``classes.txt`` beside it fixes the class order) or a folder with
one sub-folder of clips per class. The model is the preset's SlowFast backbone with a
pooled classification head::

    slow, fast -> backbone -> global average pool per pathway -> concat (B, D)
               -> dropout (0.5, report A) -> Linear(D, num_classes)

The backbone's parameter names are those of the action model (``backbone.*``), so
`training.train.load_init` initialises stage 1 from this checkpoint with no backbone
key missing. Testing is multi-clip x multi-crop (softmax averaged over
``clips`` temporal positions x ``crops`` spatial crops); the metric is report A's average
of top-1 and top-5 error, with top-1 error printed too.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from core.clips import VIDEO_SUFFIXES, ClipSpec, pack_pathways, preprocess_clip
from training.config import TrainConfig, config_from_dict
from training.frame_cache import VideoFrames, decode_video_file

__all__ = [
    "ClassificationModel",
    "ClipList",
    "ClassifyResult",
    "evaluate_classifier",
    "read_clip_list",
    "train_classifier",
]


@dataclass(frozen=True)
class ClipList:
    """Clips and their class indices; ``classes[i]`` is class ``i``'s name."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]


def read_clip_list(source: str | Path, classes: Sequence[str] | None = None) -> ClipList:
    """A ``path,label`` CSV or a one-folder-per-class directory."""
    source = Path(source)
    rows: list[tuple[Path, str]] = []
    if source.is_dir():
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            for clip in sorted(folder.iterdir()):
                if clip.suffix.lower() in VIDEO_SUFFIXES:
                    rows.append((clip, folder.name))
    elif source.is_file():
        with source.open(newline="", encoding="utf-8") as handle:
            for line, fields in enumerate(csv.reader(handle), 1):
                if not fields:
                    continue
                if len(fields) != 2:
                    raise ValueError(f"{source}:{line}: expected path,label, got {fields}")
                rows.append((source.parent / fields[0].strip(), fields[1].strip()))
        names_file = source.parent / "classes.txt"
        if classes is None and names_file.is_file():
            classes = [
                n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()
            ]
    else:
        raise FileNotFoundError(f"{source}: neither a path,label CSV nor a folder of class folders")
    if not rows:
        raise ValueError(f"{source}: no clips found")
    names = tuple(classes) if classes is not None else tuple(sorted({label for _, label in rows}))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({label for _, label in rows} - set(index))
    if unknown:
        raise ValueError(f"{source}: labels {unknown} are not in the class list {list(names)}")
    return ClipList(tuple(p for p, _ in rows), tuple(index[label] for _, label in rows), names)


class ClassificationModel(nn.Module):
    """SlowFast backbone + pooled linear classifier (see the module docstring)."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, slow: Tensor, fast: Tensor) -> Tensor:
        feats = self.backbone(slow, fast)  # [(B, C_s, T_s, h, w), (B, C_f, T_f, h, w)]
        pooled = torch.cat([f.mean(dim=(2, 3, 4)) for f in feats], dim=1)  # (B, D)
        return self.fc(self.dropout(pooled))  # (B, num_classes)


def build_classifier(config: TrainConfig, num_classes: int) -> tuple[ClassificationModel, Any]:
    """The preset's backbone (built through the action-model preset, so names match)."""
    from models.presets import PRESETS

    action = PRESETS[config.preset](**config.preset_overrides)
    model = ClassificationModel(
        action.backbone, action.feature_dim, num_classes, config.dropout_classify
    )
    return model, action.preset_info


def _clip_tensor(
    video: VideoFrames,
    centre: float,
    spec: ClipSpec,
    info: Any,
    crop_x: float,
    flip: bool,
) -> tuple[Tensor, Tensor]:
    """Square crop of side = short side at horizontal position ``crop_x`` in [0, 1]."""
    clip = video.clip(centre, spec)  # (T, H, W, 3)
    h, w = clip.shape[1:3]
    side = min(h, w)
    x0 = int(round((w - side) * crop_x))
    y0 = (h - side) // 2
    clip = clip[:, y0 : y0 + side, x0 : x0 + side]
    if flip:
        clip = clip[:, :, ::-1]
    chw = preprocess_clip(np.ascontiguousarray(clip), short_side=side, mean=info.mean, std=info.std)
    slow, fast = pack_pathways(chw, info.alpha)
    return torch.from_numpy(slow), torch.from_numpy(fast)


def _duration(video: VideoFrames) -> float:
    return float(video.times[-1]) if video.times.size else 0.0


def _load_all(clips: ClipList, short_side: int) -> list[VideoFrames]:
    return [decode_video_file(p, short_side) for p in clips.paths]


def train_classifier(
    config: TrainConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train clip classification on ``data`` (a dataset dir with classification/train.csv,
    a CSV, or a class-folder dir). Single process. Returns the final checkpoint."""
    from training.schedule import learning_rate, seed_everything, set_lr

    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = read_clip_list(_train_source(Path(data)))
    model, info = build_classifier(config, len(clips.classes))
    spec = ClipSpec.from_preset(info)
    videos = _load_all(clips, config.cache_short_side or info.short_side)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    start = 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        torch.set_rng_state(state["rng"]["torch"])
    rng = random.Random(config.seed * 1_000_003 + start)
    t0 = time.perf_counter()
    metrics = (out_dir / "metrics.csv").open("a" if start else "w", newline="", encoding="utf-8")
    if not start:
        csv.writer(metrics).writerow(["iteration", "lr", "loss", "seconds"])
    for it in range(start, config.iterations):
        lr = learning_rate(config, it)
        set_lr(optimizer, lr)
        model.train()
        slows, fasts, labels = [], [], []
        for _ in range(config.batch_size):
            i = rng.randrange(len(videos))
            centre = rng.uniform(0.0, _duration(videos[i]))
            s, f = _clip_tensor(
                videos[i], centre, spec, info, rng.random(), config.flip and rng.random() < 0.5
            )
            slows.append(s)
            fasts.append(f)
            labels.append(clips.labels[i])
        logits = model(torch.stack(slows), torch.stack(fasts))  # (B, num_classes)
        loss = nn.functional.cross_entropy(logits, torch.tensor(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = it + 1
        if done % config.log_every == 0 or done == config.iterations:
            csv.writer(metrics).writerow(
                [
                    done,
                    f"{lr:.6g}",
                    f"{float(loss.detach()):.5f}",
                    f"{time.perf_counter() - t0:.1f}",
                ]
            )
            metrics.flush()
            if progress:
                log(f"classify {done}/{config.iterations} loss {float(loss):.3f}")
        if done % config.checkpoint_every == 0 or done == config.iterations:
            _save(last, model, optimizer, done, config, clips.classes)
    metrics.close()
    final = out_dir / "final.pt"
    _save(final, model, optimizer, config.iterations, config, clips.classes)
    log(
        f"classify: {config.iterations - start} iterations in "
        f"{time.perf_counter() - t0:.1f} s -> {final}"
    )
    return final


def _train_source(data: Path) -> Path:
    """A dataset dir means its classification/train.csv (the world's variant)."""
    candidate = data / "classification" / "train.csv"
    return candidate if data.is_dir() and candidate.is_file() else data


def _save(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    config: TrainConfig,
    classes: Sequence[str],
) -> None:
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "config": config.to_dict(),
            "classes": list(classes),
            "stage": "classify",
            "rng": {"torch": torch.get_rng_state()},
        },
        path,
    )


@dataclass(frozen=True)
class ClassifyResult:
    top1_error: float
    top5_error: float
    num_clips: int

    @property
    def mean_error(self) -> float:
        """Report A's metric: the average of top-1 and top-5 error."""
        return 0.5 * (self.top1_error + self.top5_error)


def evaluate_classifier(
    checkpoint: str | Path, data: str | Path, *, clips: int = 3, crops: int = 3
) -> ClassifyResult:
    """Multi-clip x multi-crop testing: softmax averaged over ``clips`` evenly spaced
    temporal positions and ``crops`` spatial crops (left, centre, right)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = config_from_dict(state["config"])
    source = Path(data)
    if source.is_dir() and (source / "classification" / "val.csv").is_file():
        source = source / "classification" / "val.csv"
    clip_list = read_clip_list(source, state["classes"])
    model, info = build_classifier(config, len(state["classes"]))
    model.load_state_dict(state["model"])
    model.eval()
    spec = ClipSpec.from_preset(info)
    short = config.cache_short_side or info.short_side
    probs: list[npt.NDArray[np.float32]] = []
    for path in clip_list.paths:
        video = decode_video_file(path, short)
        dur = _duration(video)
        views = [
            _clip_tensor(
                video,
                dur * (c + 0.5) / clips,
                spec,
                info,
                (k / (crops - 1)) if crops > 1 else 0.5,
                False,
            )
            for c in range(clips)
            for k in range(crops)
        ]
        with torch.no_grad():
            logits = model(torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views]))
        probs.append(torch.softmax(logits, dim=1).mean(0).numpy())
    p = np.stack(probs)  # (N, num_classes)
    y = np.asarray(clip_list.labels)
    order = np.argsort(-p, axis=1)
    top1 = float(np.mean(order[:, 0] != y))
    k = min(5, p.shape[1])
    top5 = float(np.mean(~np.any(order[:, :k] == y[:, None], axis=1)))
    return ClassifyResult(top1, top5, len(y))


def format_result(result: ClassifyResult) -> str:
    return (
        f"clips: {result.num_clips}  top-1 error: {100 * result.top1_error:.2f}%  top-5 error: "
        f"{100 * result.top5_error:.2f}%  mean(top-1, top-5) error: {100 * result.mean_error:.2f}%"
    )

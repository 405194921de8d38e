"""The person detector's checkpoint: what `train_detector` writes, what its evaluation and
ONNX export read (a module of its own, so train, eval and export import it and not each
other)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from training.detector.model import DetectorConfig, PersonDetectorNet

__all__ = [
    "CHECKPOINT_NAME",
    "detector_checkpoint_metrics",
    "load_detector_checkpoint",
    "save_detector_checkpoint",
]

StrPath = str | PathLike[str]
CHECKPOINT_NAME = "detector.pt"
_KIND = "avaserve.person_detector"


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=list))


def save_detector_checkpoint(
    path: StrPath,
    model: PersonDetectorNet,
    *,
    iteration: int,
    train_config: Mapping[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """``train_config``: the training settings as a dict (plain data once written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "kind": _KIND,
            "config": model.config.to_dict(),
            "model": model.state_dict(),
            "iteration": iteration,
            "train_config": _jsonable(dict(train_config)) if train_config else None,
            "metrics": metrics or {},
        },
        path,
    )
    return path


def load_detector_checkpoint(path: StrPath) -> PersonDetectorNet:
    """A `PersonDetectorNet` from a checkpoint written by `train_detector` (eval mode)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != _KIND:
        raise ValueError(
            f"{path}: not a person-detector checkpoint (expected the file "
            f"`avaserve train-detector` writes, {CHECKPOINT_NAME})"
        )
    model = PersonDetectorNet(DetectorConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def detector_checkpoint_metrics(path: StrPath) -> dict[str, Any]:
    """The metrics `train_detector` stored (val AP, best-F1 score threshold, time, ...)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    return dict(ckpt.get("metrics") or {}) if isinstance(ckpt, dict) else {}

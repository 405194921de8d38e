"""Our checkpoint format: one ``torch.save`` dict that loads with ``weights_only=True``::

    {"format": "avaserve-checkpoint", "version": 1,
     "model": state_dict,                 # ActionModel.state_dict() (tensors only)
     "preset": "slowfast_r50_ava",        # a name in models.presets.PRESETS
     "preset_overrides": {...},           # keyword overrides of that preset (plain values)
     "classes": [1, 2, ..., 80],          # action ids of the classifier columns
     "source": {...} | None}              # provenance (import format, file, sha256) if any

``PRESETS[preset](**preset_overrides)`` rebuilds the exact module the state dict belongs to
(:func:`build_model`), so a checkpoint is self-describing without pickled code. Public
checkpoints enter through ``models.importers``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.action_model import ActionModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]

StrPath = str | PathLike[str]

CHECKPOINT_FORMAT = "avaserve-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """One of our checkpoints (see the module docstring for the file layout)."""

    model: dict[str, Tensor]
    preset: str
    preset_overrides: dict[str, Any]
    classes: list[int]
    source: dict[str, Any] | None = None


def save_checkpoint(path: StrPath, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` so that :func:`load_checkpoint` reads it with
    ``weights_only=True`` (override values must be plain Python data)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu().contiguous() for k, v in checkpoint.model.items()},
        "preset": checkpoint.preset,
        "preset_overrides": dict(checkpoint.preset_overrides),
        "classes": [int(c) for c in checkpoint.classes],
        "source": checkpoint.source,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)  # never leave a half-written checkpoint under the final name


def load_checkpoint(path: StrPath) -> Checkpoint:
    """Read one of our checkpoints; errors name the file and the missing or bad field."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable avaserve checkpoint ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not an avaserve checkpoint (field 'format' != {CHECKPOINT_FORMAT!r}); "
            "import public checkpoints with `avaserve import-checkpoint`"
        )
    if raw.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {raw.get('version')!r}, this avaserve reads "
            f"{CHECKPOINT_VERSION}"
        )
    for name, kind in (("model", dict), ("preset", str), ("preset_overrides", dict)):
        if not isinstance(raw.get(name), kind):
            raise ValueError(f"{path}: field {name!r} missing or not a {kind.__name__}")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, int) for c in classes):
        raise ValueError(f"{path}: field 'classes' must be a list of action ids")
    return Checkpoint(
        model=raw["model"],
        preset=raw["preset"],
        preset_overrides=raw["preset_overrides"],
        classes=classes,
        source=raw.get("source"),
    )


def build_model(checkpoint: Checkpoint) -> ActionModel:
    """Rebuild the preset with its overrides and load the weights strictly (eval mode)."""
    from models.presets import PRESETS

    if checkpoint.preset not in PRESETS:
        raise ValueError(f"unknown preset {checkpoint.preset!r}; known: {sorted(PRESETS)}")
    model = PRESETS[checkpoint.preset](**checkpoint.preset_overrides)
    model.load_state_dict(checkpoint.model, strict=True)
    columns = list(model.class_ids)
    if columns != list(checkpoint.classes):
        raise ValueError(
            f"checkpoint classes {checkpoint.classes[:5]}... differ from the model's columns "
            f"{columns[:5]}...; set preset_overrides['class_ids']"
        )
    return model.eval()

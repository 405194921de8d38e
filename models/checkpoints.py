"""Our one action-model checkpoint format, and its one loader.

A ``torch.save`` dict that loads with ``torch.load(weights_only=True)``::

    {"format": "avaserve-checkpoint", "version": 2,
     "model": state_dict,                 # ActionModel.state_dict() (tensors only)
     "preset": "slowfast_r50_ava",        # a name in models.presets.PRESETS
     "preset_overrides": {...},           # EVERY keyword the preset was built with (plain
                                          # values): class ids, head, LFB, bank layout
     "classes": [1, 2, ..., 80],          # action ids of the classifier columns
     "source": {...} | None,              # provenance (import format, file, sha256) if any
     "training": {...} | None,            # a trainer's state: "config" (TrainConfig dict),
                                          # "iteration", "optimizer", "rng", "stage", ...
     "bank_model": {...} | None}          # report A's stage-1 model (this same layout)

``PRESETS[preset](**preset_overrides)`` rebuilds the exact module the state dict belongs
to (:func:`build_model`): nothing is inferred from the state dict's key names. Training
(``training.train``) and ``avaserve import-checkpoint`` (``models.importers``) both write
it with :func:`save_checkpoint`; export and evaluation read it with :func:`load_checkpoint`.

Version 1 (imported checkpoints before training wrote this format) has the same fields
less ``training``/``bank_model`` and reads as is. The layout training wrote before
(``{"model", "optimizer", "iteration", "config", "rng", "class_ids", "bank_dim",
"stage"}``, no ``format``) is converted on load: the architecture is rebuilt from its
``config`` with :func:`action_head_options`, the rule training builds with, and a warning
names the file.

Loading is safe by default: ``weights_only=True``, admitting numpy arrays (the RNG state
old training checkpoints hold) and nothing else; ``trust_pickle=True`` unpickles anything
and is only for files you trust.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.ava import POSE_IDS
from core.bank_layout import (
    DEFAULT_WINDOW_SECONDS,
    check_window_seconds,
    file_window,
    slot_offsets,
    window_seconds_of_config,
)
from models.action_model import ActionModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "action_head_options",
    "build_model",
    "load_checkpoint",
    "load_weights",
    "read_checkpoint_file",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

StrPath = str | PathLike[str]

CHECKPOINT_FORMAT = "avaserve-checkpoint"
CHECKPOINT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


@dataclass
class Checkpoint:
    """One of our checkpoints (see the module docstring for the file layout)."""

    model: dict[str, Tensor]
    preset: str
    preset_overrides: dict[str, Any]
    classes: list[int]
    source: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    bank_model: Checkpoint | None = None


def action_head_options(
    *,
    class_ids: Sequence[int],
    stage2: bool,
    bank_dim: int | None = None,
    use_global: bool = True,
    bank_time: bool = False,
    bank_window_seconds: int = DEFAULT_WINDOW_SECONDS,
    bank_persons_per_second: int = 5,
    bank_recall: bool = False,
    appearance_grid: tuple[int, int] | None = None,
    bank_dir: str | None = None,
) -> dict[str, Any]:
    """The head keywords of a trained action model: the dataset's classes; for stage 2 the
    LFB (``bank_dim``-d bank, slot times of the centred ``bank_window_seconds`` window when
    ``bank_time``: 61 -> [t - 30, t + 30]), the global branch, the bank's appearance grid and
    the LFB's recall."""
    head: dict[str, Any] = {"class_ids": tuple(int(c) for c in class_ids), "pose_ids": POSE_IDS}
    if not stage2:
        return head
    head.update(use_lfb=True, lfb_dim_bank=bank_dim, use_global=use_global)
    if bank_time:
        seconds = check_window_seconds(bank_window_seconds)
        origin_s, _ = file_window(seconds)
        head["lfb_slot_offsets"] = slot_offsets(origin_s, seconds, bank_persons_per_second)
    if appearance_grid is not None:
        head["appearance_grid"] = appearance_grid
    if bank_recall:
        if appearance_grid is None:
            raise ValueError(
                f"the LFB's recall (--bank-recall, the tiny recipe's default) needs a bank "
                f"with colour cells: write it with `avaserve extract-bank --appearance`, or "
                f"train with --no-bank-recall (bank {bank_dir})"
            )
        head["lfb_recall_classes"] = len(class_ids)
    return head


def _payload(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu().contiguous() for k, v in checkpoint.model.items()},
        "preset": checkpoint.preset,
        "preset_overrides": dict(checkpoint.preset_overrides),
        "classes": [int(c) for c in checkpoint.classes],
        "source": checkpoint.source,
        "training": checkpoint.training,
        "bank_model": None if checkpoint.bank_model is None else _payload(checkpoint.bank_model),
    }


def save_checkpoint(path: StrPath, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` so that :func:`load_checkpoint` reads it with
    ``weights_only=True`` (override and training values must be plain data and tensors)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(_payload(checkpoint), tmp)
    tmp.replace(out)  # never leave a half-written checkpoint under the final name


# Globals an old training checkpoint holds besides tensors: its numpy RNG state (an ndarray).
_NUMPY_GLOBALS = frozenset(
    {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
    }
)


def read_checkpoint_file(path: StrPath, *, trust_pickle: bool = False) -> Any:
    """The raw object of a ``torch.save`` file, read with the safe loader:
    ``torch.load(weights_only=True)`` that also admits numpy arrays, nothing else."""
    path = Path(path)
    if trust_pickle:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files: weights_only decides alone
        unsafe = []
    bad = [g for g in unsafe if g not in _NUMPY_GLOBALS and not g.startswith("numpy.dtypes.")]
    if bad:
        raise ValueError(
            f"checkpoint {path} pickles objects that are not plain data ({bad[:4]}); refusing "
            f"to unpickle them (trust_pickle=True reads a file you trust). Save tensors, "
            f"numbers, strings, lists and dicts only"
        )
    allowed: list[Any] = []
    for name in unsafe:
        module, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), attr))
    if allowed:
        # An ndarray's dtype is rebuilt from its class (numpy.dtypes.UInt32DType, ...), which
        # the scan above does not list: admit the plain numeric dtype classes, nothing else.
        allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdFD"]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"checkpoint {path} cannot be read: {first}") from None


def _tensor_dict(raw: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"{where}: field 'model' missing or not a state dict of tensors")
    # DistributedDataParallel saves its wrapped module's keys under "module.".
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


def _from_payload(raw: Mapping[str, Any], where: str) -> Checkpoint:
    if raw.get("version") not in _READABLE_VERSIONS:
        raise ValueError(
            f"{where}: checkpoint version {raw.get('version')!r}, this avaserve reads "
            f"{', '.join(map(str, _READABLE_VERSIONS))}"
        )
    for name, kind in (("preset", str), ("preset_overrides", dict)):
        if not isinstance(raw.get(name), kind):
            raise ValueError(f"{where}: field {name!r} missing or not a {kind.__name__}")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, int) for c in classes):
        raise ValueError(f"{where}: field 'classes' must be a list of action ids")
    training = raw.get("training")
    if training is not None and not isinstance(training, dict):
        raise ValueError(f"{where}: field 'training' must be a dict")
    bank = raw.get("bank_model")
    if bank is not None and not isinstance(bank, Mapping):
        raise ValueError(f"{where}: field 'bank_model' must be a checkpoint dict")
    return Checkpoint(
        model=_tensor_dict(raw.get("model"), where),
        preset=raw["preset"],
        preset_overrides=raw["preset_overrides"],
        classes=classes,
        source=raw.get("source"),
        training=training,
        bank_model=None if bank is None else _from_payload(bank, f"{where} [bank_model]"),
    )


_LEGACY_TRAINING_STATE = ("optimizer", "iteration", "config", "rng", "stage", "bank_dim")


def _from_legacy_training(raw: Mapping[str, Any], where: str) -> Checkpoint:
    """The layout training wrote before this format: rebuild the options from its config."""
    config = raw["config"]
    model = _tensor_dict(raw.get("model"), where)
    class_ids = [int(c) for c in raw["class_ids"]]
    grid = model.get("appearance_grid")
    stage = config.get("stage", raw.get("stage", "stage1"))
    try:
        window_seconds = window_seconds_of_config(config)  # its half-width ``bank_window``
    except ValueError as e:
        raise ValueError(f"{where}: training config: {e}") from None
    options = {
        **dict(config.get("preset_overrides") or {}),
        **action_head_options(
            class_ids=class_ids,
            stage2=stage == "stage2",
            bank_dim=raw.get("bank_dim"),
            use_global=bool(config.get("use_global", True)),
            bank_time=bool(config.get("bank_time", False)),
            bank_window_seconds=window_seconds,
            bank_persons_per_second=int(config.get("bank_persons_per_second", 5)),
            bank_recall=bool(config.get("bank_recall", False)),
            appearance_grid=None if grid is None else (int(grid[0]), int(grid[1])),
            bank_dir=config.get("bank_dir"),
        ),
    }
    log.warning(
        "%s: an old training checkpoint (no 'format' field); its architecture was rebuilt "
        "from its training config. Re-save it with models.checkpoints.save_checkpoint to "
        "carry every option",
        where,
    )
    return Checkpoint(
        model=model,
        preset=str(config.get("preset")),
        preset_overrides=options,
        classes=class_ids,
        training={k: raw[k] for k in _LEGACY_TRAINING_STATE if k in raw},
    )


def load_checkpoint(path: StrPath, *, trust_pickle: bool = False) -> Checkpoint:
    """Read one of our checkpoints (or an old training one); errors name the file and the
    missing or bad field."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} not found")
    raw = read_checkpoint_file(path, trust_pickle=trust_pickle)
    if not isinstance(raw, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")
    if raw.get("format") == CHECKPOINT_FORMAT:
        return _from_payload(raw, str(path))
    if isinstance(raw.get("config"), Mapping) and "class_ids" in raw:
        return _from_legacy_training(raw, str(path))
    raise ValueError(
        f"{path}: not an avaserve checkpoint (field 'format' != {CHECKPOINT_FORMAT!r}, and "
        f"not an old training checkpoint with 'config' and 'class_ids'; keys "
        f"{sorted(map(str, raw))[:12]}); import public checkpoints with "
        f"`avaserve import-checkpoint`"
    )


def load_weights(path: StrPath, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Only the state dict of a checkpoint: ours, an old training one, or a classification
    pretraining one (``training.pretrain``: ``{"model": state dict, ...}``)."""
    raw = read_checkpoint_file(path, trust_pickle=trust_pickle)
    if isinstance(raw, Mapping) and raw.get("format") == CHECKPOINT_FORMAT:
        return _tensor_dict(raw.get("model"), str(path))
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        return _tensor_dict(raw["model"], str(path))
    return _tensor_dict(raw, str(path))


def build_model(checkpoint: Checkpoint) -> ActionModel:
    """Rebuild the preset with its overrides and load the weights strictly (eval mode);
    nothing is read off the state dict's key names."""
    from models.presets import PRESETS

    if checkpoint.preset not in PRESETS:
        raise ValueError(f"unknown preset {checkpoint.preset!r}; known: {sorted(PRESETS)}")
    # The classifier columns are the ``class_ids`` option; "classes" states it when the
    # overrides leave it out (a file of version 1).
    options = dict(checkpoint.preset_overrides)
    if checkpoint.classes:
        options.setdefault("class_ids", tuple(checkpoint.classes))
    try:
        model = PRESETS[checkpoint.preset](**options)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"cannot build preset {checkpoint.preset!r} with {checkpoint.preset_overrides}: {e}"
        ) from None
    try:
        model.load_state_dict(checkpoint.model, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"state dict does not fit preset {checkpoint.preset!r} (overrides "
            f"{checkpoint.preset_overrides}): {str(e)[:600]}"
        ) from None
    columns = list(model.class_ids)
    if columns != list(checkpoint.classes):
        raise ValueError(
            f"checkpoint classes {checkpoint.classes[:5]}... differ from the model's columns "
            f"{columns[:5]}...; set preset_overrides['class_ids']"
        )
    return model.eval()

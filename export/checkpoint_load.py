"""Checkpoint loading for export: a checkpoint (or a preset, randomly initialised) -> a
`LoadedModel`, the ActionModel with what the manifest says about it.

Checkpoints are read with `models.checkpoints.load_checkpoint` (the one format, written by
training and by ``avaserve import-checkpoint``): the model is built from the preset and every
option the checkpoint carries, and its state dict is loaded strictly. A training checkpoint's
config gives the bank window and persons per second. The stage-1 bank model comes from the
checkpoint's ``bank_model`` or from its own file (``bank_checkpoint``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.ava import EVALUATED_IDS, POSE_IDS, LabelMap
from core.bank_layout import DEFAULT_WINDOW_SECONDS, window_seconds_of_config
from core.manifest import sha256_file
from core.preset_info import PresetInfo
from export.writing import ExportError

if TYPE_CHECKING:
    from models.action_model import ActionModel
    from models.checkpoints import Checkpoint

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "load_action_model",
    "load_checkpoint_models",
    "random_init_model",
]

log = logging.getLogger(__name__)

StrPath = str | PathLike[str]


class CheckpointError(ExportError):
    """A checkpoint that cannot be turned into an ActionModel."""


@dataclass(frozen=True)
class LoadedModel:
    """An ActionModel ready to export, with what the manifest needs to say about it.

    ``bank_model``: report A's stage-1 model whose person features fill the bank, when the
    checkpoint carries one (then exported as bank_backbone.onnx); None = the bank holds the
    main backbone's own person features.
    """

    model: ActionModel
    info: PresetInfo
    class_ids: tuple[int, ...]
    pose_ids: tuple[int, ...]
    evaluated_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    provenance: str  # checkpoint file name, or "random-init ... UNTRAINED"
    checkpoint_sha256: str | None = None
    bank_model: ActionModel | None = None
    bank_window_seconds: int = DEFAULT_WINDOW_SECONDS
    bank_persons_per_second: int = 5
    trained: bool = True


def _class_facts(
    class_ids: Sequence[int],
    *,
    pose_ids: Sequence[int] | None = None,
    evaluated_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    ids = tuple(int(c) for c in class_ids)
    pose = tuple(i for i in (pose_ids if pose_ids is not None else POSE_IDS) if i in set(ids))
    if evaluated_ids is not None:
        evaluated = tuple(int(i) for i in evaluated_ids)
    elif set(ids) == set(range(1, 81)):
        evaluated = tuple(EVALUATED_IDS)  # the ActivityNet 60
    else:
        evaluated = ids  # a world or a custom label set: every class is scored
    names = tuple(class_names) if class_names is not None else LabelMap.from_ids(ids).names
    return pose, evaluated, names


def random_init_model(
    preset: str,
    *,
    seed: int = 0,
    use_lfb: bool = True,
    use_global: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """A randomly initialised preset (development bundles only: labelled UNTRAINED)."""
    import torch

    from models.presets import PRESETS

    if preset not in PRESETS:
        raise ExportError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    torch.manual_seed(seed)
    kw = {"use_lfb": use_lfb, "use_global": use_global, **dict(overrides or {})}
    model = PRESETS[preset](**kw).eval()
    info = model.preset_info
    assert info is not None
    pose, evaluated, names = _class_facts(model.class_ids)
    return LoadedModel(
        model=model,
        info=info,
        class_ids=model.class_ids,
        pose_ids=pose,
        evaluated_ids=evaluated,
        class_names=names,
        provenance=f"random-init:{preset}:seed={seed} (UNTRAINED; development bundle only)",
        trained=False,
    )


def _build(checkpoint: Checkpoint, where: str) -> ActionModel:
    from models.checkpoints import build_model

    try:
        return build_model(checkpoint)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def load_checkpoint_models(path: StrPath, *, bank_checkpoint: StrPath | None = None) -> LoadedModel:
    """Read a checkpoint (`models.checkpoints`: the model is built from the options it
    carries) into a `LoadedModel`.

    ``bank_checkpoint``: report A's stage-1 checkpoint whose person features fill the bank
    (exported as bank_backbone.onnx); overrides a ``bank_model`` inside ``path``.
    """
    from models.checkpoints import load_checkpoint

    p = Path(path)
    try:
        checkpoint = load_checkpoint(p)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = _build(checkpoint, str(p))
    config = (checkpoint.training or {}).get("config") or {}
    assert isinstance(config, Mapping)
    try:
        window_seconds = window_seconds_of_config(config)  # an old config's half-width converts
    except ValueError as e:
        raise CheckpointError(f"{p}: training config: {e}") from None

    bank_model = None
    if checkpoint.bank_model is not None:
        where = f"{p} [bank_model]"
        bank_model = _build(checkpoint.bank_model, where)
        if model.lfb is not None and bank_model.person_dim != model.lfb.dim_bank:
            raise CheckpointError(
                f"{where}: the stage-1 model's features are {bank_model.person_dim}-d but the "
                f"LFB reads {model.lfb.dim_bank}-d bank features"
            )
    if bank_checkpoint is not None:
        bank_model = load_checkpoint_models(bank_checkpoint).model
        if model.lfb is None:
            raise CheckpointError(f"--bank-checkpoint given but {p} has no feature bank (LFB)")
        if bank_model.person_dim != model.lfb.dim_bank:
            raise CheckpointError(
                f"{bank_checkpoint}: its person features are {bank_model.person_dim}-d but the "
                f"LFB of {p} reads {model.lfb.dim_bank}-d bank features"
            )
    if model.lfb is not None and bank_model is None and config.get("train_backbone", False):
        log.warning(
            "%s fine-tuned its backbone in stage 2 but carries no stage-1 model: the bank will "
            "hold stage-2 features, not the stage-1 features the LFB was trained on. Pass "
            "--bank-checkpoint STAGE1 for report A's setup",
            p.name,
        )
    info = model.preset_info
    assert info is not None
    pose, evaluated, names = _class_facts(
        model.class_ids, pose_ids=checkpoint.preset_overrides.get("pose_ids")
    )
    return LoadedModel(
        model=model,
        info=info,
        class_ids=model.class_ids,
        pose_ids=pose,
        evaluated_ids=evaluated,
        class_names=names,
        provenance=p.name,
        checkpoint_sha256=sha256_file(p),
        bank_model=bank_model,
        bank_window_seconds=window_seconds,
        bank_persons_per_second=int(config.get("bank_persons_per_second", 5)),
    )


def load_action_model(ckpt_path: StrPath) -> tuple[ActionModel, PresetInfo, tuple[int, ...]]:
    """A training checkpoint -> (ActionModel in eval mode, its PresetInfo, class ids)."""
    loaded = load_checkpoint_models(ckpt_path)
    return loaded.model, loaded.info, loaded.class_ids

"""Named model presets: ``slowfast_r50_ava``, ``slowfast_r101_ava``, ``slowfast_tiny``.

Each returns an :class:`~models.action_model.ActionModel` whose defaults are 80 AVA
classes, RoI head only: no non-local blocks, no feature bank, no global branch — the
configuration of pytorchvideo's ``slowfast_r50_detection`` (33,828,888 parameters), which
the R50 preset matches exactly. ``model.preset_info`` carries the preprocessing facts
(``core.preset_info``, torch-free) that the export tool copies into the manifest.

Keyword overrides are split three ways:

* :class:`~core.preset_info.PresetInfo` fields (``num_frames``, ``alpha``,
  ``sampling_rate``, ``short_side``, ...) update the info; ``alpha`` also goes to the
  backbone, so the two cannot disagree;
* head options (the keyword arguments of :func:`build_action_model` below:
  ``class_ids``, ``use_lfb``, ``use_global``, ``dropout``, ...);
* everything else goes to :func:`models.backbone.create_slowfast` (``nonlocal_stages``,
  ``norm``, ...), which rejects unknown names.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from core.ava import POSE_IDS
from core.preset_info import SLOWFAST_R50_AVA, SLOWFAST_R101_AVA, SLOWFAST_TINY, PresetInfo
from core.probs import DEFAULT_OUTPUT_ACTIVATION
from models.action_model import AVA_CLASS_IDS, ActionModel
from models.backbone import create_slowfast
from models.lfb import LFB
from models.roi import DEFAULT_SAMPLING_RATIO, RoIHead, appearance_size, appearance_torso_cells

__all__ = [
    "PRESETS",
    "build_action_model",
    "create_preset",
    "slowfast_r50_ava",
    "slowfast_r101_ava",
    "slowfast_tiny",
]


def build_action_model(
    backbone: nn.Module,
    *,
    class_ids: Sequence[int] = AVA_CLASS_IDS,
    pose_ids: Sequence[int] = POSE_IDS,
    roi_output_size: tuple[int, int] = (7, 7),
    sampling_ratio: int = DEFAULT_SAMPLING_RATIO,
    roi_aligned: bool = True,
    roi_temporal_pool: str = "avg",
    dropout: float = 0.5,
    use_lfb: bool = False,
    lfb_dim_bank: int | None = None,
    lfb_dim_inner: int = 512,
    lfb_num_blocks: int = 2,
    lfb_dropout: float = 0.2,
    lfb_slot_offsets: Sequence[float] | None = None,
    lfb_recall_classes: int = 0,
    use_global: bool = False,
    appearance_grid: Sequence[int] | None = None,
    output_activation: str = DEFAULT_OUTPUT_ACTIVATION,
    preset_info: PresetInfo | None = None,
) -> ActionModel:
    """Wrap a SlowFast backbone (``out_channels``, ``spatial_stride``) into an ActionModel.

    ``dropout`` is the RoI head's (0.5, PySlowFast AVA); ``lfb_*`` follow Wu et al. (512-d,
    2 blocks, dropout 0.2); ``lfb_dim_bank`` None means the bank holds this model's own
    person features (D); ``lfb_slot_offsets`` makes the LFB time-aware (`models.lfb`, slot
    times); ``lfb_recall_classes`` adds its recall path (`models.lfb`, "Recall");
    ``appearance_grid`` appends box colour cells to person features and gives the LFB a
    same-person cue (`models.action_model`). ``roi_aligned=False`` is the legacy unaligned
    RoIAlign that pytorchvideo's detection head (torchvision's default) and PySlowFast's
    Caffe2 AVA models (``DETECTION.ALIGNED: False``) run; imported checkpoints of those set
    it. ``sampling_ratio`` 0 is the adaptive RoIAlign sampling every upstream head runs;
    ``roi_temporal_pool`` "max" is MMAction2's ``temporal_pool_mode='max'`` (the global
    branch pools time the same way). ``output_activation`` is ``core.probs``'s
    "pose_softmax_sigmoid" (heads trained here) or "sigmoid" (imported upstream heads).
    """
    channels: tuple[int, int] = backbone.out_channels  # type: ignore[assignment]
    stride: int = backbone.spatial_stride  # type: ignore[assignment]
    roi_head = RoIHead(
        in_channels=channels,
        spatial_scale=1.0 / stride,
        output_size=roi_output_size,
        sampling_ratio=sampling_ratio,
        dropout=dropout,
        aligned=roi_aligned,
        temporal_pool=roi_temporal_pool,
    )
    grid = None if appearance_grid is None else (int(appearance_grid[0]), int(appearance_grid[1]))
    app_dim = 0 if grid is None else appearance_size(grid)
    lfb = (
        LFB(
            dim_in=roi_head.out_dim,
            dim_bank=lfb_dim_bank if lfb_dim_bank is not None else roi_head.out_dim + app_dim,
            dim_inner=lfb_dim_inner,
            num_blocks=lfb_num_blocks,
            dropout=lfb_dropout,
            slot_offsets=lfb_slot_offsets,
            appearance_dim=app_dim,
            recall_classes=lfb_recall_classes,
            recall_cells=None if grid is None else appearance_torso_cells(grid),
        )
        if use_lfb
        else None
    )
    return ActionModel(
        backbone=backbone,
        roi_head=roi_head,
        lfb=lfb,
        use_global=use_global,
        class_ids=class_ids,
        pose_ids=pose_ids,
        preset_info=preset_info,
        appearance_grid=grid,
        output_activation=output_activation,
    )


_HEAD_KEYS = frozenset(inspect.signature(build_action_model).parameters) - {
    "backbone",
    "preset_info",
}
_INFO_KEYS = frozenset(f.name for f in dataclasses.fields(PresetInfo)) - {"name"}


def create_preset(
    info: PresetInfo, backbone_defaults: dict[str, Any], overrides: dict[str, Any]
) -> ActionModel:
    """Build a preset from its info and backbone settings, applying ``overrides``."""
    info_kw = {k: v for k, v in overrides.items() if k in _INFO_KEYS}
    head_kw = {k: v for k, v in overrides.items() if k in _HEAD_KEYS}
    backbone_kw = {
        k: v for k, v in overrides.items() if k not in _INFO_KEYS and k not in _HEAD_KEYS
    }
    info = dataclasses.replace(info, **info_kw)
    backbone = create_slowfast(**{**backbone_defaults, "alpha": info.alpha, **backbone_kw})
    return build_action_model(backbone, preset_info=info, **head_kw)


def slowfast_r50_ava(**overrides: Any) -> ActionModel:
    """SlowFast 8x8 R50, AVA variant (res5 stride 1, dilation 2; 8 slow / 32 fast frames).

    Defaults match pytorchvideo's ``slowfast_r50_detection``: 33,828,888 parameters.
    """
    return create_preset(SLOWFAST_R50_AVA, {"depth": 50}, overrides)


def slowfast_r101_ava(**overrides: Any) -> ActionModel:
    """SlowFast 8x8 R101, AVA variant (as R50 with 23 res4 blocks); no non-local by default.

    PySlowFast's AVA ``SLOWFAST_*_R101_50_50`` models add dot-product non-local blocks
    after res4 blocks 6, 13, 20 with a (2, 2, 2) pool, give res4 blocks 6-22 1x1x1 first
    convs and use a fusion kernel of 5; ``import-checkpoint`` sets all of these from the
    weights and the config (``nonlocal_stages=(2,), nonlocal_blocks=((6, 13, 20),),
    nonlocal_instantiation="dot_product", nonlocal_pool=(2, 2, 2), fusion_kernel=5``, and
    per-block ``slow_temporal_kernels`` / ``fast_temporal_kernels``).
    """
    return create_preset(SLOWFAST_R101_AVA, {"depth": 101}, overrides)


def slowfast_tiny(**overrides: Any) -> ActionModel:
    """Tiny CPU SlowFast for tests and demos: depth 18 (basic blocks), stem 16 channels
    (slow widths 16..128, fast 2..16, D = 144), AVA stride 16, 4 slow / 16 fast frames at
    a 128-px short side. Trains on a CPU in minutes; not meant to be accurate.

    The LFB inner width defaults to 128 here (512 in Wu et al.): with D = 144 a 512-wide
    LFB would hold most of the model's weights and push the demo bundle past its size cap.
    """
    return create_preset(
        SLOWFAST_TINY, {"depth": 18, "stem_dim": 16}, {"lfb_dim_inner": 128, **overrides}
    )


PRESETS: dict[str, Callable[..., ActionModel]] = {
    "slowfast_r50_ava": slowfast_r50_ava,
    "slowfast_r101_ava": slowfast_r101_ava,
    "slowfast_tiny": slowfast_tiny,
}

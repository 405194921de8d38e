"""Presets: parameter counts against pytorchvideo, defaults, overrides, preset facts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.preset_info import PRESET_INFOS, PresetInfo, preset_info
from models.nonlocal_block import NonLocalBlock
from models.presets import PRESETS, slowfast_r50_ava, slowfast_r101_ava, slowfast_tiny

# What pytorchvideo 0.1.5 builds for the same configuration (measured by the lead):
# create_slowfast_with_roi_head(model_depth=50 | 101) with its defaults, 80 classes.
PYTORCHVIDEO_PARAMS = {"slowfast_r50_ava": 33_828_888, "slowfast_r101_ava": 62_175_640}


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PYTORCHVIDEO_PARAMS))
def test_param_count_matches_pytorchvideo(name: str) -> None:
    model = PRESETS[name]()
    ours, theirs = _num_params(model), PYTORCHVIDEO_PARAMS[name]
    assert abs(ours - theirs) / theirs <= 0.03, f"{name}: {ours:,} vs pytorchvideo {theirs:,}"
    # The structure is meant to map key by key, so in fact the counts are equal.
    assert ours == theirs


@pytest.mark.parametrize("factory", [slowfast_r50_ava, slowfast_r101_ava, slowfast_tiny])
def test_defaults(factory: object) -> None:
    model = factory()  # type: ignore[operator]
    assert model.num_classes == 80 and model.class_ids == tuple(range(1, 81))
    assert model.pose_columns == tuple(range(14))
    assert model.lfb is None and not model.use_global and model.scene_classifier is None
    assert not any(isinstance(m, NonLocalBlock) for m in model.modules())
    assert model.roi_head.spatial_scale == 1 / 16  # AVA variant: res5 stride 1
    assert model.preset_info == preset_info(factory.__name__)  # type: ignore[attr-defined]


def test_tiny_forward_with_its_own_preprocessing_facts() -> None:
    info = slowfast_tiny().preset_info
    assert info is not None
    assert (info.num_frames, info.alpha, info.sampling_rate, info.short_side) == (16, 4, 2, 128)
    model = slowfast_tiny(use_lfb=True, use_global=True).eval()
    h, w = info.short_side, info.short_side * 4 // 3
    slow = torch.randn(2, 3, info.slow_frames, h, w)
    fast = torch.randn(2, 3, info.num_frames, h, w)
    boxes = torch.tensor([[0.0, 10, 10, 60, 120], [1.0, 50, 5, 150, 128]])
    with torch.no_grad():
        out = model(slow, fast, boxes)
    assert out.action_logits.shape == (2, 80) and out.person_features.shape == (2, 144)
    assert out.scene_logits is not None and out.scene_logits.shape == (2, 80)


def test_overrides_are_routed() -> None:
    model = slowfast_tiny(
        alpha=2, num_frames=8, short_side=160, class_ids=(1, 2, 50), use_lfb=True, stem_dim=8
    )
    assert model.preset_info is not None
    assert (model.preset_info.alpha, model.preset_info.slow_frames) == (2, 4)
    assert model.preset_info.short_side == 160
    assert model.backbone.alpha == 2 and model.roi_head.out_dim == 72
    assert model.class_ids == (1, 2, 50) and model.pose_columns == (0, 1)
    assert model.lfb is not None and model.lfb.dim_bank == 72
    with pytest.raises(TypeError):
        slowfast_tiny(no_such_option=1)
    with pytest.raises(ValueError, match="multiple of"):
        slowfast_tiny(num_frames=10)


def test_preset_info_is_torch_free_and_complete() -> None:
    code = (
        "import sys, core.preset_info as p; "
        "assert 'torch' not in sys.modules, 'preset_info imported torch'; "
        "print(sorted(p.PRESET_INFOS))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert set(PRESET_INFOS) == set(PRESETS)
    with pytest.raises(KeyError, match="known"):
        preset_info("nope")
    with pytest.raises(ValueError):
        PresetInfo(name="bad", num_frames=32, alpha=4, sampling_rate=0, short_side=256)

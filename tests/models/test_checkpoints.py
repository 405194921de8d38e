"""Checkpoint import (PySlowFast .pyth and Caffe2 .pkl, pytorchvideo, MMAction2) and our
checkpoint format.

Source layouts come from ``source_layouts.py`` (published naming rules and shapes) and, for
pytorchvideo, from its real ``slowfast_r50_detection`` builder. pytorchvideo imports
torchvision only for ``torchvision.ops.RoIAlign``; where torchvision is absent a stand-in
module backed by our ``models.roi`` serves it for the duration of a test.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import source_layouts as L
import torch
from random_weights import randomise_norms
from torch import nn
from upstream_env import stub_module

from models.checkpoints import Checkpoint, build_model, load_checkpoint, save_checkpoint
from models.importers import (
    CheckpointImportError,
    ImportResult,
    SourceState,
    caffe2_to_pyslowfast,
    import_state_dict,
    read_source_state,
)
from models.roi import roi_align, roi_align_reference


def _assert_values_landed(source: dict[str, torch.Tensor], result: ImportResult) -> None:
    """Every mapped source tensor sits unchanged under its target key (head rows aside)."""
    ours = result.model.state_dict()
    for src, dst in result.report.mapped:
        expected = source[src]
        if dst.startswith("classifier.") and expected.shape[0] == ours[dst].shape[0] + 1:
            expected = expected[1:]  # MMAction2's reserved row 0
        assert torch.equal(ours[dst], expected.to(ours[dst].dtype)), (src, dst)


# ---- the three layouts, strictly ---------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "preset"),
    [(L.TINY, "slowfast_tiny"), (L.R50, "slowfast_r50_ava")],
    ids=["tiny", "r50"],
)
def test_pyslowfast_layout_loads_strictly(arch: Any, preset: str) -> None:
    source = L.random_state(L.layout("pyslowfast", arch))
    result = import_state_dict(source, "pyslowfast", preset=preset)
    report = result.report
    assert report.ok and report.synthesised == []
    assert len(report.mapped) == len(source)
    _assert_values_landed(source, result)
    mapped = dict(report.mapped)
    assert mapped["s1_fuse.conv_f2s.weight"] == "backbone.fusions.0.conv.weight"
    assert mapped["s5.pathway1_res0.branch2.a_bn.running_var"] == (
        "backbone.stages.3.fast.blocks.0.norm_a.running_var"
    )
    assert mapped["head.projection.weight"] == "classifier.weight"


R101_NL_CFG = """\
NONLOCAL:
  LOCATION: [[[], []], [[], []], [[6, 13, 20], []], [[], []]]
  INSTANTIATION: softmax
  POOL: [[[1, 2, 2], [1, 2, 2]], [[1, 2, 2], [1, 2, 2]],
         [[2, 2, 2], [2, 2, 2]], [[1, 2, 2], [1, 2, 2]]]
"""


def test_pyslowfast_r101_nonlocal_placement_is_read_from_keys() -> None:
    """Non-local blocks after res4 blocks 6, 13, 20 (PySlowFast's AVA R101 placement); the
    softmax instantiation and the pool come from the config stored in the .pyth."""
    arch = L.Arch(depth=101, stem_dim=16, nonlocal_blocks={2: (6, 13, 20)})
    tensors = L.random_state(L.layout("pyslowfast", arch))
    assert "s4.pathway0_nonlocal13.conv_theta.weight" in tensors
    result = import_state_dict(
        SourceState(tensors, "pyslowfast", R101_NL_CFG),
        preset="slowfast_r101_ava",
        overrides={"stem_dim": 16},
    )
    assert result.report.ok
    over = result.preset_overrides
    assert over["nonlocal_stages"] == (2,) and over["nonlocal_blocks"] == ((6, 13, 20),)
    assert over["nonlocal_pool"] == (2, 2, 2)
    _assert_values_landed(tensors, result)
    assert "backbone.stages.2.slow.nonlocals.20.norm.weight" in result.model.state_dict()


def _write_pkl(path: Path, blobs: dict[str, Any]) -> Path:
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return path


@pytest.mark.parametrize(
    ("arch", "preset", "via_file"),
    # R50 in memory: pickling 34M parameters would only time the disk.
    [(L.R50, "slowfast_r50_ava", False), (L.TINY, "slowfast_tiny", True)],
    ids=["r50", "tiny-pkl"],
)
def test_caffe2_blobs_load_strictly(tmp_path: Path, arch: Any, preset: str, via_file: bool) -> None:
    state = L.random_state(L.layout("caffe2", arch))
    blobs: dict[str, Any] = L.as_caffe2_blobs(state)
    blobs["res2_0_branch2a_w_momentum"] = blobs["res2_0_branch2a_w"] * 0  # solver state
    blobs["lr"] = 0.1
    blobs["model_iter"] = 1000
    if via_file:
        source = read_source_state(_write_pkl(tmp_path / "c2.pkl", blobs), "pyslowfast")
        assert source.source_format == "caffe2"
    else:
        tensors = {k: torch.as_tensor(v) for k, v in blobs.items()}
        source = SourceState(tensors, "caffe2")
    result = import_state_dict(source, preset=preset)
    report = result.report
    assert report.ok, report.summary()
    assert sorted(report.ignored) == ["lr", "model_iter", "res2_0_branch2a_w_momentum"]
    assert len(report.mapped) == len(state)
    _assert_values_landed(source.tensors, result)


def test_caffe2_affine_only_bn_is_synthesised_exactly(tmp_path: Path) -> None:
    """Frozen-BN Caffe2 models keep only _bn_s/_bn_b; BN must then compute s * x + b."""
    state = L.random_state(L.layout("caffe2", L.TINY))
    blobs = {k: v for k, v in L.as_caffe2_blobs(state).items() if not k.endswith(("_rm", "_riv"))}
    source = read_source_state(_write_pkl(tmp_path / "c2.pkl", blobs), "pyslowfast")
    result = import_state_dict(source, preset="slowfast_tiny")
    assert "backbone.stem.slow.norm.running_var" in result.report.synthesised
    bn = result.model.get_submodule("backbone.stem.slow.norm")
    x = torch.randn(2, bn.num_features, 1, 3, 3)
    with torch.no_grad():
        expected = x * bn.weight[:, None, None, None] + bn.bias[:, None, None, None]
        torch.testing.assert_close(bn(x), expected, rtol=0, atol=1e-6)


def test_caffe2_names_follow_pyslowfast_rules() -> None:
    table = {
        "conv1_w": "s1.pathway0_stem.conv.weight",
        "t_res_conv1_bn_riv": "s1.pathway1_stem.bn.running_var",
        "res4_5_branch2c_bn_s": "s4.pathway0_res5.branch2.c_bn.weight",
        "t_res2_0_branch1_bn_b": "s2.pathway1_res0.branch1_bn.bias",
        "t_pool1_subsample_w": "s1_fuse.conv_f2s.weight",
        "t_res3_3_branch2c_bn_subsample_bn_rm": "s3_fuse.bn.running_mean",
        "nonlocal_conv4_6_theta_b": "s4.pathway0_nonlocal6.conv_theta.bias",
        "nonlocal_conv4_13_bn_s": "s4.pathway0_nonlocal13.bn.weight",
        "pred_w": "head.projection.weight",
        "res5_2_branch2b_momentum": None,
    }
    assert {k: caffe2_to_pyslowfast(k) for k in table} == table


def test_mmaction2_layout_loads_strictly_with_its_settings() -> None:
    """MMAction2 SlowFast 8x8 AVA: conv-only laterals (kernel 7), res5 dilation 1, 8x8 RoI,
    81-way fc_cls whose row 0 is reserved."""
    source = L.random_state(L.layout("mmaction2", L.Arch(fusion_norm=False)))
    assert source["roi_head.bbox_head.fc_cls.weight"].shape == (81, 2304)
    assert "backbone.slow_path.layer3_lateral.conv.weight" in source
    result = import_state_dict(source, "mmaction2", preset="slowfast_r50_ava")
    assert result.report.ok, result.report.summary()
    _assert_values_landed(source, result)
    model = result.model
    torch.testing.assert_close(
        model.classifier.weight, source["roi_head.bbox_head.fc_cls.weight"][1:]
    )
    over = result.preset_overrides
    assert over["fusion_norm"] is False and over["fusion_kernel"] == 7
    assert over["spatial_dilations"] == (1, 1, 1, 1)
    assert model.roi_head.output_size == (8, 8)
    assert model.preset_info.mean == pytest.approx((0.485, 0.456, 0.406))
    assert isinstance(model.backbone.fusions[0].norm, nn.Identity)
    assert model.backbone.stages[3].slow.blocks[0].conv_b.dilation == (1, 1, 1)


# ---- strict failures name the key and the reason -------------------------------------------


def _tiny(fmt: str = "pyslowfast", arch: Any = None) -> dict[str, torch.Tensor]:
    return L.random_state(L.layout(fmt, arch or L.TINY))


def _with(state: dict[str, torch.Tensor], **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**state, **extra}


def _without(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    assert key in state
    return {k: v for k, v in state.items() if k != key}


def _resized(state: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> Any:
    return {**state, key: torch.zeros(shape)}


FAILURES = [
    (
        "unmapped",
        lambda: _with(_tiny(), **{"s2.pathway0_res0.branch2.d.weight": torch.zeros(1)}),
        "pyslowfast",
        {},
        ["unmapped source keys", "s2.pathway0_res0.branch2.d.weight"],
    ),
    (
        "missing",
        lambda: _without(_tiny(), "s3.pathway1_res1.branch2.b_bn.running_var"),
        "pyslowfast",
        {},
        ["missing target keys", "backbone.stages.1.fast.blocks.1.norm_b.running_var"],
    ),
    (
        "classes",
        lambda: _resized(_tiny(), "head.projection.weight", (60, 144)),
        "pyslowfast",
        {},
        ["head.projection.weight [60, 144] -> classifier.weight [80, 144]", "class_ids"],
    ),
    (
        "fast-nonlocal",
        lambda: _with(_tiny(), **{"s4.pathway1_nonlocal1.conv_g.weight": torch.zeros(1)}),
        "pyslowfast",
        {},
        ["cannot represent", "s4.pathway1_nonlocal1.conv_g.weight", "fast pathway"],
    ),
    (
        "head-layers",
        lambda: _with(_tiny(), **{"head.fc1.weight": torch.zeros(1)}),
        "pyslowfast",
        {},
        ["head.fc1.weight", "other than the final projection"],
    ),
    (
        "depth",
        lambda: _tiny(arch=L.Arch(depth=50, stem_dim=8)),
        "pyslowfast",
        {"depth": 101, "stem_dim": 8},
        [
            "stage res4 slow pathway: the checkpoint has 6 blocks",
            "has 23",
            "depth-50 SlowFast: use --preset slowfast_r50_ava",
        ],
    ),
    (
        "nonlocal-out-of-range",
        lambda: _with(_tiny(), **{"s4.pathway0_nonlocal5.conv_theta.weight": torch.zeros(1)}),
        "pyslowfast",
        {},
        ["rejected the overrides", "out of range", "s4.pathway0_nonlocal5"],
    ),
    (
        "classification-head",
        lambda: {"blocks.6.proj.weight": torch.zeros(400, 2304)},
        "pytorchvideo",
        {},
        ["blocks.6.proj.weight", "clip classification head"],
    ),
    (
        # The weights show every block's temporal kernel: a contradicting --set gets the fix.
        "kernel-contradiction",
        lambda: _tiny(),
        "pyslowfast",
        {"slow_temporal_kernels": (1, 1, 1, 3)},
        [
            "slow_temporal_kernels: the weights say",
            "--set slow_temporal_kernels=",
            "s4.pathway0_res0.branch2.a.weight [64, 40, 3, 3, 3]",
        ],
    ),
    (
        "mmaction2-nonlocal",
        lambda: _with(
            _tiny("mmaction2", L.Arch(depth=18, stem_dim=16, fusion_norm=False)),
            **{"backbone.slow_path.layer3.1.non_local_block.g.conv.weight": torch.zeros(1)},
        ),
        "mmaction2",
        {},
        ["non_local_block.g.conv.weight", "NonLocal3d"],
    ),
]


@pytest.mark.parametrize(
    ("make", "fmt", "overrides", "expected"),
    [f[1:] for f in FAILURES],
    ids=[f[0] for f in FAILURES],
)
def test_strict_import_failures_name_the_key(
    make: Any, fmt: str, overrides: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(CheckpointImportError) as info:
        import_state_dict(make(), fmt, preset="slowfast_tiny", overrides=overrides)
    message = str(info.value)
    for text in expected:
        assert text in message, (text, message)
    assert info.value.report is not None and not info.value.report.ok


def test_non_strict_import_returns_the_report() -> None:
    source = _without(_tiny(), "head.projection.bias")
    result = import_state_dict(source, "pyslowfast", preset="slowfast_tiny", strict=False)
    assert result.report.missing == ["classifier.bias"]


# ---- reading files -------------------------------------------------------------------------


def test_pyslowfast_pyth_with_config(tmp_path: Path) -> None:
    """A .pyth from PySlowFast's trainer: model_state + optimizer state + the config text."""
    path = tmp_path / "checkpoint_epoch_00020.pyth"
    cfg = "SLOWFAST:\n  ALPHA: 8\nRESNET:\n  SPATIAL_DILATIONS: [[1, 1], [1, 1], [1, 1], [2, 2]]\n"
    torch.save({"epoch": 20, "model_state": _tiny(), "optimizer_state": {}, "cfg": cfg}, path)
    source = read_source_state(path, "pyslowfast")
    assert source.config == cfg
    result = import_state_dict(source, preset="slowfast_tiny")
    assert result.preset_overrides["alpha"] == 8
    assert result.model.backbone.alpha == 8


NL_ARCH = L.Arch(depth=18, stem_dim=16, nonlocal_blocks={2: (1,)})


def test_pyslowfast_nonlocal_without_config_assumes_the_ava_r101_form(tmp_path: Path) -> None:
    """A Caffe2 .pkl has no config: the non-local form and pool of PySlowFast's AVA R101
    configs (dot_product, POOL [2, 2, 2]) are used, and a note gives the --set to change."""
    blobs = L.as_caffe2_blobs(_tiny("caffe2", NL_ARCH))
    result = import_state_dict(
        read_source_state(_write_pkl(tmp_path / "nl.pkl", blobs), "pyslowfast"),
        preset="slowfast_tiny",
    )
    over = result.preset_overrides
    assert over["nonlocal_instantiation"] == "dot_product" and over["nonlocal_pool"] == (2, 2, 2)
    block = result.model.backbone.stages[2].slow.nonlocals["1"]
    assert block.instantiation == "dot_product"
    assert any("--set nonlocal_instantiation=softmax" in n for n in result.report.notes)
    assert any("--set num_frames=64" in n for n in result.report.notes)


@pytest.mark.parametrize(
    ("cfg", "instantiation", "pool"),
    [
        ("NONLOCAL:\n  INSTANTIATION: softmax\n", "softmax", (1, 2, 2)),  # defaults.py POOL
        (
            "NONLOCAL:\n  INSTANTIATION: dot_product\n  POOL: [[[1, 1, 1], [1, 1, 1]], "
            "[[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]]]\n",
            "dot_product",
            None,
        ),
    ],
    ids=["softmax-default-pool", "dot-product-no-pool"],
)
def test_pyslowfast_nonlocal_form_from_the_config(
    tmp_path: Path, cfg: str, instantiation: str, pool: Any
) -> None:
    path = tmp_path / "nl.pyth"
    torch.save({"model_state": _tiny(arch=NL_ARCH), "cfg": cfg}, path)
    result = import_state_dict(read_source_state(path, "pyslowfast"), preset="slowfast_tiny")
    assert result.preset_overrides["nonlocal_instantiation"] == instantiation
    assert result.preset_overrides["nonlocal_pool"] == pool
    assert not any("non-local form" in n for n in result.report.notes)
    block = result.model.backbone.stages[2].slow.nonlocals["1"]
    assert block.instantiation == instantiation
    assert isinstance(block.pool, nn.Identity) == (pool is None)


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ("NONLOCAL:\n  GROUP: [[1, 1], [1, 1], [2, 1], [1, 1]]\n", "NONLOCAL.GROUP"),
        ("NONLOCAL:\n  INSTANTIATION: gaussian\n", "'gaussian'"),
        ("RESNET:\n  STRIDE_1X1: True\n", "RESNET.STRIDE_1X1"),
        ("MODEL:\n  ARCH: slow\n", "two-pathway SlowFast"),
        ("AVA:\n  BGR: True\n", "AVA.BGR"),
    ],
    ids=["group", "instantiation", "stride-1x1", "slow-only", "bgr"],
)
def test_pyslowfast_config_settings_we_cannot_run_are_refused(cfg: str, expected: str) -> None:
    source = SourceState(_tiny(arch=NL_ARCH), "pyslowfast", cfg)
    with pytest.raises(CheckpointImportError, match="cannot represent") as info:
        import_state_dict(source, preset="slowfast_tiny")
    assert expected in str(info.value)


def test_r101_temporal_kernels_are_read_from_the_weights() -> None:
    """PySlowFast R101 (NUM_BLOCK_TEMP_KERNEL [[3,3],[4,4],[6,6],[3,3]]): res4 blocks 6-22
    have 1x1x1 first convs in both pathways; once 34 shape mismatches, now inferred."""
    arch = L.Arch(depth=101, stem_dim=8, fusion_kernel=5, num_block_temp_kernel=(3, 4, 6, 3))
    source = L.random_state(L.layout("pyslowfast", arch))
    result = import_state_dict(source, "pyslowfast", preset="slowfast_r101_ava")
    over = result.preset_overrides
    res4 = (3,) * 6 + (1,) * 17
    assert over["slow_temporal_kernels"] == (1, 1, res4, 3)
    assert over["fast_temporal_kernels"] == (3, 3, res4, 3)
    assert over["stem_dim"] == 8 and over["beta_inv"] == 8 and over["fusion_kernel"] == 5
    _assert_values_landed(source, result)
    blocks = result.model.backbone.stages[2].fast.blocks
    assert [blk.conv_a.kernel_size[0] for blk in blocks] == list(res4)


def test_mmaction2_pth_with_meta_and_ddp_prefix(tmp_path: Path) -> None:
    arch = L.Arch(depth=18, stem_dim=16, fusion_norm=False)
    state = {f"module.{k}": v for k, v in _tiny("mmaction2", arch).items()}
    path = tmp_path / "mmaction2.pth"
    torch.save({"meta": {"epoch": 20, "mmengine_version": "0.8"}, "state_dict": state}, path)
    result = import_state_dict(read_source_state(path, "mmaction2"), preset="slowfast_tiny")
    assert result.report.ok


# The part of an mmengine ``pretty_text`` the importer reads (MMAction2's temporal-max AVA
# 2.2 config, with a 4x16 backbone's speed ratio to show alpha is read too).
MMACTION2_CFG = """\
default_scope = 'mmaction'
model = dict(
    type='FastRCNN',
    _scope_='mmdet',
    backbone=dict(
        type='mmaction.ResNet3dSlowFast', resample_rate=8, speed_ratio=8, channel_ratio=8),
    roi_head=dict(
        type='AVARoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor3D',
            roi_layer_type='RoIAlign',
            output_size=8,
            with_temporal_pool=True,
            temporal_pool_mode='max'),
        bbox_head=dict(
            type='BBoxHeadAVA', background_class=True, in_channels=144, num_classes=81,
            multilabel=True, dropout_ratio=0.5)),
    data_preprocessor=dict(
        type='mmaction.ActionDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], format_shape='NCTHW'))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=5)]
work_dir = './work_dirs/' + 'x'
"""


def _mmaction2_pth(tmp_path: Path, cfg: str | None) -> Path:
    arch = L.Arch(depth=18, stem_dim=16, fusion_norm=False)
    meta: dict[str, Any] = {"epoch": 10, "mmengine_version": "0.10.7"}
    if cfg is not None:
        meta["cfg"] = cfg
    path = tmp_path / "mmaction2.pth"
    torch.save({"meta": meta, "state_dict": _tiny("mmaction2", arch)}, path)
    return path


def test_mmaction2_head_settings_come_from_meta_cfg(tmp_path: Path) -> None:
    source = read_source_state(_mmaction2_pth(tmp_path, MMACTION2_CFG), "mmaction2")
    assert source.config == MMACTION2_CFG
    result = import_state_dict(source, preset="slowfast_tiny")
    over = result.preset_overrides
    assert over["roi_temporal_pool"] == "max" and over["alpha"] == 8
    assert over["sampling_ratio"] == 0 and over["roi_aligned"] is True
    assert over["output_activation"] == "sigmoid" and over["roi_output_size"] == (8, 8)
    head = result.model.roi_head
    assert (head.temporal_pool, head.sampling_ratio, head.aligned) == ("max", 0, True)
    assert result.model.output_activation == "sigmoid"
    assert any(
        "from the checkpoint's MMAction2 config (meta.cfg)" in n for n in result.report.notes
    )


def test_mmaction2_without_cfg_uses_its_defaults_and_says_so(tmp_path: Path) -> None:
    result = import_state_dict(
        read_source_state(_mmaction2_pth(tmp_path, None), "mmaction2"), preset="slowfast_tiny"
    )
    over = result.preset_overrides
    assert over["sampling_ratio"] == 0 and over["output_activation"] == "sigmoid"
    assert result.model.roi_head.temporal_pool == "avg"
    note = next(n for n in result.report.notes if n.startswith("head settings"))
    assert "no config in the checkpoint: MMAction2's SlowFast AVA config defaults" in note
    assert "--set roi_temporal_pool=max" in note


def test_mmaction2_cfg_without_roi_head_keeps_the_defaults(tmp_path: Path) -> None:
    path = _mmaction2_pth(tmp_path, "model = dict(type='FastRCNN')\n")
    result = import_state_dict(read_source_state(path, "mmaction2"), preset="slowfast_tiny")
    head = result.model.roi_head
    assert (head.output_size, head.sampling_ratio, head.temporal_pool) == ((8, 8), 0, "avg")
    assert any("meta.cfg has no model.roi_head" in n for n in result.report.notes)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            ("with_temporal_pool=True", "with_temporal_pool=False"),
            "",  # an average after RoIAlign equals one before it: representable
        ),
        (
            ("multilabel=True", "multilabel=False"),
            "multilabel: False: one softmax over all classes",
        ),
        (
            ("roi_layer_type='RoIAlign'", "roi_layer_type='RoIPool'"),
            "roi_layer_type: RoIPool",
        ),
    ],
)
def test_mmaction2_cfg_settings_we_cannot_run_are_refused(
    tmp_path: Path, edit: tuple[str, str], words: str
) -> None:
    cfg = MMACTION2_CFG.replace("temporal_pool_mode='max'", "temporal_pool_mode='avg'")
    cfg = cfg.replace(*edit)
    source = read_source_state(_mmaction2_pth(tmp_path, cfg), "mmaction2")
    if not words:
        result = import_state_dict(source, preset="slowfast_tiny")
        assert result.preset_overrides["roi_temporal_pool"] == "avg"
        with_max = cfg.replace(
            "type='BBoxHeadAVA',", "type='BBoxHeadAVA', temporal_pool_type='max',"
        )
        source = read_source_state(_mmaction2_pth(tmp_path, with_max), "mmaction2")
        words = "max over time *after* RoIAlign"
    with pytest.raises(CheckpointImportError, match=re.escape(words)):
        import_state_dict(source, preset="slowfast_tiny")


@pytest.mark.parametrize(
    ("cfg", "aligned", "error"),
    [
        ("MODEL:\n  HEAD_ACT: sigmoid\nDETECTION:\n  ALIGNED: false\n", False, None),
        ("MODEL:\n  HEAD_ACT: sigmoid\nDETECTION:\n  ALIGNED: true\n", True, None),
        ("MODEL:\n  HEAD_ACT: softmax\n", True, "'softmax' over all classes"),
        (None, True, None),
    ],
)
def test_pyslowfast_head_settings_from_cfg(
    tmp_path: Path, cfg: str | None, aligned: bool, error: str | None
) -> None:
    path = tmp_path / "x.pyth"
    torch.save({"model_state": _tiny(), **({"cfg": cfg} if cfg else {})}, path)
    source = read_source_state(path, "pyslowfast")
    if error is not None:
        with pytest.raises(CheckpointImportError, match=re.escape(error)):
            import_state_dict(source, preset="slowfast_tiny")
        return
    result = import_state_dict(source, preset="slowfast_tiny")
    head = result.model.roi_head
    assert (head.sampling_ratio, head.aligned, head.temporal_pool) == (0, aligned, "avg")
    assert result.model.output_activation == "sigmoid"
    origin = "PySlowFast config (cfg)" if cfg else "no config in the checkpoint: PySlowFast's"
    assert any(n.startswith("head settings") and origin in n for n in result.report.notes)


class _NotABlob:
    pass


def test_caffe2_reader_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": {"conv1_w": _NotABlob()}}, f)
    with pytest.raises(CheckpointImportError, match="refusing to unpickle"):
        read_source_state(path, "pyslowfast")


@pytest.mark.parametrize(
    ("payload", "fmt", "match"),
    [
        ({"optimizer": {}}, "mmaction2", "found none of 'model_state'"),
        ({"blobs": {}}, "mmaction2", "use --format pyslowfast"),
    ],
)
def test_reader_errors(tmp_path: Path, payload: dict[str, Any], fmt: str, match: str) -> None:
    path = tmp_path / "x.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointImportError, match=match):
        read_source_state(path, fmt)


# ---- our format ----------------------------------------------------------------------------


def test_checkpoint_roundtrip_rebuilds_the_model(tmp_path: Path) -> None:
    result = import_state_dict(_tiny(), "pyslowfast", preset="slowfast_tiny")
    ckpt = Checkpoint(
        model=result.model.state_dict(),
        preset="slowfast_tiny",
        preset_overrides=result.preset_overrides,
        classes=list(result.model.class_ids),
        source={"format": "pyslowfast"},
    )
    save_checkpoint(tmp_path / "a" / "tiny.ckpt", ckpt)
    loaded = load_checkpoint(tmp_path / "a" / "tiny.ckpt")
    assert loaded.preset == "slowfast_tiny" and loaded.classes == list(range(1, 81))
    model = build_model(loaded)
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "raw.pth"
    torch.save({"model_state": {}}, path)
    with pytest.raises(ValueError, match="not an avaserve checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("window", [{"bank_window": 2}, {"bank_window_seconds": 5}])
def test_old_training_layout_loads_with_its_architecture(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, window: dict[str, int]
) -> None:
    """The layout training wrote before the one format (numpy RNG state, config, class_ids,
    no 'format'): the safe loader reads it, the architecture comes from its config (a
    time-aware stage-2 LFB with appearance and recall), a warning names the file. Its window
    is the old half-width (2 s each side) or the same window in seconds (5): same slots."""
    import random

    import numpy as np

    from core.bank_layout import slot_offsets

    classes = (1, 11, 12, 80)
    options = {
        "short_side": 64,
        "class_ids": classes,
        "use_lfb": True,
        "lfb_dim_bank": 40,
        "use_global": True,
        "lfb_slot_offsets": slot_offsets(-2, 5, 2),
        "appearance_grid": (6, 1),
        "lfb_recall_classes": len(classes),
    }
    from models.presets import slowfast_tiny

    model = slowfast_tiny(**options)
    config = {
        "stage": "stage2",
        "preset": "slowfast_tiny",
        "preset_overrides": {"short_side": 64},
        "bank_dir": "bank",
        **window,
        "bank_persons_per_second": 2,
        "bank_time": True,
        "bank_recall": True,
        "use_global": True,
    }
    path = tmp_path / "final.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": {},
            "iteration": 7,
            "config": config,
            "rng": {"numpy": np.random.get_state(), "python": random.getstate()},
            "class_ids": list(classes),
            "bank_dim": 40,
            "stage": "stage2",
        },
        path,
    )
    with caplog.at_level("WARNING"):
        loaded = load_checkpoint(path)
    assert "old training checkpoint" in caplog.text and "final.pt" in caplog.text
    assert loaded.training is not None and loaded.training["iteration"] == 7
    rebuilt = build_model(loaded)
    assert rebuilt.lfb is not None and rebuilt.lfb.num_slots == 10
    assert loaded.preset_overrides["lfb_slot_offsets"] == options["lfb_slot_offsets"]
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_the_architecture_comes_from_the_options_not_the_keys(tmp_path: Path) -> None:
    """A state dict with LFB weights under options that say no LFB is refused: nothing is
    inferred from key names."""
    from models.presets import slowfast_tiny

    model = slowfast_tiny(use_lfb=True, short_side=64)
    path = tmp_path / "c.pt"
    save_checkpoint(path, Checkpoint(model.state_dict(), "slowfast_tiny", {"short_side": 64}, []))
    ckpt = load_checkpoint(path)
    ckpt.classes = list(model.class_ids)
    with pytest.raises(ValueError, match="does not fit"):
        build_model(ckpt)


class _Payload:
    """Stands for pickled code in a checkpoint."""


def test_pickled_objects_need_the_trust_flag(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "avaserve-checkpoint", "obj": _Payload()}, path)
    with pytest.raises(ValueError, match="not plain data"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="version"):  # read, then refused for its fields
        load_checkpoint(path, trust_pickle=True)


# ---- pytorchvideo: the real builder, and outputs equal after import ------------------------


class _StandInRoIAlign(nn.Module):
    """torchvision.ops.RoIAlign's constructor and semantics (``aligned=False`` by default,
    ``sampling_ratio=0`` adaptive), computed by our own RoIAlign code."""

    def __init__(
        self,
        output_size: tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        fn = roi_align if self.sampling_ratio > 0 else roi_align_reference
        return fn(
            features,
            rois,
            output_size=self.output_size,  # type: ignore[arg-type]
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )


@pytest.fixture
def pytorchvideo_detection(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """pytorchvideo's ``slowfast_r50_detection`` builder, with a torchvision stand-in."""
    if importlib.util.find_spec("pytorchvideo") is None:
        pytest.skip("pytorchvideo not installed (optional reference)")
    if importlib.util.find_spec("torchvision") is None:
        stub_module(monkeypatch, "torchvision.ops", RoIAlign=_StandInRoIAlign)
        for name in [m for m in sys.modules if m.startswith("pytorchvideo")]:
            monkeypatch.delitem(sys.modules, name)  # re-import against the stand-in
    from pytorchvideo.models.hub.slowfast import slowfast_r50_detection

    yield slowfast_r50_detection


def test_pytorchvideo_detection_state_dict_loads_strictly(pytorchvideo_detection: Any) -> None:
    ref = pytorchvideo_detection(pretrained=False)
    source = ref.state_dict()
    assert "detection_head.proj.weight" in source
    result = import_state_dict(source, "pytorchvideo", preset="slowfast_r50_ava")
    assert result.report.ok and len(result.report.mapped) == len(source) == 662
    _assert_values_landed(source, result)


def test_pytorchvideo_detection_outputs_match_after_import(pytorchvideo_detection: Any) -> None:
    """Same weights, same logits as pytorchvideo's slowfast_r50_detection (random init, BN
    statistics randomised), 8/32 frames at 96x96, two boxes reaching past the border.

    pytorchvideo runs torchvision's RoIAlign with aligned=False and adaptive sampling; the
    import sets both. (tests/models/test_upstream.py compares more boxes and sizes, and the
    served probabilities.)
    """
    torch.manual_seed(0)
    ref = pytorchvideo_detection(pretrained=False).eval()
    randomise_norms(ref)
    ref.detection_head.activation = None  # compare logits; pytorchvideo applies a sigmoid

    result = import_state_dict(ref.state_dict(), "pytorchvideo", preset="slowfast_r50_ava")
    ours = result.model
    # pytorchvideo's defaults, set by the import: torchvision RoIAlign aligned=False,
    # adaptive sampling; a sigmoid per class.
    assert (ours.roi_head.aligned, ours.roi_head.sampling_ratio) == (False, 0)
    assert ours.output_activation == "sigmoid"

    g = torch.Generator().manual_seed(1)
    slow = torch.randn(1, 3, 8, 96, 96, generator=g)  # (B, 3, T_s, H, W)
    fast = torch.randn(1, 3, 32, 96, 96, generator=g)  # (B, 3, T_f, H, W)
    # (K, 5) = (batch_index, x1, y1, x2, y2) in input pixels
    boxes = torch.tensor([[0.0, -12.0, -14.0, 108.0, 102.0], [0.0, -20.5, -6.25, 100.5, 109.0]])
    with torch.no_grad():
        expected = ref([slow, fast], boxes)  # (K, 80)
        got = ours(slow, fast, boxes).action_logits  # (K, 80)
    assert float(expected.abs().max()) > 0.1  # not a degenerate comparison
    diff = float((got - expected).abs().max())
    print(f"max abs diff vs pytorchvideo slowfast_r50_detection: {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pyslowfast_torch_file_named_pkl(tmp_path: Path, zip_format: bool) -> None:
    """PySlowFast's zoo has torch.save files named .pkl (CHECKPOINT_TYPE: pytorch, e.g.
    SLOWFAST_32x2_R101_50_50.pkl); they read as PySlowFast state dicts, not Caffe2 blobs."""
    path = tmp_path / "SLOWFAST_32x2_R101_50_50.pkl"
    torch.save({"model_state": _tiny()}, path, _use_new_zipfile_serialization=zip_format)
    source = read_source_state(path, "pyslowfast")
    assert source.source_format == "pyslowfast"
    assert import_state_dict(source, preset="slowfast_tiny").report.ok


@pytest.mark.parametrize(("overrides", "frames"), [({}, 32), ({"num_frames": 64}, 64)])
def test_caffe2_r101_50_50_layout(overrides: dict[str, Any], frames: int) -> None:
    """The zoo's SLOWFAST_{32,64}x2_R101_50_50 .pkl layout (Caffe2 names, non-local after
    res4 blocks 6/13/20, res4 kernels 3 then 1, fusion kernel 5), at a small width: strict,
    with the _50_50 non-local form assumed; 64x2 is the same network with 64 frames."""
    arch = L.Arch(
        depth=101,
        stem_dim=8,
        fusion_kernel=5,
        nonlocal_blocks={2: (6, 13, 20)},
        num_block_temp_kernel=(3, 4, 6, 3),
    )
    source = SourceState(L.random_state(L.layout("caffe2", arch)), "caffe2")
    result = import_state_dict(source, preset="slowfast_r101_ava", overrides=overrides)
    assert result.report.ok and result.report.unmapped == []
    _assert_values_landed(source.tensors, result)
    over = result.preset_overrides
    assert over["roi_aligned"] is False and over["fusion_kernel"] == 5
    assert over["nonlocal_instantiation"] == "dot_product" and over["nonlocal_pool"] == (2, 2, 2)
    info = result.model.preset_info
    assert info is not None and info.num_frames == frames and info.slow_frames == frames // 4
    asks_for_frames = any("--set num_frames=64" in n for n in result.report.notes)
    assert asks_for_frames == (frames == 32)

"""SlowFast backbone and non-local block: sizes, names, init, errors and ONNX export."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from random_weights import randomise_norms
from torch import nn

from models.backbone import SlowFast, create_slowfast
from models.nonlocal_block import NonLocalBlock

# pytorchvideo's create_slowfast (depth 50/101, AVA res5 stride 1 + dilation 2, 80 classes)
# with its RoI head measures 33,828,888 and 62,175,640 parameters; the head's
# Linear(2304, 80) holds 184,400 of them.
R50_BACKBONE_PARAMS = 33_828_888 - 184_400
R101_BACKBONE_PARAMS = 62_175_640 - 184_400

TINY: dict[str, Any] = {"depth": 18, "stem_dim": 8, "beta_inv": 4}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _clips(batch: int, t_slow: int, size: int, alpha: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    slow = torch.randn(batch, 3, t_slow, size, size, generator=g)  # (B, 3, T_s, H, W)
    fast = torch.randn(batch, 3, alpha * t_slow, size, size, generator=g)  # (B, 3, T_f, H, W)
    return slow, fast


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(50, R50_BACKBONE_PARAMS), (101, R101_BACKBONE_PARAMS)],
)
def test_parameter_count_matches_pytorchvideo(depth: int, expected: int) -> None:
    model = create_slowfast(depth=depth)
    assert _num_params(model) == expected
    assert model.out_channels == (2048, 256)
    assert model.spatial_stride == 16


def test_ava_res5_adds_no_parameters() -> None:
    kinetics = create_slowfast(depth=50, spatial_strides=(1, 2, 2, 2), spatial_dilations=(1,) * 4)
    assert _num_params(kinetics) == R50_BACKBONE_PARAMS
    assert kinetics.spatial_stride == 32


@pytest.mark.parametrize(
    ("kwargs", "t_slow", "size", "slow_shape", "fast_shape"),
    [
        # tiny CPU preset shape: basic blocks, widths 8..64, fast 2..16
        (TINY, 4, 64, (64, 4, 4, 4), (16, 16, 4, 4)),
        ({**TINY, "spatial_strides": (1, 2, 2, 2)}, 4, 64, (64, 4, 2, 2), (16, 16, 2, 2)),
        ({**TINY, "alpha": 2, "beta_inv": 8}, 2, 32, (64, 2, 2, 2), (8, 4, 2, 2)),
        # R50 with its real widths at a tiny input
        ({"depth": 50}, 2, 32, (2048, 2, 2, 2), (256, 8, 2, 2)),
        ({"depth": 50, "stem_dim": 8, "beta_inv": 4}, 2, 32, (256, 2, 2, 2), (64, 8, 2, 2)),
    ],
)
def test_forward_shapes(
    kwargs: dict[str, Any],
    t_slow: int,
    size: int,
    slow_shape: tuple[int, ...],
    fast_shape: tuple[int, ...],
) -> None:
    model = create_slowfast(**kwargs).eval()
    slow, fast = _clips(2, t_slow, size, alpha=kwargs.get("alpha", 4))
    with torch.no_grad():
        out = model(slow, fast)
    assert isinstance(out, list) and len(out) == 2
    assert tuple(out[0].shape) == (2, *slow_shape)
    assert tuple(out[1].shape) == (2, *fast_shape)
    assert model.out_channels == (slow_shape[0], fast_shape[0])
    assert size // model.spatial_stride == slow_shape[-1]


def test_key_names_are_stable() -> None:
    model = create_slowfast(**TINY, nonlocal_stages=(2,), nonlocal_blocks=((1,),))
    keys = set(model.state_dict())
    for key in [
        "stem.slow.conv.weight",
        "stem.fast.norm.running_var",
        "fusions.0.conv.weight",
        "fusions.3.norm.bias",
        "stages.0.slow.blocks.0.shortcut_conv.weight",
        "stages.0.slow.blocks.0.conv_a.weight",
        "stages.3.fast.blocks.1.norm_b.weight",
        "stages.2.slow.nonlocals.1.conv_theta.weight",
        "stages.2.slow.nonlocals.1.norm.weight",
    ]:
        assert key in keys, key
    assert not any(k.startswith("fusions.4") for k in keys)
    r50 = set(create_slowfast(depth=50).state_dict())
    assert "stages.3.slow.blocks.2.conv_c.weight" in r50
    assert "stages.3.slow.blocks.1.shortcut_conv.weight" not in r50  # identity shortcut


def test_fusion_without_norm_has_conv_only() -> None:
    model = create_slowfast(**TINY, fusion_norm=False)
    keys = set(model.state_dict())
    assert "fusions.0.conv.weight" in keys
    assert not any(k.startswith("fusions.0.norm") for k in keys)
    out = model.eval()(*_clips(1, 2, 32))
    assert out[0].shape[1] == model.out_channels[0]


def test_fusion_conv_matches_published_shape() -> None:
    conv = create_slowfast(depth=50).fusions[0].conv
    assert isinstance(conv, nn.Conv3d)
    assert conv.weight.shape == (16, 8, 7, 1, 1)
    assert conv.stride == (4, 1, 1) and conv.padding == (3, 0, 0)


def test_nonlocal_block_is_identity_with_zero_init() -> None:
    block = NonLocalBlock(16, pool_size=(1, 2, 2), zero_init_final_norm=True).eval()
    x = torch.randn(2, 16, 3, 6, 6)  # (B, C, T, H, W)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    live = NonLocalBlock(16, pool_size=None, zero_init_final_norm=False).eval()
    with torch.no_grad():
        y = live(x)
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_nonlocal_block_gradients_reach_embeddings() -> None:
    block = NonLocalBlock(8, zero_init_final_norm=False)
    block(torch.randn(2, 8, 2, 4, 4)).sum().backward()
    for conv in (block.conv_theta, block.conv_phi, block.conv_g, block.conv_out):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_model_with_nonlocal_equals_plain_model_at_init() -> None:
    with_nl = create_slowfast(**TINY, nonlocal_stages=(1, 2)).eval()
    n_nl = sum(isinstance(m, NonLocalBlock) for m in with_nl.modules())
    assert n_nl == 2  # every other block from 1: block 1 of res3 and of res4 (2 blocks each)
    plain = create_slowfast(**TINY).eval()
    missing, unexpected = plain.load_state_dict(with_nl.state_dict(), strict=False)
    assert not missing and all(".nonlocals." in k for k in unexpected)
    slow, fast = _clips(1, 4, 64)
    with torch.no_grad():
        for a, b in zip(with_nl(slow, fast), plain(slow, fast), strict=True):
            assert torch.equal(a, b)


def test_nonlocal_placement_r101_ava() -> None:
    """PySlowFast's AVA R101 non-local config: res4 blocks 6, 13, 20 of the slow path."""
    model = create_slowfast(depth=101, nonlocal_stages=(2,), nonlocal_blocks=((6, 13, 20),))
    names = {n for n, m in model.named_modules() if isinstance(m, NonLocalBlock)}
    assert names == {f"stages.2.slow.nonlocals.{b}" for b in (6, 13, 20)}


def test_zero_init_residual() -> None:
    model = create_slowfast(depth=50, stem_dim=8, zero_init_residual=True)
    final = model.stages[0].slow.blocks[0].norm_c
    assert torch.count_nonzero(final.weight) == 0
    assert torch.count_nonzero(model.stages[0].slow.blocks[0].norm_a.weight) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 34}, "depth must be one of"),
        ({"stem_dim": 12, "beta_inv": 8}, "divisible by beta_inv"),
        ({"fusion_kernel": 6}, "fusion_kernel must be odd"),
        ({"alpha": 0}, "must be >= 1"),
        ({"spatial_strides": (1, 2, 2)}, "spatial_strides needs 4 entries"),
        ({"slow_temporal_kernels": ((1,), (1,), ())}, "slow_temporal_kernels needs 4"),
        ({"nonlocal_stages": (4,)}, "nonlocal_stages entries"),
        ({"nonlocal_stages": (0,), "nonlocal_blocks": ((2,),)}, "out of range"),
        ({"nonlocal_stages": (0, 1), "nonlocal_blocks": ((1,),)}, "one entry per"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_slowfast(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("slow_shape", "fast_shape", "match"),
    [
        ((1, 3, 4, 32, 32), (1, 3, 8, 32, 32), "alpha=4"),
        ((1, 3, 4, 32, 32), (1, 3, 16, 32, 48), "share batch and H, W"),
        ((3, 4, 32, 32), (3, 16, 32, 32), "5-D"),
    ],
)
def test_bad_inputs_raise(
    slow_shape: tuple[int, ...], fast_shape: tuple[int, ...], match: str
) -> None:
    model = create_slowfast(**TINY)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(slow_shape), torch.zeros(fast_shape))


def _export_tiny(model: SlowFast, path: Path, dynamo: bool) -> None:
    slow, fast = _clips(1, 4, 64)
    kwargs: dict[str, Any] = {
        "input_names": ["slow", "fast"],
        "output_names": ["slow_feat", "fast_feat"],
        "opset_version": 17,
        "dynamo": dynamo,
    }
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=64)
        kwargs["dynamic_shapes"] = {"slow": {0: batch}, "fast": {0: batch}}
    else:
        kwargs["dynamic_axes"] = {
            n: {0: "batch"} for n in ("slow", "fast", "slow_feat", "fast_feat")
        }
    torch.onnx.export(model, (slow, fast), str(path), **kwargs)


@pytest.mark.parametrize(
    "exporter",
    [
        "torchscript",
        pytest.param(
            "dynamo",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("onnxscript") is None,
                reason="torch.onnx.export(dynamo=True) needs onnxscript, not installed",
            ),
        ),
    ],
)
def test_onnx_export_matches_pytorch(tmp_path: Path, exporter: str) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    # A live (non-zero-init) non-local block so its ops are in the graph and checked.
    model = create_slowfast(
        **TINY, nonlocal_stages=(2,), nonlocal_blocks=((1,),), nonlocal_zero_init=False
    ).eval()
    randomise_norms(model)
    path = tmp_path / "backbone.onnx"
    _export_tiny(model, path, dynamo=exporter == "dynamo")

    graph = onnx.load(str(path))
    domains = {node.domain for node in graph.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        slow, fast = _clips(batch, 4, 64)
        with torch.no_grad():
            expected = model(slow, fast)
        got = session.run(None, {"slow": slow.numpy(), "fast": fast.numpy()})
        for e, g in zip(expected, got, strict=True):
            assert g.shape == tuple(e.shape)
            assert float(np.abs(e.numpy()).max()) > 0.1  # not a degenerate all-zero check
            np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-4)


def _pytorchvideo_key_to_ours(key: str) -> str:
    pathway = ("slow", "fast")
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)\.(\w+)", key):
        return f"stem.{pathway[int(m[1])]}.{m[2]}.{m[3]}"
    if m := re.fullmatch(
        r"blocks\.(\d)\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", key
    ):
        return f"fusions.{m[1]}.{'norm' if m[2] == 'norm' else 'conv'}.{m[3]}"
    m = re.fullmatch(r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.(.+)", key)
    assert m is not None, key
    tail = m[4].replace("branch1_", "shortcut_").replace("branch2.", "")
    return f"stages.{int(m[1]) - 1}.{pathway[int(m[2])]}.blocks.{m[3]}.{tail}"


@pytest.mark.parametrize("ava", [True, False])
def test_equals_pytorchvideo_when_available(monkeypatch: pytest.MonkeyPatch, ava: bool) -> None:
    """Same weights, same outputs as pytorchvideo's create_slowfast (a reference, not a
    dependency: skipped where it is not installed). pytorchvideo imports torchvision only
    for its heads, so a stub stands in for it during this test when it is absent."""
    if importlib.util.find_spec("pytorchvideo") is None:
        pytest.skip("pytorchvideo not installed (optional reference)")
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.RoIAlign = nn.Module  # type: ignore[attr-defined]
        tv.ops = ops  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torchvision", tv)
        monkeypatch.setitem(sys.modules, "torchvision.ops", ops)
    from pytorchvideo.models.slowfast import create_slowfast as ptv_create_slowfast

    strides = (1, 2, 2, 1) if ava else (1, 2, 2, 2)
    dilations = (1, 1, 1, 2) if ava else (1, 1, 1, 1)
    ref = ptv_create_slowfast(
        model_depth=50,
        stem_dim_outs=(16, 2),
        stage_spatial_strides=(strides, strides),
        stage_conv_b_dilations=(tuple((1, d, d) for d in dilations),) * 2,
        head=None,
        head_pool=None,
    ).eval()
    ours = create_slowfast(
        depth=50, stem_dim=16, spatial_strides=strides, spatial_dilations=dilations
    ).eval()
    randomise_norms(ref)
    mapped = {_pytorchvideo_key_to_ours(k): v for k, v in ref.state_dict().items()}
    ours.load_state_dict(mapped, strict=True)

    slow, fast = _clips(2, 2, 32)
    with torch.no_grad():
        x = [slow, fast]
        for block in ref.blocks[:5]:  # stem+fusion, res2..res5 (the rest is the head)
            x = block(x)
        y = ours(slow, fast)
    for a, b in zip(x, y, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)

"""PySlowFast's own AVA models, imported with ``avaserve import-checkpoint``, compute what
PySlowFast computes.

The reference is the ``slowfast`` 1.0 package (PySlowFast's model builder, config and
checkpoint code), installed by the Makefile with ``--no-deps``: its detectron2 requirement
cannot be met here, so ``detectron2.layers.ROIAlign`` is stood in for by the independent
RoIAlign of ``roi_reference.py`` (not ``models/roi.py``), with detectron2's constructor.
Each model is built from the values of a published ``configs/AVA`` yaml set in code, with
random weights (BatchNorm statistics and gammas randomised so that no block is an
identity), and saved as PySlowFast publishes models: a ``.pyth`` with ``model_state`` and
the config text, or a Caffe2 ``.pkl`` of numpy ``blobs`` whose names PySlowFast's own
Caffe2 name converter maps back to every parameter.

Compared, for two input sizes and boxes that touch the frame edge, are small (< 7 feature
cells) and large (> 14 cells, adaptive RoIAlign sampling 3 and more): backbone features,
person features, logits and served probabilities, max abs difference <= 1e-5 per box.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from roi_reference import RoIAlignStandIn
from torch import nn
from typer.testing import CliRunner

from bench.pyslowfast_random_checkpoint import (
    COMMON,
    R101_50_50,
    configure,
    fake_detectron2,
    randomise,
)
from core.probs import action_probabilities
from models.checkpoints import build_model, load_checkpoint

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("slowfast") is None,
    reason="slowfast 1.0 (PySlowFast) not installed; `make` installs it with --no-deps",
)

TOLERANCE = 1e-5
# Fast frames of the test clips: 2 slow frames at alpha 4, so the _50_50 non-local pool
# [2, 2, 2] still has a time axis to pool. Small clips keep R101 within seconds on 2 cores.
NUM_FRAMES = 8
# Half the published 64 (a ResNet's widths all scale with it): the same layout at a quarter
# of the compute; the importer reads the widths off the weights.
WIDTH = 32


class Detectron2RoIAlign(RoIAlignStandIn):
    """``detectron2.layers.ROIAlign(output_size, spatial_scale, sampling_ratio,
    aligned=True)``, computed by the independent reference."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, aligned)


@pytest.fixture(scope="module")
def pyslowfast() -> Iterator[types.SimpleNamespace]:
    """PySlowFast's config, model and Caffe2 name converter, importing against a fake
    ``detectron2`` that holds only the RoIAlign stand-in."""
    saved = {k: v for k, v in sys.modules.items() if k.startswith(("detectron2", "slowfast"))}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(fake_detectron2(Detectron2RoIAlign))
    try:
        from slowfast.config.defaults import get_cfg
        from slowfast.models.video_model_builder import SlowFastModel
        from slowfast.utils.c2_model_loading import get_name_convert_func

        yield types.SimpleNamespace(
            get_cfg=get_cfg, SlowFastModel=SlowFastModel, c2_name=get_name_convert_func()
        )
    finally:
        for name in [k for k in sys.modules if k.startswith(("detectron2", "slowfast"))]:
            del sys.modules[name]
        sys.modules.update(saved)


# PySlowFast's configs/AVA yamls at this test's width and clip length.
_COMMON: dict[str, Any] = {
    **COMMON,
    "RESNET.ZERO_INIT_FINAL_BN": True,
    "RESNET.WIDTH_PER_GROUP": WIDTH,
    "MODEL.DROPOUT_RATE": 0.5,
    "DATA.NUM_FRAMES": NUM_FRAMES,
}
CONFIGS: dict[str, dict[str, Any]] = {
    # configs/AVA/SLOWFAST_32x2_R50_SHORT.yaml
    "SLOWFAST_32x2_R50_SHORT": {
        **_COMMON,
        "DETECTION.ALIGNED": True,
        "SLOWFAST.FUSION_KERNEL_SZ": 7,
        "RESNET.DEPTH": 50,
        "NONLOCAL.LOCATION": [[[], []], [[], []], [[], []], [[], []]],
        "NONLOCAL.POOL": [[[1, 2, 2], [1, 2, 2]]] * 4,
        "DATA.TEST_CROP_SIZE": 224,
    },
    # configs/AVA/c2/SLOWFAST_32x2_R101_50_50.yaml (SLOWFAST_64x2_R101_50_50 differs only
    # in DATA.NUM_FRAMES)
    "SLOWFAST_32x2_R101_50_50": {**_COMMON, **R101_50_50},
}


def _build(ref: types.SimpleNamespace, name: str) -> tuple[Any, nn.Module]:
    cfg = configure(ref.get_cfg(), CONFIGS[name])
    torch.manual_seed(0)
    model = ref.SlowFastModel(cfg).eval()
    randomise(model, torch.Generator().manual_seed(1), nonlocal_bias=True)
    return cfg, model


def _caffe2_name(key: str, last_block: dict[int, int]) -> str | None:
    """PySlowFast parameter name -> the Caffe2 blob name of its published ``.pkl`` files
    (checked against PySlowFast's own converter in the test). ``last_block[s]`` is the last
    block index of stage ``s`` (res2..res5)."""
    bn = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    wb = {"weight": "w", "bias": "b"}
    if key.endswith("num_batches_tracked"):
        return None
    if m := re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)\.(\w+)", key):
        t = "t_" if m[1] == "1" else ""
        return f"{t}conv1_{wb[m[3]]}" if m[2] == "conv" else f"{t}res_conv1_bn_{bn[m[3]]}"
    if m := re.fullmatch(r"s(\d)_fuse\.(conv_f2s|bn)\.(\w+)", key):
        # Named after the fast layer the lateral reads: the stem pool, then the last
        # block's branch2c BN of res2..res4.
        stage = int(m[1])
        base = (
            "t_pool1_subsample"
            if stage == 1
            else f"t_res{stage}_{last_block[stage]}_branch2c_bn_subsample"
        )
        return f"{base}_{wb[m[3]]}" if m[2] == "conv_f2s" else f"{base}_bn_{bn[m[3]]}"
    if m := re.fullmatch(
        r"s(\d)\.pathway(\d)_res(\d+)\.(branch1|branch2\.[abc])(_bn)?\.(\w+)", key
    ):
        t = "t_" if m[2] == "1" else ""
        branch = m[4].replace(".", "")
        base = f"{t}res{m[1]}_{m[3]}_{branch}"
        return f"{base}_bn_{bn[m[6]]}" if m[5] else f"{base}_{wb[m[6]]}"
    if m := re.fullmatch(r"s(\d)\.pathway0_nonlocal(\d+)\.(conv_\w+|bn)\.(\w+)", key):
        base = f"nonlocal_conv{m[1]}_{m[2]}"
        if m[3] == "bn":
            return f"{base}_bn_{bn[m[4]]}"
        return f"{base}_{m[3].removeprefix('conv_')}_{wb[m[4]]}"
    if m := re.fullmatch(r"head\.projection\.(\w+)", key):
        return f"pred_{wb[m[1]]}"
    raise AssertionError(f"no Caffe2 name for {key}")


def _write_caffe2(path: Path, state: dict[str, torch.Tensor], c2_name: Any) -> None:
    last_block: dict[int, int] = {}
    for key in state:
        if m := re.fullmatch(r"s(\d)\.pathway1_res(\d+)\..+", key):
            last_block[int(m[1])] = max(last_block.get(int(m[1]), 0), int(m[2]))
    blobs: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = _caffe2_name(key, last_block)
        if name is None:
            continue
        # PySlowFast's own converter must map the blob back to this parameter.
        assert c2_name(name) == key, (name, c2_name(name), key)
        blobs[name] = value.detach().numpy().copy()
    blobs["model_iter"] = np.array(1000)  # solver state, as in the zoo files
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)


def _save(
    tmp: Path, ref: types.SimpleNamespace, name: str, cfg: Any, model: nn.Module, fmt: str
) -> Path:
    if fmt == "pyth":
        path = tmp / f"{name}.pyth"
        torch.save({"epoch": 1, "model_state": model.state_dict(), "cfg": cfg.dump()}, path)
    else:
        path = tmp / f"{name}.pkl"
        _write_caffe2(path, model.state_dict(), ref.c2_name)
    return path


def _import(src: Path, tmp: Path, preset: str) -> Any:
    from avaserve.cli import app

    out = tmp / "imported.ckpt"
    result = CliRunner().invoke(
        app,
        ["import-checkpoint", "--format", "pyslowfast", str(src), "--preset", preset,
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0 unmapped source keys, 0 missing target keys, 0 shape mismatches" in result.output
    return build_model(load_checkpoint(out))


def _pyslowfast_forward(
    model: nn.Module, slow: torch.Tensor, fast: torch.Tensor, boxes: torch.Tensor
) -> dict[str, torch.Tensor]:
    """PySlowFast's forward, keeping the backbone output and the projection's in/out."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.s5.register_forward_hook(lambda _m, _i, o: seen.update(slow=o[0], fast=o[1])),
        model.head.projection.register_forward_hook(
            lambda _m, i, o: seen.update(person=i[0], logits=o)
        ),
    ]
    try:
        seen["probs"] = model([slow, fast], boxes)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _boxes(height: int, width: int) -> torch.Tensor:
    """(K, 5) = (batch_index, x1, y1, x2, y2) in input pixels: touching the frame's edges,
    small (< 7 feature cells at stride 16), medium, large (> 14 cells: adaptive sampling
    3-4 points per bin side), one per clip of a batch of 2."""
    return torch.tensor(
        [
            [0.0, 0.0, 0.0, width, height],  # the whole frame: every edge
            [0.0, 0.0, 10.5, 37.0, 61.25],  # small, at the left edge
            [1.0, width - 30.0, height - 44.0, width, height],  # small, bottom-right corner
            [1.0, 7.0, 3.5, width - 9.0, height - 2.0],  # medium
            [0.0, -120.0, -96.0, width + 140.0, height + 110.0],  # large, past every edge
            [1.0, -40.0, 5.0, width + 200.0, height - 5.0],  # wide (adaptive 3+ in x)
        ]
    )


@pytest.mark.parametrize(
    ("config", "formats", "preset"),
    [
        ("SLOWFAST_32x2_R50_SHORT", ("pyth",), "slowfast_r50_ava"),
        ("SLOWFAST_32x2_R101_50_50", ("pkl", "pyth"), "slowfast_r101_ava"),
    ],
    ids=["r50-short", "r101-50-50"],
)
def test_imported_pyslowfast_model_computes_what_pyslowfast_does(
    pyslowfast: types.SimpleNamespace,
    tmp_path: Path,
    config: str,
    formats: tuple[str, ...],
    preset: str,
) -> None:
    start = time.perf_counter()
    cfg, ref = _build(pyslowfast, config)
    imported = {
        fmt: _import(_save(tmp_path, pyslowfast, config, cfg, ref, fmt), tmp_path, preset)
        for fmt in formats
    }
    for ours in imported.values():
        assert ours.output_activation == "sigmoid" and ours.roi_head.sampling_ratio == 0
        assert ours.backbone.out_channels == (WIDTH * 32, WIDTH * 4)
        if config.endswith("_50_50"):
            assert ours.backbone.stages[2].slow.nonlocals["13"].instantiation == "dot_product"
            assert ours.backbone.stages[2].slow.blocks[6].conv_a.kernel_size == (1, 1, 1)

    g = torch.Generator().manual_seed(2)
    worst: dict[str, float] = {}
    for height, width in ((96, 128), (80, 64)):
        slow = torch.randn(2, 3, NUM_FRAMES // 4, height, width, generator=g)
        fast = torch.randn(2, 3, NUM_FRAMES, height, width, generator=g)
        boxes = _boxes(height, width)
        with torch.no_grad():
            expected = _pyslowfast_forward(ref, slow, fast, boxes)
        assert float(expected["logits"].std()) > 0.1  # not a degenerate comparison
        for fmt, ours in imported.items():
            with torch.no_grad():
                feats = ours.backbone(slow, fast)
                got = ours(slow, fast, boxes)
            served = action_probabilities(
                got.action_logits.numpy(), ours.pose_columns, ours.output_activation
            )
            pairs = {
                "slow features": (feats[0], expected["slow"]),
                "fast features": (feats[1], expected["fast"]),
                "person features": (got.person_features, expected["person"]),
                "logits": (got.action_logits, expected["logits"]),
                "probabilities": (torch.from_numpy(served), expected["probs"]),
            }
            for what, (a, b) in pairs.items():
                assert a.shape == b.shape, what
                # (K,) per box for the per-person outputs; one figure per feature map
                per_item = (a - b).abs().flatten(1).amax(1)
                key = f".{fmt} {what}"
                worst[key] = max(worst.get(key, 0.0), float(per_item.max()))
                assert bool((per_item <= TOLERANCE).all()), (fmt, what, (height, width), per_item)
    figures = ", ".join(f"{k} {v:.2g}" for k, v in worst.items())
    print(f"{config}: max abs diff {figures} ({time.perf_counter() - start:.1f} s)")


@pytest.mark.parametrize("instantiation", ["dot_product", "softmax"])
@pytest.mark.parametrize("pool", [None, (1, 2, 2), (2, 2, 2)], ids=["no-pool", "1x2x2", "2x2x2"])
def test_nonlocal_block_equals_pyslowfast_nonlocal(
    instantiation: str, pool: tuple[int, int, int] | None
) -> None:
    """Both instantiations, with and without pooling (PySlowFast NONLOCAL.POOL), against
    PySlowFast's own ``Nonlocal`` with the same weights."""
    from slowfast.models.nonlocal_helper import Nonlocal

    from models.nonlocal_block import NonLocalBlock

    torch.manual_seed(0)
    ref = Nonlocal(
        16, 8, pool_size=None if pool is None else list(pool), instantiation=instantiation
    )
    ours = NonLocalBlock(16, 8, pool_size=pool, instantiation=instantiation)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.3)
        ref.bn.running_var.uniform_(0.5, 1.5)
        ref.bn.running_mean.normal_(0.0, 0.1)
    missing = ours.load_state_dict(
        {k.replace("bn.", "norm."): v for k, v in ref.state_dict().items()}, strict=True
    )
    assert not missing.missing_keys
    ref.eval()
    ours.eval()
    x = torch.randn(2, 16, 4, 6, 5)  # (B, C, T, H, W)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert float((expected - x).abs().max()) > 0.1  # the block does something
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

"""Write an untrained PySlowFast AVA checkpoint, as PySlowFast publishes them, for trying the
import -> export -> annotate path without the real weights (which cannot be downloaded here).

    python bench/pyslowfast_random_checkpoint.py SLOWFAST_32x2_R101_50_50 OUT.pyth [--seed 0]

Builds PySlowFast's own ``SlowFastModel`` (the ``slowfast`` 1.0 package, installed by the
Makefile with ``--no-deps``) from the model values of ``configs/AVA/c2/<CONFIG>.yaml`` set
in code, randomises its BatchNorm statistics and gammas (so no block is an identity), and
saves ``{"model_state": ..., "cfg": cfg.dump()}`` like PySlowFast's trainer. The detection
head's ``detectron2.layers.ROIAlign`` is only constructed here, never run, so a fake
``detectron2`` module with a placeholder class is enough.

Then, for example (README "Using real weights")::

    avaserve import-checkpoint --format pyslowfast OUT.pyth --preset slowfast_r101_ava --out r101.pt
    avaserve export --checkpoint r101.pt --detector yolox:yolox_nano.onnx \\
        --parity-video VIDEO --out bundles/r101
    avaserve annotate VIDEO --bundle bundles/r101
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The model-defining values every PySlowFast AVA yaml sets alike (DATA.NUM_FRAMES and the
# per-config ones below aside); tests/models/test_pyslowfast_reference.py builds from them too.
COMMON: dict[str, Any] = {
    "DETECTION.ENABLE": True,
    "SLOWFAST.ALPHA": 4,
    "SLOWFAST.BETA_INV": 8,
    "SLOWFAST.FUSION_CONV_CHANNEL_RATIO": 2,
    "RESNET.WIDTH_PER_GROUP": 64,
    "RESNET.NUM_GROUPS": 1,
    "RESNET.TRANS_FUNC": "bottleneck_transform",
    "RESNET.STRIDE_1X1": False,
    "RESNET.NUM_BLOCK_TEMP_KERNEL": [[3, 3], [4, 4], [6, 6], [3, 3]],
    "RESNET.SPATIAL_DILATIONS": [[1, 1], [1, 1], [1, 1], [2, 2]],
    "RESNET.SPATIAL_STRIDES": [[1, 1], [2, 2], [2, 2], [1, 1]],
    "NONLOCAL.GROUP": [[1, 1], [1, 1], [1, 1], [1, 1]],
    "NONLOCAL.INSTANTIATION": "dot_product",
    "MODEL.NUM_CLASSES": 80,
    "MODEL.ARCH": "slowfast",
    "DATA.SAMPLING_RATE": 2,
}
# configs/AVA/c2/*.yaml: the Caffe2-trained models (unaligned RoIAlign, 256 px test crop).
_C2: dict[str, Any] = {**COMMON, "DETECTION.ALIGNED": False, "DATA.TEST_CROP_SIZE": 256}
# configs/AVA/c2/SLOWFAST_32x2_R101_50_50.yaml beyond COMMON (64x2 differs only in frames).
R101_50_50: dict[str, Any] = {
    "DETECTION.ALIGNED": False,
    "DATA.TEST_CROP_SIZE": 256,
    "SLOWFAST.FUSION_KERNEL_SZ": 5,
    "RESNET.DEPTH": 101,
    "NONLOCAL.LOCATION": [[[], []], [[], []], [[6, 13, 20], []], [[], []]],
    "NONLOCAL.POOL": [[[2, 2, 2], [2, 2, 2]]] * 4,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "SLOWFAST_32x2_R101_50_50": {**_C2, **R101_50_50, "DATA.NUM_FRAMES": 32},
    "SLOWFAST_64x2_R101_50_50": {**_C2, **R101_50_50, "DATA.NUM_FRAMES": 64},
    "SLOWFAST_32x2_R50": {
        **_C2,
        "SLOWFAST.FUSION_KERNEL_SZ": 7,
        "RESNET.DEPTH": 50,
        "NONLOCAL.LOCATION": [[[], []]] * 4,
        "NONLOCAL.POOL": [[[1, 2, 2], [1, 2, 2]]] * 4,
        "DATA.NUM_FRAMES": 32,
    },
}


def configure(cfg: Any, values: dict[str, Any]) -> Any:
    """Set each dotted ``values`` key (``"RESNET.DEPTH"``) on PySlowFast's config node ``cfg``."""
    for dotted, value in values.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def fake_detectron2(roi_align: type[nn.Module]) -> dict[str, types.ModuleType]:
    """``detectron2`` and ``detectron2.layers`` modules holding only ``ROIAlign = roi_align``,
    for ``sys.modules``: all PySlowFast's AVA head imports from detectron2."""
    detectron2 = types.ModuleType("detectron2")
    layers = types.ModuleType("detectron2.layers")
    layers.ROIAlign = roi_align  # type: ignore[attr-defined]
    detectron2.layers = layers  # type: ignore[attr-defined]
    return {"detectron2": detectron2, "detectron2.layers": layers}


def randomise_batchnorm(m: nn.BatchNorm3d, g: torch.Generator) -> None:
    """Random statistics and affine terms for ``m``, so it is no identity. gamma < 1 keeps
    activations O(1) through the residual sums, as in a trained network."""
    n = m.num_features
    with torch.no_grad():
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def randomise(model: nn.Module, g: torch.Generator, *, nonlocal_bias: bool = False) -> None:
    """Randomise a freshly built PySlowFast model so that no block is an identity: BatchNorm
    statistics and affine terms, the non-local convolutions at PySlowFast's Caffe2 init scale
    (0.01, keeping the dot products O(1); their biases too with ``nonlocal_bias``) and the
    head's projection."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm3d):
                randomise_batchnorm(m, g)
            elif isinstance(m, nn.Conv3d) and "_nonlocal" in name:
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
                if nonlocal_bias:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        model.head.projection.weight.normal_(0.0, 0.05, generator=g)
        model.head.projection.bias.normal_(0.0, 0.5, generator=g)


class _PlaceholderRoIAlign(nn.Module):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, *args: Any) -> torch.Tensor:
        raise RuntimeError("placeholder: this script only builds and saves the model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    for name, module in fake_detectron2(_PlaceholderRoIAlign).items():
        sys.modules.setdefault(name, module)
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import SlowFastModel

    cfg = configure(get_cfg(), CONFIGS[args.config])
    torch.manual_seed(args.seed)
    model = SlowFastModel(cfg).eval()
    randomise(model, torch.Generator().manual_seed(args.seed + 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "model_state": model.state_dict(), "cfg": cfg.dump()}, args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: untrained PySlowFast {args.config}, {params:,} parameters")


if __name__ == "__main__":
    main()

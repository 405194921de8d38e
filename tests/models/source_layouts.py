"""Public SlowFast checkpoint layouts (key names and shapes), generated for import tests.

Not a test module: ``test_checkpoints.py`` and ``tests/export/test_import_cli.py`` load it
by path. The shapes come from the published SlowFast architecture (Feichtenhofer et al.
Table 1: widths 64*2^s, bottleneck expansion 4, fast channels / beta_inv, time-strided
laterals of 2x the fast channels) and the names from each project's naming rules, written
independently of ``models/backbone.py`` so the importers are checked against the sources,
not against our own module names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DEPTHS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# A slot is one tensor of the architecture, independent of any naming:
#   ("stem", p, layer, param)            p: 0 slow, 1 fast; layer: "conv" | "bn"
#   ("fuse", i, layer, param)            i: 0 after the stem, 1..3 after res2..res4
#   ("block", s, p, b, conv, layer, param)  s: 0..3 = res2..res5; conv: "1" shortcut, "a".."c"
#   ("nl", s, b, part, param)            part: theta | phi | g | out | bn (slow pathway)
#   ("head", param)
Slot = tuple[Any, ...]


@dataclass(frozen=True)
class Arch:
    depth: int = 50
    stem_dim: int = 64
    beta_inv: int = 8
    fusion_kernel: int = 7
    fusion_norm: bool = True
    slow_kernels: tuple[int, int, int, int] = (1, 1, 3, 3)
    fast_kernels: tuple[int, int, int, int] = (3, 3, 3, 3)
    nonlocal_blocks: dict[int, tuple[int, ...]] = field(default_factory=dict)
    num_classes: int = 80
    # PySlowFast RESNET.NUM_BLOCK_TEMP_KERNEL: per stage, the first n blocks use the stage's
    # temporal kernel and the rest 1 (both pathways); None = every block.
    num_block_temp_kernel: tuple[int, int, int, int] | None = None


# slowfast_tiny: depth 18 (basic blocks), 16 stem channels.
TINY = Arch(depth=18, stem_dim=16)
R50 = Arch()
# PySlowFast SLOWFAST_32x2_R101_50_50: res4 blocks 6..22 have 1x1x1 first convs, fusion
# kernel 5, non-local after res4 blocks 6, 13, 20.
R101_50_50 = Arch(
    depth=101, fusion_kernel=5, nonlocal_blocks={2: (6, 13, 20)}, num_block_temp_kernel=(3, 4, 6, 3)
)


def _conv(
    out_c: int, in_c: int, k: tuple[int, int, int], layer_slot: Slot
) -> Iterator[tuple[Slot, tuple[int, ...]]]:
    yield (*layer_slot, "conv", "weight"), (out_c, in_c, *k)


def _bn(c: int, layer_slot: Slot) -> Iterator[tuple[Slot, tuple[int, ...]]]:
    for param in BN_PARAMS:
        yield (*layer_slot, "bn", param), (() if param == "num_batches_tracked" else (c,))


def slots(arch: Arch) -> Iterator[tuple[Slot, tuple[int, ...]]]:
    """Every tensor of the architecture, in registration order, with its shape."""
    w0, beta = arch.stem_dim, arch.beta_inv
    for p, (c, kt) in enumerate(((w0, 1), (w0 // beta, 5))):
        yield from _conv(c, 3, (kt, 7, 7), ("stem", p))
        yield from _bn(c, ("stem", p))
    slow_c, fast_c = w0, w0 // beta
    bottleneck = arch.depth >= 50
    for s, n in enumerate(DEPTHS[arch.depth]):
        lateral = 2 * fast_c
        yield ("fuse", s, "conv", "weight"), (lateral, fast_c, arch.fusion_kernel, 1, 1)
        if arch.fusion_norm:
            yield from _bn(lateral, ("fuse", s))
        width = w0 * 2**s
        out = 4 * width if bottleneck else width
        stride = 1 if s in (0, 3) else 2
        new_c = []
        for p, (dim_in, div, kt) in enumerate(
            ((slow_c + lateral, 1, arch.slow_kernels[s]), (fast_c, beta, arch.fast_kernels[s]))
        ):
            inner, o = width // div, out // div
            for b in range(n):
                c_in = dim_in if b == 0 else o
                limit = arch.num_block_temp_kernel
                k = kt if limit is None or b < limit[s] else 1
                blk: Slot = ("block", s, p, b)
                if b == 0 and (c_in != o or stride != 1):
                    yield from _conv(o, c_in, (1, 1, 1), (*blk, "1"))
                    yield from _bn(o, (*blk, "1"))
                if bottleneck:
                    yield from _conv(inner, c_in, (k, 1, 1), (*blk, "a"))
                    yield from _bn(inner, (*blk, "a"))
                    yield from _conv(inner, inner, (1, 3, 3), (*blk, "b"))
                    yield from _bn(inner, (*blk, "b"))
                    yield from _conv(o, inner, (1, 1, 1), (*blk, "c"))
                    yield from _bn(o, (*blk, "c"))
                else:
                    yield from _conv(o, c_in, (k, 3, 3), (*blk, "a"))
                    yield from _bn(o, (*blk, "a"))
                    yield from _conv(o, o, (1, 3, 3), (*blk, "b"))
                    yield from _bn(o, (*blk, "b"))
                if p == 0 and b in arch.nonlocal_blocks.get(s, ()):
                    for part in ("theta", "phi", "g"):
                        yield ("nl", s, b, part, "weight"), (o // 2, o, 1, 1, 1)
                        yield ("nl", s, b, part, "bias"), (o // 2,)
                    yield ("nl", s, b, "out", "weight"), (o, o // 2, 1, 1, 1)
                    yield ("nl", s, b, "out", "bias"), (o,)
                    for param in BN_PARAMS:
                        yield ("nl", s, b, "bn", param), (() if "num" in param else (o,))
            new_c.append(out // div)
        slow_c, fast_c = new_c
    yield ("head", "weight"), (arch.num_classes, slow_c + fast_c)
    yield ("head", "bias"), (arch.num_classes,)


# ---- naming rules ------------------------------------------------------------------------


def pyslowfast_name(slot: Slot, arch: Arch) -> str | None:
    kind = slot[0]
    if kind == "stem":
        _, p, layer, param = slot
        return f"s1.pathway{p}_stem.{layer}.{param}"
    if kind == "fuse":
        _, i, layer, param = slot
        return f"s{int(i) + 1}_fuse.{'conv_f2s' if layer == 'conv' else 'bn'}.{param}"
    if kind == "block":
        _, s, p, b, conv, layer, param = slot
        prefix = f"s{int(s) + 2}.pathway{p}_res{b}"
        if conv == "1":
            return f"{prefix}.branch1{'' if layer == 'conv' else '_bn'}.{param}"
        return f"{prefix}.branch2.{conv}{'' if layer == 'conv' else '_bn'}.{param}"
    if kind == "nl":
        _, s, b, part, param = slot
        name = "bn" if part == "bn" else f"conv_{part}"
        return f"s{int(s) + 2}.pathway0_nonlocal{b}.{name}.{param}"
    return f"head.projection.{slot[1]}"


_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_C2 = {"weight": "w", "bias": "b"}


def caffe2_name(slot: Slot, arch: Arch) -> str | None:
    param = str(slot[-1])
    if param == "num_batches_tracked":
        return None  # Caffe2 BN has no counter
    kind = slot[0]
    if kind == "stem":
        _, p, layer, _ = slot
        t = "t_" if p == 1 else ""
        return f"{t}conv1_{_C2[param]}" if layer == "conv" else f"{t}res_conv1_bn_{_C2_BN[param]}"
    if kind == "fuse":
        _, i, layer, _ = slot
        i = int(i)
        base = (
            "t_pool1_subsample"
            if i == 0
            else f"t_res{i + 1}_{DEPTHS[arch.depth][i - 1] - 1}_branch2c_bn_subsample"
        )
        return f"{base}_{_C2[param]}" if layer == "conv" else f"{base}_bn_{_C2_BN[param]}"
    if kind == "block":
        _, s, p, b, conv, layer, _ = slot
        t = "t_" if p == 1 else ""
        branch = "branch1" if conv == "1" else f"branch2{conv}"
        base = f"{t}res{int(s) + 2}_{b}_{branch}"
        return f"{base}_{_C2[param]}" if layer == "conv" else f"{base}_bn_{_C2_BN[param]}"
    if kind == "nl":
        _, s, b, part, _ = slot
        base = f"nonlocal_conv{int(s) + 2}_{b}"
        return f"{base}_bn_{_C2_BN[param]}" if part == "bn" else f"{base}_{part}_{_C2[param]}"
    return f"pred_{_C2[param]}"


def mmaction2_name(slot: Slot, arch: Arch) -> str | None:
    kind = slot[0]
    pw = ("slow", "fast")
    if kind == "stem":
        _, p, layer, param = slot
        return f"backbone.{pw[int(p)]}_path.conv1.{layer}.{param}"
    if kind == "fuse":
        _, i, layer, param = slot
        name = "conv1_lateral" if i == 0 else f"layer{i}_lateral"
        return f"backbone.slow_path.{name}.{layer}.{param}"
    if kind == "block":
        _, s, p, b, conv, layer, param = slot
        module = {"1": "downsample", "a": "conv1", "b": "conv2", "c": "conv3"}[str(conv)]
        return f"backbone.{pw[int(p)]}_path.layer{int(s) + 1}.{b}.{module}.{layer}.{param}"
    if kind == "nl":
        raise ValueError("MMAction2 SlowFast AVA configs have no non-local blocks")
    return f"roi_head.bbox_head.fc_cls.{slot[1]}"


NAMERS = {"pyslowfast": pyslowfast_name, "caffe2": caffe2_name, "mmaction2": mmaction2_name}


def layout(fmt: str, arch: Arch) -> dict[str, tuple[int, ...]]:
    """Source key -> shape for ``fmt``; MMAction2's head gets its extra reserved row."""
    out: dict[str, tuple[int, ...]] = {}
    for slot, shape in slots(arch):
        name = NAMERS[fmt](slot, arch)
        if name is None:
            continue
        if fmt == "mmaction2" and slot[0] == "head":
            shape = (shape[0] + 1, *shape[1:])
        out[name] = shape
    return out


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes: BN variances positive, gammas in [0.25, 0.75]
    (activations stay O(1) through the residual sums), counters integral."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7, dtype=torch.int64)
        elif name.endswith(("running_var", "_bn_riv")):
            out[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("bn.weight", "_bn_s", "norm.weight")):
            out[name] = torch.rand(shape, generator=g) * 0.5 + 0.25
        else:
            out[name] = torch.randn(shape, generator=g) * 0.1
    return out


def as_caffe2_blobs(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}

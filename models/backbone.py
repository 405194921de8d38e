"""SlowFast 3D ResNet backbone (Feichtenhofer et al., "SlowFast Networks for Video
Recognition", ICCV 2019, arXiv:1812.03982).

Data flow (R50 8x8 AVA variant, input 8 slow / 32 fast frames at 224x224)::

    slow (B,3,8,224,224)                     fast (B,3,32,224,224)
      │ stem.slow  conv 1x7x7 /2, pool /2      │ stem.fast  conv 5x7x7 /2, pool /2
      │ (B,64,8,56,56)                         │ (B,8,32,56,56)
      ├◄── concat ── fusions.0 (conv 7x1x1, temporal stride alpha) ──┤
      │ (B,80,8,56,56)                         │
      │ stages.0.slow  (res2)                  │ stages.0.fast
      │ (B,256,8,56,56)                        │ (B,32,32,56,56)
      ├◄── concat ── fusions.1 ────────────────┤
      │ stages.1 (res3, spatial /2)            │
      ├◄── concat ── fusions.2 ────────────────┤
      │ stages.2 (res4, spatial /2)            │
      ├◄── concat ── fusions.3 ────────────────┤
      │ stages.3 (res5, stride 1, dilation 2: the AVA variant keeps 14x14)
      ▼                                        ▼
    slow_feat (B,2048,8,14,14)               fast_feat (B,256,32,14,14)

Module and parameter names are chosen so that public checkpoints map onto them key by
key: the same conv/norm granularity, and inside each block the same registration order
(shortcut first). At the top level the fusions are one list beside the stages, where
pytorchvideo interleaves them, so map by name, not by position (``p`` = 0 slow, 1 fast;
``s`` = stage index 0..3 for res2..res5; ``b`` = block index within the stage)::

    avaserve                         PySlowFast                   pytorchvideo create_slowfast
    stem.{slow,fast}.conv|norm       s1.pathway{p}_stem.conv|bn   blocks.0.multipathway_blocks.{p}
                                                                    .conv|norm
    fusions.{i}.conv|norm            s{i+1}_fuse.conv_f2s|bn      blocks.{i}.multipathway_fusion
                                                                    .conv_fast_to_slow|norm
    stages.{s}.{slow,fast}.blocks.{b}  s{s+2}.pathway{p}_res{b}   blocks.{s+1}.multipathway_blocks
                                                                    .{p}.res_blocks.{b}
      .shortcut_conv|shortcut_norm     .branch1|branch1_bn          .branch1_conv|branch1_norm
      .conv_a|norm_a (k x1x1)          .branch2.a|a_bn              .branch2.conv_a|norm_a
      .conv_b|norm_b (1x3x3, stride)   .branch2.b|b_bn              .branch2.conv_b|norm_b
      .conv_c|norm_c (1x1x1)           .branch2.c|c_bn              .branch2.conv_c|norm_c
    stages.{s}.slow.nonlocals.{b}    s{s+2}.pathway0_nonlocal{b}  (none)
      .conv_theta|phi|g|out, .norm     .conv_theta|phi|g|out, .bn

MMAction2 (``ResNet3dSlowFast``) names them ``backbone.{slow,fast}_path.conv1.conv|bn``,
``.layer{s+1}.{b}.conv{1,2,3}.conv|bn``, ``.downsample.conv|bn`` and laterals
``slow_path.conv1_lateral.conv``, ``slow_path.layer{1,2,3}_lateral.conv`` without a norm
(build with ``fusion_norm=False`` for those). Depth-18 basic blocks have only
``conv_a|norm_a`` (k x3x3, stride) and ``conv_b|norm_b`` (1x3x3, dilation), as PySlowFast's
``BasicTransform`` (``a|a_bn``, ``b|b_bn``). A non-local block sits after the residual block
with the same index, as in PySlowFast's ``ResStage``. Max-pools and activations hold no
parameters; their names do not matter for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from models.nonlocal_block import Instantiation, NonLocalBlock

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "FastToSlowFusion",
    "PathwayStage",
    "SlowFast",
    "Stem",
    "TwoPathway",
    "create_slowfast",
]

NormBuilder = Callable[[int], nn.Module]
ActivationBuilder = Callable[[], nn.Module]

# Residual blocks per stage (res2..res5), He et al. 2016 Table 1.
STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_BOTTLENECK_EXPANSION = 4


class Stem(nn.Module):
    """conv kx7x7 (spatial stride 2) -> norm -> act -> max-pool 1x3x3 (spatial stride 2).

    (B, C_in, T, H, W) -> (B, C_out, T, H/4, W/4)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temporal_kernel: int,
        norm: NormBuilder,
        activation: ActivationBuilder,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=(temporal_kernel, 7, 7),
            stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3),
            bias=False,
        )
        self.norm = norm(out_channels)
        self.act = activation()
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))  # (B, C_out, T, H/4, W/4)


class _ResidualBlock(nn.Module):
    """Shared shortcut: a strided 1x1x1 conv + norm when the shape changes, else identity."""

    def _build_shortcut(
        self, dim_in: int, dim_out: int, spatial_stride: int, norm: NormBuilder
    ) -> None:
        self.shortcut_conv: nn.Module | None = None
        self.shortcut_norm: nn.Module | None = None
        if dim_in != dim_out or spatial_stride != 1:
            self.shortcut_conv = nn.Conv3d(
                dim_in,
                dim_out,
                kernel_size=1,
                stride=(1, spatial_stride, spatial_stride),
                bias=False,
            )
            self.shortcut_norm = norm(dim_out)

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.shortcut_conv is None or self.shortcut_norm is None:
            return x
        return self.shortcut_norm(self.shortcut_conv(x))

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError


class BottleneckBlock(_ResidualBlock):
    """ResNet bottleneck, inflated to 3D as in SlowFast Table 1.

    ``conv_a`` kx1x1 (temporal kernel k in {1, 3}) -> ``conv_b`` 1x3x3 (spatial stride and
    dilation here, not in ``conv_a``, as in PySlowFast/pytorchvideo "stride_1x1=False")
    -> ``conv_c`` 1x1x1, each followed by a norm; ReLU after a, b and the residual sum.

    (B, dim_in, T, H, W) -> (B, dim_out, T, H/stride, W/stride)
    """

    def __init__(
        self,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        *,
        temporal_kernel: int,
        spatial_stride: int,
        dilation: int,
        norm: NormBuilder,
        activation: ActivationBuilder,
    ) -> None:
        super().__init__()
        # Shortcut first: PySlowFast and pytorchvideo register branch1 before branch2.
        self._build_shortcut(dim_in, dim_out, spatial_stride, norm)
        self.conv_a = nn.Conv3d(
            dim_in,
            dim_inner,
            kernel_size=(temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        self.norm_a = norm(dim_inner)
        self.act_a = activation()
        self.conv_b = nn.Conv3d(
            dim_inner,
            dim_inner,
            kernel_size=(1, 3, 3),
            stride=(1, spatial_stride, spatial_stride),
            padding=(0, dilation, dilation),
            dilation=(1, dilation, dilation),
            bias=False,
        )
        self.norm_b = norm(dim_inner)
        self.act_b = activation()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = norm(dim_out)
        self.act = activation()

    @property
    def final_norm(self) -> nn.Module:
        return self.norm_c

    def forward(self, x: Tensor) -> Tensor:
        y = self.act_a(self.norm_a(self.conv_a(x)))  # (B, inner, T, H, W)
        y = self.act_b(self.norm_b(self.conv_b(y)))  # (B, inner, T, H/s, W/s)
        y = self.norm_c(self.conv_c(y))  # (B, out, T, H/s, W/s)
        return self.act(self._shortcut(x) + y)


class BasicBlock(_ResidualBlock):
    """ResNet basic block in 3D: ``conv_a`` kx3x3 (spatial stride) -> ``conv_b`` 1x3x3
    (dilation), each followed by a norm; ReLU after a and the residual sum. Used for depth 18
    (PySlowFast ``BasicTransform``).

    (B, dim_in, T, H, W) -> (B, dim_out, T, H/stride, W/stride)
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        *,
        temporal_kernel: int,
        spatial_stride: int,
        dilation: int,
        norm: NormBuilder,
        activation: ActivationBuilder,
    ) -> None:
        super().__init__()
        # Shortcut first: PySlowFast and pytorchvideo register branch1 before branch2.
        self._build_shortcut(dim_in, dim_out, spatial_stride, norm)
        self.conv_a = nn.Conv3d(
            dim_in,
            dim_out,
            kernel_size=(temporal_kernel, 3, 3),
            stride=(1, spatial_stride, spatial_stride),
            padding=(temporal_kernel // 2, 1, 1),
            bias=False,
        )
        self.norm_a = norm(dim_out)
        self.act_a = activation()
        self.conv_b = nn.Conv3d(
            dim_out,
            dim_out,
            kernel_size=(1, 3, 3),
            padding=(0, dilation, dilation),
            dilation=(1, dilation, dilation),
            bias=False,
        )
        self.norm_b = norm(dim_out)
        self.act = activation()

    @property
    def final_norm(self) -> nn.Module:
        return self.norm_b

    def forward(self, x: Tensor) -> Tensor:
        y = self.act_a(self.norm_a(self.conv_a(x)))  # (B, out, T, H/s, W/s)
        y = self.norm_b(self.conv_b(y))  # (B, out, T, H/s, W/s)
        return self.act(self._shortcut(x) + y)


class PathwayStage(nn.Module):
    """One pathway's residual stage: ``blocks`` in order, with ``nonlocals[str(b)]`` (if
    present) applied right after ``blocks[b]``."""

    def __init__(self, blocks: Sequence[nn.Module], nonlocals: dict[int, nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.nonlocals = nn.ModuleDict({str(b): m for b, m in sorted(nonlocals.items())})

    def forward(self, x: Tensor) -> Tensor:
        for b, block in enumerate(self.blocks):
            x = block(x)  # (B, C, T, H, W)
            key = str(b)
            if key in self.nonlocals:
                x = self.nonlocals[key](x)
        return x


class TwoPathway(nn.Module):
    """Applies ``slow`` and ``fast`` to their own tensors; used for the stem and each stage."""

    def __init__(self, slow: nn.Module, fast: nn.Module) -> None:
        super().__init__()
        self.slow = slow
        self.fast = fast

    def forward(self, slow: Tensor, fast: Tensor) -> tuple[Tensor, Tensor]:
        return self.slow(slow), self.fast(fast)


class FastToSlowFusion(nn.Module):
    """Time-strided conv lateral connection (SlowFast Sec. 3.4, "time-strided convolution").

    The fast features go through a k x 1 x 1 conv with temporal stride alpha (2*beta*C
    output channels, the paper's best variant), norm and act, and are concatenated to the
    slow features along channels::

        slow (B, C_s, T, H, W), fast (B, C_f, alpha*T, H, W)
          -> cat[slow, act(norm(conv(fast)))] (B, C_s + ratio*C_f, T, H, W)

    ``with_norm=False`` leaves out norm and act (conv only, as MMAction2's laterals).
    """

    def __init__(
        self,
        fast_dim: int,
        *,
        channel_ratio: int,
        kernel: int,
        alpha: int,
        norm: NormBuilder,
        activation: ActivationBuilder,
        with_norm: bool = True,
    ) -> None:
        super().__init__()
        out_dim = fast_dim * channel_ratio
        self.conv = nn.Conv3d(
            fast_dim,
            out_dim,
            kernel_size=(kernel, 1, 1),
            stride=(alpha, 1, 1),
            padding=(kernel // 2, 0, 0),
            bias=False,
        )
        self.norm: nn.Module = norm(out_dim) if with_norm else nn.Identity()
        self.act: nn.Module = activation() if with_norm else nn.Identity()
        self.out_dim: int = out_dim

    def forward(self, slow: Tensor, fast: Tensor) -> Tensor:
        lateral = self.act(self.norm(self.conv(fast)))  # (B, ratio*C_f, T_s, H, W)
        return torch.cat([slow, lateral], dim=1)  # (B, C_s + ratio*C_f, T_s, H, W)


class SlowFast(nn.Module):
    """SlowFast backbone: ``stem``, then for each stage ``fusions[i]`` (fast -> slow) and
    ``stages[i]``. Build it with :func:`create_slowfast`; see the module docstring for the
    data flow and the key names.

    forward(slow (B, 3, T_s, H, W), fast (B, 3, alpha*T_s, H, W))
        -> [slow_feat (B, C_s, T_s, H/stride, W/stride), fast_feat (B, C_f, alpha*T_s, ...)]
    with (C_s, C_f) = ``out_channels`` and stride = ``spatial_stride``.
    """

    def __init__(
        self,
        *,
        stem: TwoPathway,
        fusions: Sequence[FastToSlowFusion],
        stages: Sequence[TwoPathway],
        alpha: int,
        out_channels: tuple[int, int],
        spatial_stride: int,
    ) -> None:
        super().__init__()
        if len(fusions) != len(stages):
            raise ValueError(
                f"SlowFast: need one fusion per stage, got {len(fusions)} fusions "
                f"for {len(stages)} stages"
            )
        self.stem = stem
        self.fusions = nn.ModuleList(fusions)
        self.stages = nn.ModuleList(stages)
        self.alpha: int = alpha
        self._out_channels: tuple[int, int] = out_channels
        self._spatial_stride: int = spatial_stride

    @property
    def out_channels(self) -> tuple[int, int]:
        """(C_s, C_f) channels of the slow and fast outputs, e.g. (2048, 256) for R50."""
        return self._out_channels

    @property
    def spatial_stride(self) -> int:
        """Input pixels per output cell: 16 for the AVA variant, 32 with res5 stride 2."""
        return self._spatial_stride

    def forward(self, slow: Tensor, fast: Tensor) -> list[Tensor]:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            _check_inputs(slow, fast, self.alpha)
        slow, fast = self.stem(slow, fast)  # (B, C, T_s, H/4, W/4), (B, C/beta_inv, T_f, ...)
        for fusion, stage in zip(self.fusions, self.stages, strict=True):
            slow = fusion(slow, fast)  # (B, C_s + ratio*C_f, T_s, h, w)
            slow, fast = stage(slow, fast)  # (B, C_s', T_s, h', w'), (B, C_f', T_f, h', w')
        return [slow, fast]


def _check_inputs(slow: Tensor, fast: Tensor, alpha: int) -> None:
    if slow.dim() != 5 or fast.dim() != 5:
        raise ValueError(
            f"SlowFast expects 5-D clips (B, 3, T, H, W); got slow {tuple(slow.shape)}, "
            f"fast {tuple(fast.shape)}"
        )
    if fast.shape[2] != alpha * slow.shape[2]:
        raise ValueError(
            f"SlowFast: fast frames must be alpha={alpha} x slow frames; got T_s={slow.shape[2]}, "
            f"T_f={fast.shape[2]}. Sample T_f = alpha * T_s frames (core/sampling.py)."
        )
    if slow.shape[0] != fast.shape[0] or slow.shape[3:] != fast.shape[3:]:
        raise ValueError(
            f"SlowFast: slow and fast clips must share batch and H, W; got {tuple(slow.shape)} "
            f"and {tuple(fast.shape)}"
        )


def _per_block_kernels(spec: int | Sequence[int], num_blocks: int) -> list[int]:
    """An int, or a sequence cycled over the blocks (PySlowFast ``temp_kernel_sizes``)."""
    if isinstance(spec, int):
        return [spec] * num_blocks
    seq = list(spec)
    if not seq:
        raise ValueError("temporal kernel spec for a stage is empty; give an int or (k, ...)")
    return [seq[b % len(seq)] for b in range(num_blocks)]


def _check_len(name: str, value: Sequence[object], n: int) -> None:
    if len(value) != n:
        raise ValueError(f"create_slowfast: {name} needs {n} entries (res2..res5), got {value!r}")


def create_slowfast(
    *,
    depth: int = 50,
    alpha: int = 4,
    beta_inv: int = 8,
    fusion_conv_channel_ratio: int = 2,
    fusion_kernel: int = 7,
    fusion_norm: bool = True,
    stem_dim: int = 64,
    in_channels: int = 3,
    slow_stem_temporal_kernel: int = 1,
    fast_stem_temporal_kernel: int = 5,
    slow_temporal_kernels: Sequence[int | Sequence[int]] = ((1,), (1,), (3,), (3,)),
    fast_temporal_kernels: Sequence[int | Sequence[int]] = ((3,), (3,), (3,), (3,)),
    spatial_strides: Sequence[int] = (1, 2, 2, 1),
    spatial_dilations: Sequence[int] = (1, 1, 1, 2),
    nonlocal_stages: Sequence[int] = (),
    nonlocal_blocks: Sequence[Sequence[int]] | None = None,
    nonlocal_pool: tuple[int, int, int] | None = (1, 2, 2),
    nonlocal_instantiation: Instantiation = "softmax",
    nonlocal_zero_init: bool = True,
    zero_init_residual: bool = False,
    norm: NormBuilder = nn.BatchNorm3d,
    activation: ActivationBuilder = nn.ReLU,
) -> SlowFast:
    """Build a SlowFast backbone. Defaults give the published SlowFast 8x8 R50 with the AVA
    res5 (spatial stride 1, dilation 2): 33,644,488 parameters.

    Args:
        depth: 18 (basic blocks, 2-2-2-2), 50, 101 or 152 (bottlenecks, expansion 4).
        alpha: frame-rate ratio T_f / T_s; also the fusion conv's temporal stride.
        beta_inv: slow/fast channel ratio (1/beta in the paper; 8 published).
        fusion_conv_channel_ratio: fusion output channels = this x fast channels (2
            published, "2*beta*C").
        fusion_kernel: temporal kernel of the fusion conv (odd; 7 published).
        fusion_norm: norm + act after the fusion conv (PySlowFast, pytorchvideo); False
            for conv-only laterals (MMAction2).
        stem_dim: slow stem channels (64 published); every width scales with it. The fast
            stem has ``stem_dim // beta_inv``.
        in_channels: input channels of both pathways.
        slow_stem_temporal_kernel / fast_stem_temporal_kernel: stem conv kernels kx7x7
            (1 and 5 published: the slow pathway has no temporal conv until res4).
        slow_temporal_kernels / fast_temporal_kernels: per stage res2..res5, the temporal
            kernel of each block's first conv: an int or a sequence cycled over the blocks
            (published: slow 1, 1, 3, 3; fast 3, 3, 3, 3).
        spatial_strides: per-stage spatial stride, in ``conv_b`` (``conv_a`` for basic
            blocks). (1, 2, 2, 1) is the AVA variant (output stride 16); (1, 2, 2, 2) the
            Kinetics one (stride 32).
        spatial_dilations: per-stage spatial dilation of the 1x3x3 conv; 2 in res5
            keeps the receptive field of the stride-2 model for AVA.
        nonlocal_stages: stage indices (0 = res2 .. 3 = res5) whose slow pathway gets
            non-local blocks.
        nonlocal_blocks: for each entry of ``nonlocal_stages``, the block indices after
            which a non-local block sits; default every other block from 1 (1, 3, 5, ...,
            the C2D/I3D non-local placement of Wang et al.). PySlowFast's AVA R101 config
            uses res4 blocks (6, 13, 20).
        nonlocal_pool: max-pool (t, h, w) before the non-local keys/values; None for none
            (PySlowFast ``NONLOCAL.POOL``: (2, 2, 2) in its AVA R101 configs).
        nonlocal_instantiation: ``"softmax"`` (embedded Gaussian) or ``"dot_product"``
            (PySlowFast ``NONLOCAL.INSTANTIATION``; its AVA R101 models use it).
        nonlocal_zero_init: start each non-local block as the identity (output norm gamma 0).
        zero_init_residual: zero the gamma of each residual block's last norm, so blocks
            start as identities (Goyal et al. 2017); off in the published recipe.
        norm: builds a norm layer, called as ``norm(num_channels)``.
        activation: builds an activation layer, called with no arguments.
    """
    if depth not in STAGE_DEPTHS:
        raise ValueError(
            f"create_slowfast: depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}"
        )
    if alpha < 1 or beta_inv < 1 or fusion_conv_channel_ratio < 1:
        raise ValueError(
            f"create_slowfast: alpha, beta_inv and fusion_conv_channel_ratio must be >= 1; got "
            f"{alpha}, {beta_inv}, {fusion_conv_channel_ratio}"
        )
    if fusion_kernel < 1 or fusion_kernel % 2 == 0:
        raise ValueError(
            f"create_slowfast: fusion_kernel must be odd so the fused T equals T_s; got "
            f"{fusion_kernel}"
        )
    if stem_dim % beta_inv != 0:
        raise ValueError(
            f"create_slowfast: stem_dim ({stem_dim}) must be divisible by beta_inv ({beta_inv}) "
            "so the fast pathway has whole channels"
        )
    stage_depths = STAGE_DEPTHS[depth]
    num_stages = len(stage_depths)
    _check_len("slow_temporal_kernels", slow_temporal_kernels, num_stages)
    _check_len("fast_temporal_kernels", fast_temporal_kernels, num_stages)
    _check_len("spatial_strides", spatial_strides, num_stages)
    _check_len("spatial_dilations", spatial_dilations, num_stages)
    nl_blocks = _nonlocal_placement(nonlocal_stages, nonlocal_blocks, stage_depths)
    bottleneck = depth >= 50

    stem = TwoPathway(
        Stem(
            in_channels,
            stem_dim,
            temporal_kernel=slow_stem_temporal_kernel,
            norm=norm,
            activation=activation,
        ),
        Stem(
            in_channels,
            stem_dim // beta_inv,
            temporal_kernel=fast_stem_temporal_kernel,
            norm=norm,
            activation=activation,
        ),
    )

    slow_dim, fast_dim = stem_dim, stem_dim // beta_inv
    fusions: list[FastToSlowFusion] = []
    stages: list[TwoPathway] = []
    for s, num_blocks in enumerate(stage_depths):
        fusion = FastToSlowFusion(
            fast_dim,
            channel_ratio=fusion_conv_channel_ratio,
            kernel=fusion_kernel,
            alpha=alpha,
            norm=norm,
            activation=activation,
            with_norm=fusion_norm,
        )
        fusions.append(fusion)
        width = stem_dim * 2**s  # slow inner width: 64, 128, 256, 512 published
        out = width * _BOTTLENECK_EXPANSION if bottleneck else width
        pathways: list[PathwayStage] = []
        for dim_in, div, kernels, nls in (
            (slow_dim + fusion.out_dim, 1, slow_temporal_kernels[s], nl_blocks.get(s, ())),
            (fast_dim, beta_inv, fast_temporal_kernels[s], ()),
        ):
            blocks: list[nn.Module] = []
            block_in = dim_in
            for b, k in enumerate(_per_block_kernels(kernels, num_blocks)):
                stride = spatial_strides[s] if b == 0 else 1
                if bottleneck:
                    blocks.append(
                        BottleneckBlock(
                            block_in,
                            width // div,
                            out // div,
                            temporal_kernel=k,
                            spatial_stride=stride,
                            dilation=spatial_dilations[s],
                            norm=norm,
                            activation=activation,
                        )
                    )
                else:
                    blocks.append(
                        BasicBlock(
                            block_in,
                            out // div,
                            temporal_kernel=k,
                            spatial_stride=stride,
                            dilation=spatial_dilations[s],
                            norm=norm,
                            activation=activation,
                        )
                    )
                block_in = out // div
            nonlocals: dict[int, nn.Module] = {
                b: NonLocalBlock(
                    out // div,
                    pool_size=None if nonlocal_pool is None else _triple(nonlocal_pool),
                    instantiation=nonlocal_instantiation,
                    norm=norm,
                    zero_init_final_norm=nonlocal_zero_init,
                )
                for b in nls
            }
            pathways.append(PathwayStage(blocks, nonlocals))
        stages.append(TwoPathway(pathways[0], pathways[1]))
        slow_dim, fast_dim = out, out // beta_inv

    model = SlowFast(
        stem=stem,
        fusions=fusions,
        stages=stages,
        alpha=alpha,
        out_channels=(slow_dim, fast_dim),
        spatial_stride=4 * math.prod(spatial_strides),
    )
    _init_weights(model, zero_init_residual=zero_init_residual)
    return model


def _triple(pool: Sequence[int]) -> tuple[int, int, int]:
    if len(pool) != 3 or any(int(v) < 1 for v in pool):
        raise ValueError(
            f"create_slowfast: nonlocal_pool must be (t, h, w) of positive ints or None; got "
            f"{tuple(pool)}"
        )
    return (int(pool[0]), int(pool[1]), int(pool[2]))


def _nonlocal_placement(
    stages: Sequence[int],
    blocks: Sequence[Sequence[int]] | None,
    stage_depths: Sequence[int],
) -> dict[int, tuple[int, ...]]:
    if blocks is not None and len(blocks) != len(stages):
        raise ValueError(
            f"create_slowfast: nonlocal_blocks needs one entry per nonlocal_stages entry; got "
            f"{len(blocks)} for stages {tuple(stages)}"
        )
    placement: dict[int, tuple[int, ...]] = {}
    for i, s in enumerate(stages):
        if not 0 <= s < len(stage_depths):
            raise ValueError(
                f"create_slowfast: nonlocal_stages entries are 0 (res2) .. "
                f"{len(stage_depths) - 1} (res5); got {s}"
            )
        n = stage_depths[s]
        idx = tuple(range(1, n, 2)) if blocks is None else tuple(blocks[i])
        bad = [b for b in idx if not 0 <= b < n]
        if bad:
            raise ValueError(
                f"create_slowfast: non-local block indices {bad} out of range for stage {s} "
                f"with {n} blocks"
            )
        placement[s] = idx
    return placement


def _init_weights(model: nn.Module, *, zero_init_residual: bool) -> None:
    """He (fan-out) init for convs, gamma 1 / beta 0 for norms (the SlowFast recipe), then
    the residual and non-local zero-inits."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, NonLocalBlock):
            m.reset_parameters()
        elif zero_init_residual and isinstance(m, _ResidualBlock):
            weight = getattr(m.final_norm, "weight", None)
            if isinstance(weight, torch.Tensor):
                with torch.no_grad():
                    weight.zero_()

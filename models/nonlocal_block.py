"""Space-time non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018).

Two instantiations of the pairwise function f (Wang et al. Sec. 3.2), as PySlowFast names
them: ``"softmax"`` (embedded Gaussian, eq. 3: a softmax over dot products of two 1x1x1
embeddings, scaled by ``dim_inner ** -0.5``) and ``"dot_product"`` (the raw dot products
divided by the number of attended positions N, Wang et al.'s "Dot product" form, which
PySlowFast's published AVA R101 models use). Weights do not show which one a checkpoint
was trained with. The output goes through a 1x1x1 conv and a norm layer and is added
to the input, so a block whose final norm has gamma = 0 is the identity at initialisation
(Wang et al. Sec. 4.1), which lets it be inserted into a pretrained network without
disturbing it.

Parameter names (``conv_theta``, ``conv_phi``, ``conv_g``, ``conv_out``, ``norm``) map 1:1
to pytorchvideo's ``NonLocal`` and to PySlowFast's ``Nonlocal`` (``bn`` there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

Instantiation = Literal["softmax", "dot_product"]
INSTANTIATIONS: tuple[str, ...] = ("softmax", "dot_product")


class NonLocalBlock(nn.Module):
    """Residual space-time self-attention over all positions of a (B, C, T, H, W) map.

    ::

        x (B,C,T,H,W) ──┬──────────────────────────────────────────────────────┐
                        ├─ conv_theta ─────────────> q (B, C', THW)              │
                        ├─ pool ─ conv_phi ────────> k (B, C', T'H'W')           │
                        └─ pool ─ conv_g ──────────> v (B, C', T'H'W')           │
             a = softmax(q^T k * C'^-1/2)  or  q^T k / T'H'W'  (B, THW, T'H'W')  │
             y = v a^T (B, C', THW) -> conv_out -> norm (B, C, T, H, W) ─── + ──┘

    Args:
        dim: channels C of the input and output.
        dim_inner: channels C' of the embeddings; ``dim // 2`` by default (Wang et al.).
        pool_size: max-pool kernel (= stride) applied before ``conv_phi``/``conv_g``;
            (1, 2, 2) divides attention cost by 4 with little accuracy loss (Wang et al.
            Sec. 3.3, "subsampling"). ``None`` attends to every position.
        norm: builds the norm layer on the output, called as ``norm(dim)``.
        zero_init_final_norm: set the output norm's gamma to 0 so the block starts as the
            identity.
        scale: divide the dot products by ``sqrt(C')`` before the softmax (``softmax``
            only).
        instantiation: ``"softmax"`` or ``"dot_product"`` (see the module docstring).
    """

    def __init__(
        self,
        dim: int,
        dim_inner: int | None = None,
        *,
        pool_size: tuple[int, int, int] | None = (1, 2, 2),
        norm: Callable[[int], nn.Module] = nn.BatchNorm3d,
        zero_init_final_norm: bool = True,
        scale: bool = True,
        instantiation: Instantiation = "softmax",
    ) -> None:
        super().__init__()
        if instantiation not in INSTANTIATIONS:
            raise ValueError(
                f"NonLocalBlock: instantiation must be one of {INSTANTIATIONS}, got "
                f"{instantiation!r}"
            )
        self.instantiation: str = instantiation
        inner = dim // 2 if dim_inner is None else dim_inner
        if inner < 1:
            raise ValueError(f"NonLocalBlock: dim_inner must be >= 1, got {inner} (dim={dim})")
        self.dim_inner: int = inner
        self.zero_init_final_norm: bool = zero_init_final_norm
        self.scale: bool = scale
        self.conv_theta = nn.Conv3d(dim, inner, kernel_size=1)
        self.conv_phi = nn.Conv3d(dim, inner, kernel_size=1)
        self.conv_g = nn.Conv3d(dim, inner, kernel_size=1)
        self.pool: nn.Module = (
            nn.MaxPool3d(kernel_size=pool_size, stride=pool_size)
            if pool_size is not None and pool_size != (1, 1, 1)
            else nn.Identity()
        )
        self.conv_out = nn.Conv3d(inner, dim, kernel_size=1)
        self.norm = norm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise convs with N(0, 0.01) (PySlowFast's non-local init) and the norm."""
        for conv in (self.conv_theta, self.conv_phi, self.conv_g, self.conv_out):
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        weight = getattr(self.norm, "weight", None)
        bias = getattr(self.norm, "bias", None)
        if isinstance(weight, torch.Tensor):
            with torch.no_grad():
                weight.fill_(0.0 if self.zero_init_final_norm else 1.0)
        if isinstance(bias, torch.Tensor):
            with torch.no_grad():
                bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        q = self.conv_theta(x).flatten(2)  # (B, C', THW)
        pooled = self.pool(x)  # (B, C, T', H', W')
        k = self.conv_phi(pooled).flatten(2)  # (B, C', T'H'W')
        v = self.conv_g(pooled).flatten(2)  # (B, C', T'H'W')
        attn = torch.matmul(q.transpose(1, 2), k)  # (B, THW, T'H'W')
        if self.instantiation == "dot_product":
            attn = attn / attn.shape[-1]  # divide by N = T'H'W', the attended positions
        else:
            if self.scale:
                attn = attn * (self.dim_inner**-0.5)
            attn = attn.softmax(dim=-1)
        y = torch.matmul(v, attn.transpose(1, 2))  # (B, C', THW)
        y = y.reshape(y.shape[0], y.shape[1], x.shape[2], x.shape[3], x.shape[4])  # (B,C',T,H,W)
        return x + self.norm(self.conv_out(y))  # (B, C, T, H, W)

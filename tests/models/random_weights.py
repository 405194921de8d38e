"""Random norm statistics for models compared against a reference: a fresh BatchNorm is close
to the identity, so eval-mode outputs would not depend on it."""

from __future__ import annotations

import torch
from torch import nn


def randomise_norms(model: nn.Module, seed: int = 0, *, linear_bias: bool = False) -> None:
    """Give every ``BatchNorm3d`` non-trivial statistics and affine terms (and, with
    ``linear_bias``, every ``Linear`` a random bias), drawn in module order from ``seed``.
    gamma < 1 keeps activations O(1) through the residual sums, as in a trained network, so an
    absolute tolerance (1e-4 on float32 outputs) means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif linear_bias and isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

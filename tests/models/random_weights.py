"""Random norm statistics for models compared against a reference: a fresh BatchNorm is close
to the identity, so eval-mode outputs would not depend on it."""

from __future__ import annotations

import torch
from torch import nn

from bench.pyslowfast_random_checkpoint import randomise_batchnorm


def randomise_norms(model: nn.Module, seed: int = 0, *, linear_bias: bool = False) -> None:
    """Give every ``BatchNorm3d`` non-trivial statistics and affine terms (and, with
    ``linear_bias``, every ``Linear`` a random bias), drawn in module order from ``seed``.
    Activations stay O(1), as in a trained network, so an absolute tolerance (1e-4 on float32
    outputs) means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                randomise_batchnorm(m, g)
            elif linear_bias and isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

"""Guard of the training loop against NaN/inf: a bad step is skipped, a run of them stops.

After ``loss.backward()`` and before the optimizer step, `NonFiniteGuard.check` asks
whether the loss and every gradient are finite. A step that is not is skipped (the
gradients are dropped, the weights and optimizer state stay as they were) and counted;
``max_consecutive`` such steps in a row raise `NonFiniteTrainingError`, naming the
iteration, the loss and the likely cause, instead of training on into NaN weights.

Under DDP every process takes the same decision: the gradients are already averaged over
the processes, and the verdict is reduced with MIN, so one process's non-finite loss makes
all of them skip (otherwise their weights would drift apart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["MAX_CONSECUTIVE_NONFINITE", "NonFiniteGuard", "NonFiniteTrainingError"]

# Consecutive non-finite steps tolerated before the run stops: one overflowing batch can be
# skipped; several in a row mean the weights or the inputs are broken.
MAX_CONSECUTIVE_NONFINITE = 5


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


def _is_finite(loss: Tensor, params: Iterable[Tensor]) -> bool:
    flags = [torch.isfinite(loss.detach()).all()]
    flags += [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    ok = torch.stack(flags).all().to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


@dataclass
class NonFiniteGuard:
    """Counts skipped steps; see the module docstring."""

    max_consecutive: int = MAX_CONSECUTIVE_NONFINITE
    skipped: int = 0  # non-finite steps skipped in this run
    consecutive: int = 0  # of them, in a row up to the last step checked

    def check(
        self, iteration: int, loss: Tensor, params: Iterable[Tensor], cause: Callable[[], str]
    ) -> bool:
        """True: the step at ``iteration`` (1-based) may be taken. False: skip it (its
        gradients are non-finite or its loss is). Raises `NonFiniteTrainingError` at the
        ``max_consecutive``-th bad step in a row; ``cause()`` then says what likely
        went wrong."""
        if _is_finite(loss, params):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"iteration {iteration}: loss {float(loss.detach())} -- {self.consecutive} "
                f"consecutive steps with a non-finite loss or gradient, training stopped. "
                f"Likely cause: {cause()}"
            )
        return False

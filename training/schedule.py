"""Learning-rate schedules as pure functions of the iteration (DESIGN.md, "Schedule").

* `warmup_cosine_lr`: linear warm-up, then report A's half-cosine decay
  ``lr = 0.5 * lr0 * (cos(pi * it / it_max) + 1)`` (pre-training).
* `steps_lr`: ``lr0`` divided by 10 at given iterations (fine-tuning; report A's AVA
  recipe: lr 0.016, steps at 16k and 21k of 26k iterations).

The training loop calls ``set_lr(optimizer, learning_rate(config, it))`` once per
iteration; nothing here keeps state, so resuming from a checkpoint needs only the iteration
number. `seed_everything` seeds a run. Both trainers (``training.train``,
``training.pretrain``) import them from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from training.config import TrainConfig

__all__ = [
    "cosine_lr",
    "learning_rate",
    "seed_everything",
    "set_lr",
    "steps_lr",
    "warmup_cosine_lr",
]


def _check(it: float, lr0: float) -> None:
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {it}")
    if lr0 < 0:
        raise ValueError(f"lr0 must be >= 0, got {lr0}")


def _linear_warmup(it: float, *, warmup_iters: int, warmup_start_lr: float, lr_end: float) -> float:
    # PySlowFast's rule: a straight line from warmup_start_lr at it = 0 to the schedule's
    # own value at it = warmup_iters, so the two pieces meet without a jump.
    return warmup_start_lr + (lr_end - warmup_start_lr) * it / warmup_iters


def cosine_lr(it: float, *, lr0: float, it_max: int, end_lr: float = 0.0) -> float:
    """Half-cosine decay from ``lr0`` at 0 to ``end_lr`` at ``it_max`` (and after).

    ``end_lr + (lr0 - end_lr) * 0.5 * (cos(pi * it / it_max) + 1)``; with ``end_lr = 0``
    this is report A's ``0.5 * lr0 * (cos(pi * it / it_max) + 1)``.
    """
    _check(it, lr0)
    if it_max <= 0:
        raise ValueError(f"it_max must be > 0, got {it_max}")
    t = min(it, it_max) / it_max  # past it_max the cosine would rise again: hold end_lr
    return end_lr + (lr0 - end_lr) * 0.5 * (math.cos(math.pi * t) + 1.0)


def warmup_cosine_lr(
    it: float,
    *,
    lr0: float,
    it_max: int,
    warmup_iters: int,
    warmup_start_lr: float,
    end_lr: float = 0.0,
) -> float:
    """Linear warm-up for ``warmup_iters`` iterations, then `cosine_lr`.

    How the pieces join: for ``it < warmup_iters`` the rate goes linearly from
    ``warmup_start_lr`` (at 0) to ``cosine_lr(warmup_iters)`` (the cosine's value where
    warm-up ends, slightly below ``lr0``); from ``warmup_iters`` on it *is* the cosine
    of the full ``it / it_max`` (the cosine is not shifted or rescaled to start after the
    warm-up). This is PySlowFast's rule; it makes the schedule continuous. Report A's
    pre-training: ``lr0 = 0.4, it_max = 180k, warmup_iters = 4k`` (Kinetics-600).
    """
    _check(it, lr0)
    if warmup_iters < 0 or warmup_iters > it_max:
        raise ValueError(f"warmup_iters must be in [0, it_max={it_max}], got {warmup_iters}")
    if it < warmup_iters:
        lr_end = cosine_lr(warmup_iters, lr0=lr0, it_max=it_max, end_lr=end_lr)
        return _linear_warmup(
            it, warmup_iters=warmup_iters, warmup_start_lr=warmup_start_lr, lr_end=lr_end
        )
    return cosine_lr(it, lr0=lr0, it_max=it_max, end_lr=end_lr)


def steps_lr(
    it: float,
    *,
    lr0: float,
    steps: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_start_lr: float = 0.0,
) -> float:
    """``lr0 * gamma ** k`` where ``k`` = number of ``steps`` that are ``<= it``.

    ``steps`` are the iterations at which the rate drops (report A: ``(16_000, 21_000)``
    of 26k, ``gamma = 0.1``). An optional linear warm-up joins the step value at
    ``warmup_iters`` the same way as in `warmup_cosine_lr`.
    """
    _check(it, lr0)
    if list(steps) != sorted(steps):
        raise ValueError(f"steps must be increasing, got {list(steps)}")

    def value(i: float) -> float:
        return lr0 * gamma ** sum(1 for s in steps if s <= i)

    if it < warmup_iters:
        return _linear_warmup(
            it,
            warmup_iters=warmup_iters,
            warmup_start_lr=warmup_start_lr,
            lr_end=value(warmup_iters),
        )
    return value(it)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's rate to ``lr`` times the group's ``"lr_scale"`` (default 1).

    A group may carry ``lr_scale`` (e.g. 0.1 for a pre-trained backbone and 1 for a new
    head) so that one schedule drives groups at fixed ratios.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_scale", 1.0))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(config: TrainConfig, it: int) -> float:
    """The schedule of ``config`` at iteration ``it`` (pure: resuming needs only ``it``)."""
    schedule: Callable[..., float] = (
        partial(steps_lr, steps=config.lr_steps)
        if config.schedule == "steps"
        else partial(warmup_cosine_lr, it_max=config.iterations)
    )
    return schedule(
        it,
        lr0=config.lr,
        warmup_iters=config.warmup_iters,
        warmup_start_lr=config.warmup_start_lr,
    )

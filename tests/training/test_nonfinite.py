"""The training loop's guard against NaN/inf: skip a bad step, stop on a run of them."""

from __future__ import annotations

import pytest
import torch

from training.nonfinite import NonFiniteGuard, NonFiniteTrainingError


def _param(grad: float) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, grad, 1.0])
    return p


def test_a_non_finite_loss_or_gradient_skips_the_step_and_a_finite_one_resets_the_run() -> None:
    guard = NonFiniteGuard(max_consecutive=3)
    cause = lambda: "unused"  # noqa: E731
    assert guard.check(1, torch.tensor(1.0), [_param(0.5)], cause)
    assert not guard.check(2, torch.tensor(float("nan")), [_param(0.5)], cause)
    assert not guard.check(3, torch.tensor(1.0), [_param(float("inf"))], cause)  # grad only
    assert (guard.skipped, guard.consecutive) == (2, 2)
    assert guard.check(
        4, torch.tensor(1.0), [_param(0.5), torch.nn.Parameter(torch.ones(2))], cause
    )
    assert (guard.skipped, guard.consecutive) == (2, 0)


def test_too_many_consecutive_non_finite_steps_stop_with_step_loss_and_cause() -> None:
    guard = NonFiniteGuard(max_consecutive=2)
    assert not guard.check(7, torch.tensor(float("inf")), [], lambda: "lr too high")
    with pytest.raises(NonFiniteTrainingError, match=r"iteration 8: loss nan .*lr too high"):
        guard.check(8, torch.tensor(float("nan")), [], lambda: "lr too high")

"""Warm-up + half-cosine and step schedules (pure functions) and set_lr."""

from __future__ import annotations

import math

import pytest
import torch

from training.schedule import cosine_lr, set_lr, steps_lr, warmup_cosine_lr

LR0, IT_MAX, WARM, START = 0.4, 1000, 100, 0.01


def lr(it: float) -> float:
    return warmup_cosine_lr(it, lr0=LR0, it_max=IT_MAX, warmup_iters=WARM, warmup_start_lr=START)


def test_cosine_values() -> None:
    assert cosine_lr(0, lr0=LR0, it_max=IT_MAX) == pytest.approx(LR0)
    assert cosine_lr(IT_MAX / 2, lr0=LR0, it_max=IT_MAX) == pytest.approx(LR0 / 2)
    assert cosine_lr(IT_MAX, lr0=LR0, it_max=IT_MAX) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(2 * IT_MAX, lr0=LR0, it_max=IT_MAX) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(IT_MAX, lr0=LR0, it_max=IT_MAX, end_lr=1e-3) == pytest.approx(1e-3)


def test_warmup_cosine_key_points() -> None:
    at_warm = 0.5 * LR0 * (math.cos(math.pi * WARM / IT_MAX) + 1)  # the cosine at warm-up end
    assert lr(0) == pytest.approx(START)
    assert lr(WARM / 2) == pytest.approx((START + at_warm) / 2)
    assert lr(WARM) == pytest.approx(at_warm)
    assert lr(WARM - 1e-9) == pytest.approx(at_warm, rel=1e-6)  # continuous at the join
    assert lr(IT_MAX / 2) == pytest.approx(LR0 / 2)  # the cosine is not shifted by warm-up
    assert lr(IT_MAX) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_is_monotone_on_each_side() -> None:
    up = [lr(i) for i in range(WARM + 1)]
    down = [lr(i) for i in range(WARM, IT_MAX + 1)]
    assert all(a < b for a, b in zip(up, up[1:], strict=False))
    assert all(a > b for a, b in zip(down, down[1:], strict=False))


def test_steps_lr_report_a_recipe() -> None:
    def lr_a(it: int, **warmup: float) -> float:
        return steps_lr(it, lr0=0.016, steps=(16_000, 21_000), **warmup)  # type: ignore[arg-type]

    assert lr_a(0) == pytest.approx(0.016)
    assert lr_a(15_999) == pytest.approx(0.016)
    assert lr_a(16_000) == pytest.approx(0.0016)
    assert lr_a(21_000) == pytest.approx(0.00016)
    assert lr_a(25_999) == pytest.approx(0.00016)
    warm = lr_a(50, warmup_iters=100, warmup_start_lr=0.0)
    assert warm == pytest.approx(0.008)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: lr(-1), "iteration"),
        (lambda: cosine_lr(0, lr0=0.1, it_max=0), "it_max"),
        (
            lambda: warmup_cosine_lr(0, lr0=0.1, it_max=10, warmup_iters=20, warmup_start_lr=0),
            "warmup",
        ),
        (lambda: steps_lr(0, lr0=0.1, steps=(5, 2)), "increasing"),
    ],
)
def test_schedule_rejects_bad_arguments(call: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        call()  # type: ignore[operator]


def test_set_lr_honours_group_scale() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups: list[dict[str, object]] = [{"params": [a]}, {"params": [b], "lr_scale": 0.1}]
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])

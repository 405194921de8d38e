"""Pose softmax CE, sigmoid BCE / focal, the scene loss and their weighted total."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    action_loss,
    focal_loss_with_logits,
    pose_loss,
    scene_loss,
    scene_targets_from_persons,
    sigmoid_loss,
    total_loss,
)

POSE = [0, 1, 2]  # columns 0-2 are poses, 3-4 the rest


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(
        [
            [2.0, 0.0, -1.0, 0.5, -0.5],
            [0.0, 1.0, 0.0, -2.0, 1.5],
            [1.0, 1.0, 1.0, 0.0, 0.0],  # no pose label: out of the pose term
        ]
    )
    targets = torch.tensor(
        [
            [1.0, 0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 1.0],
            [0.0, 0.0, 0.0, 1.0, 1.0],
        ]
    )
    return logits, targets


def test_pose_loss_matches_hand_computed_cross_entropy() -> None:
    logits, targets = _example()
    # person 0: -log softmax([2, 0, -1])[0]; person 1: -log softmax([0, 1, 0])[2]
    ce0 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0)))
    ce1 = -(0.0 - math.log(1.0 + math.e + 1.0))
    assert float(pose_loss(logits, targets, POSE)) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # a (C,) bool mask works the same as column indices
    mask = torch.tensor([True, True, True, False, False])
    assert float(pose_loss(logits, targets, mask)) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # ... and so does a tuple of bools (LabelMap.pose_mask), not read as indices 1/0
    bools = (True, True, True, False, False)
    assert float(pose_loss(logits, targets, bools)) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_pose_loss_without_any_pose_label_is_zero_with_gradient() -> None:
    logits = torch.randn(2, 5, requires_grad=True)
    targets = torch.zeros(2, 5)
    loss = pose_loss(logits, targets, POSE)
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_sigmoid_loss_is_bce_over_non_pose_columns() -> None:
    logits, targets = _example()
    expected = F.binary_cross_entropy_with_logits(logits[:, 3:], targets[:, 3:])
    assert float(sigmoid_loss(logits, targets, POSE)) == pytest.approx(float(expected))


def test_focal_with_gamma_zero_equals_bce() -> None:
    logits, targets = _example()
    bce = sigmoid_loss(logits, targets, POSE, kind="bce")
    focal = sigmoid_loss(logits, targets, POSE, kind="focal", focal_gamma=0.0)
    assert float(focal) == pytest.approx(float(bce), rel=1e-6)


def test_focal_matches_lin_et_al_formula() -> None:
    x = torch.tensor([[3.0, -1.0]])
    y = torch.tensor([[1.0, 1.0]])
    p = torch.sigmoid(x)
    # FL = -alpha (1 - p)^gamma log p for positives (Lin et al. 2017, eq. 5)
    expected = -0.25 * (1 - p) ** 2 * torch.log(p)
    got = focal_loss_with_logits(x, y, gamma=2.0, alpha=0.25)
    torch.testing.assert_close(got, expected)
    # an easy positive (p = 0.95) is down-weighted far more than a hard one (p = 0.27)
    ratio = focal_loss_with_logits(x, y, gamma=2.0) / F.binary_cross_entropy_with_logits(
        x, y, reduction="none"
    )
    assert float(ratio[0, 0]) < 0.01 < 0.5 < float(ratio[0, 1])


def test_action_loss_weights_and_bad_kind() -> None:
    logits, targets = _example()
    pose = pose_loss(logits, targets, POSE)
    other = sigmoid_loss(logits, targets, POSE)
    got = action_loss(logits, targets, POSE, pose_weight=0.5, other_weight=3.0)
    assert float(got) == pytest.approx(float(0.5 * pose + 3.0 * other), rel=1e-6)
    with pytest.raises(ValueError, match="'bce' or 'focal'"):
        action_loss(logits, targets, POSE, other_loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        action_loss(logits, targets, [7])


def test_scene_targets_and_loss() -> None:
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    batch_index = torch.tensor([0, 0, 2])
    scene = scene_targets_from_persons(targets, batch_index, batch_size=3)
    torch.testing.assert_close(
        scene, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    )
    logits = torch.randn(3, 3)
    expected = F.binary_cross_entropy_with_logits(logits, scene)
    assert float(scene_loss(logits, scene)) == pytest.approx(float(expected))


def test_total_loss_combines_weighted_parts_and_backpropagates() -> None:
    logits, targets = _example()
    logits = logits.clone().requires_grad_(True)
    scene_logits = torch.randn(2, 5, requires_grad=True)
    scene_t = scene_targets_from_persons(targets, torch.tensor([0, 1, 1]), 2)
    parts = total_loss(
        logits,
        targets,
        POSE,
        scene_logits=scene_logits,
        scene_targets=scene_t,
        pose_weight=2.0,
        other_weight=0.5,
        scene_weight=0.25,
    )
    expected = 2.0 * parts.pose + 0.5 * parts.other + 0.25 * parts.scene
    assert float(parts.total.detach()) == pytest.approx(float(expected), rel=1e-6)
    parts.total.backward()
    assert scene_logits.grad is not None and float(scene_logits.grad.abs().sum()) > 0
    assert set(parts.as_floats()) == {"loss", "loss_pose", "loss_other", "loss_scene"}
    # no global branch: the scene term is 0
    no_scene = total_loss(logits, targets, POSE)
    assert float(no_scene.scene) == 0.0


def test_empty_batch_gives_zero_losses() -> None:
    logits = torch.zeros(0, 5, requires_grad=True)
    parts = total_loss(logits, torch.zeros(0, 5), POSE)
    assert float(parts.total.detach()) == 0.0
    parts.total.backward()

"""Training losses of the action model (DESIGN.md, "Losses").

Three terms:

* **pose**: softmax cross-entropy over the pose columns (AVA ids 1-14) -- every person
  has exactly one pose, so the pose columns are one categorical variable;
* **other**: per-class sigmoid binary cross-entropy, or focal loss, over the remaining
  columns, which are independent yes/no questions (a person can talk *and* hold a cup);
* **scene**: report A's "global loss", a per-class sigmoid BCE of the clip-level scene
  classifier against every action present in the clip.

``total = pose_weight * pose + other_weight * other + scene_weight * scene``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "LossParts",
    "action_loss",
    "focal_loss_with_logits",
    "pose_loss",
    "scene_loss",
    "scene_targets_from_persons",
    "sigmoid_loss",
    "total_loss",
]

OtherLoss = Literal["bce", "focal"]


def _pose_mask(
    pose_columns: Sequence[int] | torch.Tensor, num_classes: int, device: torch.device
) -> torch.Tensor:
    """(C,) bool mask from column indices, or from a (C,) bool mask (a tensor or a sequence
    of bools such as `core.ava.LabelMap.pose_mask`)."""
    if not isinstance(pose_columns, torch.Tensor):
        pose_columns = torch.tensor(list(pose_columns))
    if pose_columns.dtype == torch.bool:
        if pose_columns.shape != (num_classes,):
            raise ValueError(
                f"pose mask has shape {tuple(pose_columns.shape)}, expected ({num_classes},)"
            )
        return pose_columns.to(device)
    cols = pose_columns.long().reshape(-1)
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= num_classes):
        raise ValueError(f"pose columns {cols.tolist()} outside 0..{num_classes - 1}")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[cols.to(device)] = True
    return mask


def _check_pair(logits: torch.Tensor, targets: torch.Tensor, what: str) -> None:
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"{what}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must "
            "both be (K, C)"
        )


def pose_loss(
    logits: torch.Tensor, targets: torch.Tensor, pose_columns: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Softmax cross-entropy over the pose columns, mean over persons with a pose label.

    ``logits``, ``targets``: (K, C); ``targets`` multi-hot. The target pose of a person is
    the argmax of its pose columns (the first on a tie: AVA gives one pose per person, a
    second one would be an annotation slip). Persons with *no* pose label are excluded
    from this term, not treated as a class: LS may drop a frequent pose label
    (`training.balancing.subsample_labels`), and some AVA boxes have none; neither says
    the person has no pose. With no such person the term is 0 (still in the graph).
    """
    _check_pair(logits, targets, "pose_loss")
    mask = _pose_mask(pose_columns, logits.shape[1], logits.device)  # (C,)
    pose_logits = logits[:, mask]  # (K, P)
    pose_targets = targets[:, mask]  # (K, P)
    has_pose = pose_targets.sum(dim=1) > 0  # (K,)
    if not bool(has_pose.any()):
        return logits.sum() * 0.0
    labels = pose_targets[has_pose].argmax(dim=1)  # (K',)
    return F.cross_entropy(pose_logits[has_pose], labels)


def focal_loss_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al., "Focal Loss for Dense Object
    Detection", ICCV 2017, eq. 5): ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``.

    ``p_t = p`` for a positive and ``1 - p`` for a negative; ``alpha_t = alpha`` for a
    positive and ``1 - alpha`` for a negative (no weighting when ``alpha`` is None).
    ``log(p_t)`` comes from ``binary_cross_entropy_with_logits`` for numerical stability,
    so ``gamma = 0, alpha = None`` is exactly BCE. Returns the unreduced (K, C) tensor.
    """
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t)
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma) if gamma != 0 else ce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def sigmoid_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pose_columns: Sequence[int] | torch.Tensor,
    *,
    kind: OtherLoss = "bce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
) -> torch.Tensor:
    """Sigmoid BCE or focal loss over the non-pose columns, mean over persons x classes.

    The mean over all (K x C_other) elements (PySlowFast's AVA BCE reduction) rather than
    focal loss's per-positive normalisation: with a few persons per clip there is no
    large pool of easy negatives to normalise against, and the mean keeps ``gamma = 0``
    identical to BCE. With K = 0 the term is 0.
    """
    _check_pair(logits, targets, "sigmoid_loss")
    mask = ~_pose_mask(pose_columns, logits.shape[1], logits.device)  # (C,)
    x = logits[:, mask]  # (K, C_other)
    y = targets[:, mask].to(x.dtype)
    if x.numel() == 0:
        return logits.sum() * 0.0
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(x, y)
    if kind == "focal":
        return focal_loss_with_logits(x, y, gamma=focal_gamma, alpha=focal_alpha).mean()
    raise ValueError(f"sigmoid_loss: kind must be 'bce' or 'focal', got {kind!r}")


def action_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pose_columns: Sequence[int] | torch.Tensor,
    *,
    other_loss: OtherLoss = "bce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
    pose_weight: float = 1.0,
    other_weight: float = 1.0,
) -> torch.Tensor:
    """Per-person action loss: ``pose_weight * pose_loss + other_weight * sigmoid_loss``.

    ``logits``: (K, C) action logits; ``targets``: (K, C) multi-hot float;
    ``pose_columns``: indices (or a (C,) bool mask) of the pose columns.
    """
    pose = pose_loss(logits, targets, pose_columns)
    other = sigmoid_loss(
        logits,
        targets,
        pose_columns,
        kind=other_loss,
        focal_gamma=focal_gamma,
        focal_alpha=focal_alpha,
    )
    return pose_weight * pose + other_weight * other


def scene_targets_from_persons(
    targets: torch.Tensor, batch_index: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(B, C) clip-level targets: an action is present in a clip if any person does it.

    ``targets``: (K, C) per-person multi-hot; ``batch_index``: (K,) clip of each person.
    """
    out = torch.zeros(batch_size, targets.shape[1], dtype=targets.dtype, device=targets.device)
    if targets.shape[0]:
        idx = batch_index.long().view(-1, 1).expand_as(targets)
        out = out.scatter_reduce(0, idx, targets, reduce="amax")
    return out


def scene_loss(scene_logits: torch.Tensor, scene_targets: torch.Tensor) -> torch.Tensor:
    """Report A's global loss: per-class sigmoid BCE of the scene classifier, mean over
    (B x C). ``scene_logits``, ``scene_targets``: (B, C); targets from
    `scene_targets_from_persons` (every action present in the clip)."""
    _check_pair(scene_logits, scene_targets, "scene_loss")
    if scene_logits.numel() == 0:
        return scene_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(scene_logits, scene_targets.to(scene_logits.dtype))


@dataclass(frozen=True)
class LossParts:
    """The weighted total (with gradient) and its unweighted parts (detached, for logs)."""

    total: torch.Tensor
    pose: torch.Tensor
    other: torch.Tensor
    scene: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "loss_pose": float(self.pose),
            "loss_other": float(self.other),
            "loss_scene": float(self.scene),
        }


def total_loss(
    action_logits: torch.Tensor,
    targets: torch.Tensor,
    pose_columns: Sequence[int] | torch.Tensor,
    *,
    scene_logits: torch.Tensor | None = None,
    scene_targets: torch.Tensor | None = None,
    other_loss: OtherLoss = "bce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
    pose_weight: float = 1.0,
    other_weight: float = 1.0,
    scene_weight: float = 1.0,
) -> LossParts:
    """All three terms, weighted. Without ``scene_logits`` (a model with no global
    branch) the scene term is 0. ``action_logits``, ``targets``: (K, C);
    ``scene_logits``, ``scene_targets``: (B, C)."""
    pose = pose_loss(action_logits, targets, pose_columns)
    other = sigmoid_loss(
        action_logits,
        targets,
        pose_columns,
        kind=other_loss,
        focal_gamma=focal_gamma,
        focal_alpha=focal_alpha,
    )
    if scene_logits is not None:
        if scene_targets is None:
            raise ValueError("total_loss: scene_logits given without scene_targets")
        scene = scene_loss(scene_logits, scene_targets)
    else:
        scene = action_logits.sum() * 0.0
    total = pose_weight * pose + other_weight * other + scene_weight * scene
    return LossParts(total=total, pose=pose.detach(), other=other.detach(), scene=scene.detach())

"""Action probabilities from logits, torch-free (the service runs this without PyTorch).

A model's output activation is one of :data:`OUTPUT_ACTIVATIONS`, a property of the model
(``ActionModel.output_activation``, the manifest's ``model.output_activation``):

* ``"pose_softmax_sigmoid"`` (heads trained here): AVA's pose classes (ids 1-14: stand,
  sit, walk, ...) are mutually exclusive — each person has exactly one pose — so they
  share one softmax; every other class is an independent sigmoid (DESIGN.md, "Losses");
* ``"sigmoid"``: an independent sigmoid per class, pose classes included — how
  PySlowFast, pytorchvideo and MMAction2 train and score their AVA heads, so every
  imported upstream head uses it.

``models.action_model.ActionModel.probabilities`` is the same math in torch; a test checks
that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

POSE_SOFTMAX_SIGMOID = "pose_softmax_sigmoid"
SIGMOID = "sigmoid"
OUTPUT_ACTIVATIONS: tuple[str, ...] = (POSE_SOFTMAX_SIGMOID, SIGMOID)
# What a model or manifest that does not name its activation means (everything before the
# field existed was trained and exported with it).
DEFAULT_OUTPUT_ACTIVATION = POSE_SOFTMAX_SIGMOID


def check_output_activation(activation: str) -> str:
    """``activation`` if it is one of :data:`OUTPUT_ACTIVATIONS`; else a ValueError."""
    if activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(
            f"output_activation must be one of {list(OUTPUT_ACTIVATIONS)}, got {activation!r}"
        )
    return activation


def pose_columns(class_ids: Sequence[int], pose_ids: Sequence[int]) -> tuple[int, ...]:
    """Column positions, in a model's class list, of the classes that are pose classes.

    >>> pose_columns([3, 20, 1, 80], pose_ids=range(1, 15))
    (0, 2)
    """
    pose = {int(i) for i in pose_ids}
    return tuple(col for col, cid in enumerate(class_ids) if int(cid) in pose)


def _pose_mask(
    pose_columns: Sequence[int] | npt.NDArray[np.generic], num_classes: int
) -> np.ndarray:
    cols = np.asarray(pose_columns)
    if cols.dtype == np.bool_:
        if cols.shape != (num_classes,):
            raise ValueError(
                f"a boolean pose mask must have one entry per class ({num_classes}), "
                f"got shape {cols.shape}"
            )
        return cols
    mask = np.zeros(num_classes, dtype=bool)
    if cols.size:
        cols = cols.astype(np.int64)
        if cols.min() < 0 or cols.max() >= num_classes:
            raise ValueError(f"pose columns {cols.tolist()} out of range for {num_classes} classes")
        mask[cols] = True
    return mask


def action_probabilities(
    logits: npt.ArrayLike,
    pose_columns: Sequence[int] | npt.NDArray[np.generic],
    activation: str = DEFAULT_OUTPUT_ACTIVATION,
) -> np.ndarray:
    """Logits -> probabilities under the model's output ``activation``.

    Args:
        logits: (K, C) action logits, one row per person; K may be 0.
        pose_columns: column indices of the pose classes (see :func:`pose_columns`), or a
            boolean mask of length C.
        activation: ``"pose_softmax_sigmoid"``: softmax over the pose columns, sigmoid over
            the others; ``"sigmoid"``: sigmoid over every column (pose columns unused).

    Returns:
        (K, C) float32 probabilities; with ``"pose_softmax_sigmoid"`` the pose columns of
        each row sum to 1 (when there is at least one pose column).
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"logits must be (K, C), got shape {x.shape}")
    mask = _pose_mask(pose_columns, x.shape[1])
    if check_output_activation(activation) == SIGMOID:
        mask = np.zeros_like(mask)
    # Numerically stable sigmoid: 1 / (1 + exp(-x)) = exp(-log(1 + exp(-x))).
    probs = np.exp(-np.logaddexp(np.float32(0.0), -x)).astype(np.float32)
    if mask.any() and x.shape[0]:
        pose = x[:, mask]
        pose = np.exp(pose - pose.max(axis=1, keepdims=True))
        probs[:, mask] = pose / pose.sum(axis=1, keepdims=True)
    return probs

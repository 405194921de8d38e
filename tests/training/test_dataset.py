"""Dataset items: shapes, pixel boxes, targets, balancing entries, collate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.preset_info import preset_info
from training.dataset import (
    ActionDataset,
    Augmentation,
    balanced_entries,
    collate,
    plain_entries,
)
from training.frame_cache import FrameCache
from training.train import load_split

INFO = preset_info("slowfast_tiny")


def _dataset(world: Path, augmentation: Augmentation = Augmentation()) -> ActionDataset:
    data = load_split(world, "train")
    return ActionDataset(
        data.keyframes,
        plain_entries(data.keyframes, data.labels),
        FrameCache(world, 48, fps=data.info.fps, cache_dir=None),
        data.info,
        INFO,
        augmentation=augmentation,
    )


def test_item_shapes_boxes_targets(tiny_world: Path) -> None:
    ds = _dataset(tiny_world)
    data = load_split(tiny_world, "train")
    item = ds[0]
    kf = data.keyframes[0]
    assert item.slow.shape == (3, 4, 48, 64)  # T_s = 16 / alpha 4
    assert item.fast.shape == (3, 16, 48, 64)
    k = len(kf)
    assert item.boxes.shape == (k, 4) and item.targets.shape == (k, len(data.labels))
    # Un-augmented boxes are the normalised ones scaled to the 64x48 input.
    want = kf.boxes * np.array([64, 48, 64, 48], np.float32)
    assert torch.allclose(item.boxes, torch.from_numpy(want), atol=1e-4)
    assert torch.equal(item.targets, torch.from_numpy(kf.label_matrix(data.labels)))
    # Exactly one pose per person (the world's rule).
    pose = [data.labels.index(i) for i in data.labels.pose_ids]
    assert torch.all(item.targets[:, pose].sum(1) == 1)


def test_flip_mirrors_boxes(tiny_world: Path) -> None:
    plain = _dataset(tiny_world)[1]
    flipped = _dataset(tiny_world, Augmentation(force_flip=True))[1]
    w = plain.slow.shape[-1]
    assert torch.allclose(flipped.boxes[:, 0], w - plain.boxes[:, 2], atol=1e-4)
    assert torch.allclose(flipped.fast, plain.fast.flip(-1), atol=1e-5)


def test_augmented_items_are_deterministic_and_valid(tiny_world: Path) -> None:
    aug = Augmentation(flip=True, box_jitter=0.1, color_jitter=0.3, scale_jitter=(40, 56))
    a, b = _dataset(tiny_world, aug)[2], _dataset(tiny_world, aug)[2]
    assert torch.equal(a.fast, b.fast) and torch.equal(a.boxes, b.boxes)
    h, w = a.fast.shape[-2:]
    assert 40 <= min(h, w) <= 56
    assert torch.all(a.boxes[:, 2] > a.boxes[:, 0]) and torch.all(a.boxes[:, 3] > a.boxes[:, 1])
    assert torch.all(a.boxes[:, [0, 2]] <= w) and torch.all(a.boxes[:, [1, 3]] <= h)


def test_collate_batch_index_and_scene_targets(tiny_world: Path) -> None:
    ds = _dataset(tiny_world)
    items = [ds[0], ds[1], ds[2]]
    batch = collate(items)
    counts = [len(i.boxes) for i in items]
    assert batch.slow.shape[0] == 3 and batch.boxes.shape == (sum(counts), 5)
    assert batch.boxes[:, 0].tolist() == [float(b) for b, n in enumerate(counts) for _ in range(n)]
    for b, item in enumerate(items):
        assert torch.equal(batch.scene_targets[b], item.targets.amax(0))


def test_balanced_entries_add_copies_with_all_labels(tiny_world: Path) -> None:
    data = load_split(tiny_world, "train")
    plain = plain_entries(data.keyframes, data.labels)
    balanced = balanced_entries(data.keyframes, data.labels, frequent_share=0.2, seed=0)
    assert len(balanced) >= len(plain)
    for entry in balanced[len(plain) :]:  # CP-IA copies: one box each, jittered
        assert len(entry.box_index) == 1 and entry.targets.shape == (1, len(data.labels))
        assert entry.targets.sum() >= 1


@pytest.mark.parametrize("share", [0.05, 0.5])
def test_balancing_is_seeded(tiny_world: Path, share: float) -> None:
    data = load_split(tiny_world, "train")
    a = balanced_entries(data.keyframes, data.labels, frequent_share=share, seed=4)
    b = balanced_entries(data.keyframes, data.labels, frequent_share=share, seed=4)
    assert len(a) == len(b)
    assert all(np.array_equal(x.targets, y.targets) for x, y in zip(a, b, strict=True))

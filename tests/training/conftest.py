"""Fixtures shared by the training tests: one tiny synthetic world per session."""

from __future__ import annotations

from pathlib import Path

import pytest

# Small enough to render in seconds; 12 s gives keyframes 2..10 and a classification
# variant with one clip per class and split.
TINY_WORLD = {
    "seed": 3,
    "train_videos": 1,
    "val_videos": 1,
    "seconds": 12,
    "width": 160,
    "height": 120,
    "fps": 10,
    "max_persons": 3,
    "classification": True,
    "cls_train_per_class": 1,
    "cls_val_per_class": 1,
}
# Model overrides that keep the tiny preset's forward pass in milliseconds.
TINY_MODEL = {"short_side": 32, "num_frames": 4, "dropout": 0.0}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.world.generate import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, WorldConfig(**TINY_WORLD), workers=1)  # type: ignore[arg-type]
    return out

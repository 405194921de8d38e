"""Flip, box jitter, colour jitter and scale jitter of training clips."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import (
    adjust_colors,
    apply_box_jitter,
    color_jitter,
    hflip,
    jitter_boxes,
    resize_clip_and_boxes,
    scale_jitter,
)


def clip_with_box(t: int = 2, h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A black clip with a white rectangle exactly under box (10, 20, 30, 50)."""
    clip = np.zeros((t, h, w, 3), dtype=np.uint8)
    clip[:, 20:50, 10:30] = 255
    return clip, np.array([[10.0, 20.0, 30.0, 50.0]], dtype=np.float32)


def white_extent(frame: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(frame[..., 0] > 127)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_hflip_maps_x1_to_width_minus_x2_and_moves_pixels() -> None:
    clip, boxes = clip_with_box()
    out, fb = hflip(clip, boxes)
    np.testing.assert_array_equal(fb, [[80 - 30, 20, 80 - 10, 50]])
    assert white_extent(out[0]) == tuple(int(v) for v in fb[0])
    again, back = hflip(out, fb)
    np.testing.assert_array_equal(again, clip.astype(np.float32))
    np.testing.assert_array_equal(back, boxes)


def test_apply_box_jitter_moves_by_fraction_of_box_size() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    out = apply_box_jitter(boxes, np.array([[0.1, -0.1, 0.05, 0.0]]), width=100, height=100)
    np.testing.assert_allclose(out, [[12.0, 16.0, 31.0, 60.0]])
    # clipped to the image and never empty
    edge = apply_box_jitter(
        np.array([[0.0, 0.0, 0.01, 1.0]]), np.array([[-0.5, -0.5, -2.0, 0.5]]), width=1, height=1
    )
    assert edge[0, 0] >= 0 and edge[0, 2] > edge[0, 0] and edge[0, 3] <= 1


def test_jitter_boxes_is_bounded_and_seeded() -> None:
    boxes = np.tile(np.array([[100.0, 50.0, 200.0, 250.0]]), (500, 1))
    a = jitter_boxes(boxes, np.random.default_rng(0), ratio=0.1, width=640, height=360)
    b = jitter_boxes(boxes, np.random.default_rng(0), ratio=0.1, width=640, height=360)
    np.testing.assert_array_equal(a, b)
    d = np.abs(a - boxes)
    assert d[:, [0, 2]].max() <= 10.0 + 1e-4 and d[:, [1, 3]].max() <= 20.0 + 1e-4
    assert d[:, 0].max() > 8.0  # it does move


def test_color_adjustments() -> None:
    rng = np.random.default_rng(0)
    clip = rng.uniform(20, 200, size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(adjust_colors(clip), clip, atol=1e-4)
    np.testing.assert_allclose(adjust_colors(clip, brightness=0.5), clip * 0.5, atol=1e-4)
    grey = adjust_colors(clip, saturation=0.0)
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-3)  # no colour left
    flat = adjust_colors(clip, contrast=0.0)
    assert flat.std() < clip.std() / 3  # contrast 0 pulls every pixel to the mean grey
    luma = clip @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(
        (flat @ np.array([0.299, 0.587, 0.114])).mean(), luma.mean(), rtol=1e-4
    )
    out = color_jitter(clip, np.random.default_rng(1), brightness=0.4, contrast=0.4, saturation=0.4)
    assert out.shape == clip.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, clip)
    with pytest.raises(ValueError, match="brightness"):
        color_jitter(clip, rng, brightness=1.5)


def test_resize_keeps_boxes_on_their_content() -> None:
    clip, boxes = clip_with_box(h=60, w=80)
    out, sb = resize_clip_and_boxes(clip, boxes, 120)  # factor 2
    assert out.shape == (2, 120, 160, 3)
    np.testing.assert_allclose(sb, [[20.0, 40.0, 60.0, 100.0]])
    x1, y1, x2, y2 = white_extent(out[0])
    assert abs(x1 - sb[0, 0]) <= 1 and abs(x2 - sb[0, 2]) <= 1
    assert abs(y1 - sb[0, 1]) <= 1 and abs(y2 - sb[0, 3]) <= 1


@pytest.mark.parametrize("short_range", [(224, 320), (32, 48)])
def test_scale_jitter_draws_short_side_in_range(short_range: tuple[int, int]) -> None:
    clip, boxes = clip_with_box(t=1, h=60, w=90)
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(12):
        out, sb = scale_jitter(clip, boxes, rng, short_side_range=short_range)
        h, w = out.shape[1:3]
        assert short_range[0] <= h <= short_range[1]
        assert w == round(90 * h / 60)
        np.testing.assert_allclose(sb[0, 2] / boxes[0, 2], w / 90, rtol=1e-5)
        sides.add(h)
    assert len(sides) > 3
    with pytest.raises(ValueError, match="short_side_range"):
        scale_jitter(clip, boxes, rng, short_side_range=(10, 5))

"""core.preprocess: the one resize + normalisation training and the service share."""

from __future__ import annotations

import numpy as np
import pytest

from core.preprocess import (
    normalise_clip,
    pack_pathways,
    preprocess_clip,
    resize_short_side,
    resized_size,
)

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


@pytest.mark.parametrize(
    ("hw", "short", "want"),
    [
        ((576, 768), 128, (128, 171)),  # 170.67 -> 171
        ((37, 53), 16, (16, 23)),  # 22.9 -> 23
        ((53, 37), 16, (23, 16)),  # portrait
        ((48, 64), 48, (48, 64)),  # already there
        ((2, 5), 2, (2, 5)),
        ((4, 10), 2, (2, 5)),
        ((8, 12), 2, (2, 3)),
        ((16, 26), 2, (2, 3)),  # 3.25 -> 3
        ((16, 20), 2, (2, 2)),  # 2.5 -> 2: Python's round, half to even, kept for manifests
    ],
)
def test_resized_size(hw: tuple[int, int], short: int, want: tuple[int, int]) -> None:
    assert resized_size(*hw, short) == want


def test_resize_matches_torch_bilinear_rounded() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 37, 53, 3), dtype=np.uint8)
    for short in (16, 37, 90):  # down, same, up
        ours = resize_short_side(frames, short)
        assert ours.dtype == np.uint8
        x = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(
            x, size=ours.shape[1:3], mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
        # torch's float numbers, rounded to the nearest level (ties may go either way).
        np.testing.assert_allclose(ours, ref.numpy(), atol=0.5 + 1e-3)


def _two_pass_reference(frames: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """The resize written out plainly: float32 rows mix, then columns, each as
    a * (1 - w) + b * w, rounded half to even. Training's cached frames and every bundle's
    parity figures were made with these exact bytes."""
    h, w = frames.shape[-3:-1]

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)

    y0, y1, wy = axis(h, new_h)
    x0, x1, wx = axis(w, new_w)
    f = frames.astype(np.float32)
    rows = f[..., y0, :, :] * (1 - wy[:, None, None]) + f[..., y1, :, :] * wy[:, None, None]
    cols = rows[..., x0, :] * (1 - wx[:, None]) + rows[..., x1, :] * wx[:, None]
    return np.rint(cols).astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "short"),
    [((240, 426, 3), 256), ((240, 320, 3), 96), ((2, 57, 77, 3), 24), ((31, 17, 1), 9)],
)
def test_resize_is_bit_exact(shape: tuple[int, ...], short: int) -> None:
    frames = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
    ours = resize_short_side(frames, short)
    np.testing.assert_array_equal(ours, _two_pass_reference(frames, *ours.shape[-3:-1]))


def test_frame_by_frame_equals_stack() -> None:
    """The service resizes frames one at a time, training whole clips: same bytes."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(4, 57, 77, 3), dtype=np.uint8)
    stacked = resize_short_side(frames, 24)
    single = np.stack([resize_short_side(f, 24) for f in frames])
    np.testing.assert_array_equal(stacked, single)


def test_resize_returns_a_new_array() -> None:
    frame = np.zeros((24, 32, 3), np.uint8)
    out = resize_short_side(frame, 24)
    assert out is not frame and not np.shares_memory(out, frame)


@pytest.mark.parametrize(
    ("shape", "dtype", "error"),
    [
        ((24, 32), np.uint8, "uint8 frames"),
        ((24, 32, 3), np.float32, "uint8 frames"),
    ],
)
def test_resize_rejects(shape: tuple[int, ...], dtype: type, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        resize_short_side(np.zeros(shape, dtype), 16)  # type: ignore[arg-type]


def test_normalise_matches_formula() -> None:
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    out = normalise_clip(frames, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    want = (frames.astype(np.float64) / 255 - [0.4, 0.5, 0.6]) / [0.2, 0.25, 0.3]
    assert out.shape == (3, 2, 5, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, want.transpose(3, 0, 1, 2), rtol=1e-5, atol=1e-5)
    # float frames (augmented clips) normalise to the same numbers
    np.testing.assert_array_equal(
        normalise_clip(frames.astype(np.float32), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)),
        out,
    )


def test_preprocess_and_pack() -> None:
    frames = np.full((32, 48, 64, 3), 255, dtype=np.uint8)
    x = preprocess_clip(frames, short_side=24, mean=MEAN, std=STD)
    assert x.shape == (3, 32, 24, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, (1 - 0.45) / 0.225, rtol=1e-5)
    slow, fast = pack_pathways(x, alpha=4)
    assert slow.shape == (3, 8, 24, 32) and fast is x and slow.flags.c_contiguous
    with pytest.raises(ValueError, match="RGB"):
        preprocess_clip(frames[..., :1], short_side=24, mean=(0,), std=(1,))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_clip(frames.astype(np.float32), short_side=16, mean=MEAN, std=STD)

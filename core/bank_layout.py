"""Slot-aligned bank windows: where each bank row goes in the head's (W, D) input.

Numpy only: training's bank reader and the service import the same function, so a window
is laid out identically offline and online (no train/serve skew in the layout).

A window covers ``seconds`` consecutive seconds starting ``origin_s`` seconds from the
keyframe (``origin_s = -30, seconds = 61`` is Wu et al.'s ``[t - 30, t + 30]``), each with
``persons`` slots::

    slot(row) = (time(row) - t - origin_s) * persons + rank(row)

``rank`` is the row's position among the rows of its second, in the order given; rows past
``persons`` in a second, or outside the covered seconds, are left out. Unfilled slots are
masked. The slot's time offset ``origin_s + slot // persons`` is what a time-aware LFB
(`models.lfb`, ``slot_offsets``) encodes with `TIME_ENCODING_PERIODS_S`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "TIME_ENCODING_DIM",
    "TIME_ENCODING_PERIODS_S",
    "layout_window",
    "slot_indices",
    "slot_offsets",
]

# sin and cos at each period (seconds): 4 s .. ~154 s in steps of x1.5, fine enough to place
# a 10 s boundary and coarse enough to cover a 60 s causal window without aliasing.
TIME_ENCODING_PERIODS_S: tuple[float, ...] = tuple(4.0 * 1.5**k for k in range(10))
TIME_ENCODING_DIM = 2 * len(TIME_ENCODING_PERIODS_S)


def slot_offsets(origin_s: int, seconds: int, persons: int) -> list[float]:
    """Each slot's time relative to the keyframe, in seconds (W = seconds * persons)."""
    if seconds < 1 or persons < 1:
        raise ValueError(f"a window needs seconds >= 1 and persons >= 1, got {seconds}, {persons}")
    return [float(origin_s + i // persons) for i in range(seconds * persons)]


def slot_indices(
    times: npt.ArrayLike, t: int, origin_s: int, seconds: int, persons: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """(slot per row, kept per row) for rows stamped ``times`` (integer seconds)."""
    tm = np.asarray(times, dtype=np.int64).reshape(-1)
    second = tm - (int(t) + int(origin_s))  # 0 .. seconds-1 inside the window
    order = np.argsort(second, kind="stable")
    sorted_s = second[order]
    first = np.searchsorted(sorted_s, sorted_s, side="left")
    rank = np.empty_like(tm)
    rank[order] = np.arange(tm.size) - first
    keep = (second >= 0) & (second < seconds) & (rank < persons)
    return np.where(keep, second * persons + rank, 0), keep


def layout_window(
    times: npt.ArrayLike,
    features: npt.ArrayLike,
    t: int,
    origin_s: int,
    seconds: int,
    persons: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(seconds * persons, D) float32 window and its (W,) mask from rows ``(times, features)``."""
    feats = np.asarray(features)
    slot, keep = slot_indices(times, t, origin_s, seconds, persons)
    out = np.zeros((seconds * persons, feats.shape[1]), np.float32)
    mask = np.zeros(seconds * persons, dtype=bool)
    out[slot[keep]] = feats[keep]
    mask[slot[keep]] = True
    return out, mask

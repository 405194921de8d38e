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

from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_WINDOW_SECONDS",
    "TIME_ENCODING_DIM",
    "TIME_ENCODING_PERIODS_S",
    "check_window_seconds",
    "file_window",
    "head_shares_window",
    "layout_window",
    "live_window",
    "slot_indices",
    "slot_offsets",
    "window_seconds_of_config",
    "window_seconds_of_half_width",
]

Window = tuple[int, int]

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


# -- the window in seconds ---------------------------------------------------------------------
#
# One quantity travels from training to the service: the window's length in seconds, inclusive
# of the keyframe's second (61 for Wu et al.'s [t - 30, t + 30]). Training's config states it
# (``bank_window_seconds``), training reads the centred `file_window` of it, export writes it
# and both windows into the manifest, and the service reads them as they are. Configs written
# before stated the half-width (``bank_window = 30``); `window_seconds_of_config` converts
# those, once, wherever a stored config is read.

DEFAULT_WINDOW_SECONDS = 61  # [t - 30, t + 30] (report A)


def window_seconds_of_half_width(half_width: int) -> int:
    """An old config's ``bank_window`` (seconds each side of t) -> the window's length in s."""
    if half_width < 0:
        raise ValueError(f"bank window half-width must be >= 0 s, got {half_width}")
    return 2 * int(half_width) + 1


def check_window_seconds(seconds: object, field: str = "bank_window_seconds") -> int:
    """``seconds`` as an int if it is odd and >= 1 (a window centred on the keyframe's second
    reads as many seconds before it as after it); otherwise a ValueError naming ``field``."""
    if isinstance(seconds, bool) or not isinstance(seconds, Integral) or seconds < 1:
        raise ValueError(f"{field} must be an integer number of seconds >= 1, got {seconds!r}")
    if seconds % 2 == 0:
        raise ValueError(
            f"{field} must be odd (the keyframe's second and as many each side: "
            f"{DEFAULT_WINDOW_SECONDS} = [t - 30, t + 30]), got {seconds}"
        )
    return int(seconds)


def window_seconds_of_config(config: Mapping[str, Any]) -> int:
    """The window length of a stored training config: ``bank_window_seconds``, or an old
    config's half-width ``bank_window`` converted; neither -> `DEFAULT_WINDOW_SECONDS`.
    Both, disagreeing -> ValueError."""
    seconds = config.get("bank_window_seconds")
    if seconds is not None:
        seconds = check_window_seconds(seconds)
    half = config.get("bank_window")
    if half is not None:
        if isinstance(half, bool) or not isinstance(half, Integral):
            raise ValueError(f"bank_window (half-width, s) must be an integer, got {half!r}")
        old = window_seconds_of_half_width(int(half))
        if seconds is not None and seconds != old:
            raise ValueError(
                f"bank_window_seconds {seconds} and the old bank_window {half} (half-width, "
                f"{old} s) disagree; give only bank_window_seconds"
            )
        seconds = old
    return DEFAULT_WINDOW_SECONDS if seconds is None else seconds


def file_window(window_seconds: int) -> Window:
    """(lo, hi) seconds around the keyframe the file pass reads: centred, as training reads."""
    if window_seconds < 1:
        raise ValueError(f"a bank window needs >= 1 s, got {window_seconds}")
    half = (window_seconds - 1) // 2
    return (-half, half)  # 61 -> [t-30, t+30]


def live_window(window_seconds: int) -> Window:
    """(lo, hi) seconds a live stream reads: causal, ending at the keyframe."""
    if window_seconds < 1:
        raise ValueError(f"a bank window needs >= 1 s, got {window_seconds}")
    return (-(window_seconds - 1), 0)  # 61 -> [t-60, t]


# W of the trial window when the head's W is dynamic (any size shows whether ops broadcast).
TRIAL_WINDOW = 7

HeadRun = Callable[[Mapping[str, npt.NDArray[np.generic]]], Mapping[str, npt.NDArray[np.generic]]]


def head_shares_window(
    run: HeadRun,
    inputs: Mapping[str, tuple[int | str, ...]],
    bank_dim: int,
    mask_dtype: npt.DTypeLike,
    window: int | None = None,
) -> bool:
    """Can the head take one keyframe's window once, ``bank (1, W, D)`` for K persons?

    Every person of a keyframe reads the same window, yet the head's inputs are per person
    (K, W, D): K copies, and K times the bank projections (the bulk of the head's work).
    A head whose ops broadcast over the batch axis (the project's LFB head does) gives the
    same output for a single copy. ``run`` (the head graph, named inputs -> outputs) is tried
    once on random inputs against the K-copy feed; any error or difference beyond float
    reassociation -> per-person copies. ``inputs``: the head's input shapes by name.
    ``window``: W to try when the graph's W is dynamic (export passes its shape range's, which a
    time-aware head needs: it reads exactly its slots); None = `TRIAL_WINDOW`.

    Export calls this on the head it just wrote and records the answer in the manifest
    (``bank.shared_window``); the service only calls it for bundles written before that.
    """
    if "bank" not in inputs or "mask" not in inputs:
        return False
    rng = np.random.default_rng(0)
    # person and (when the head has a global branch) global_per_person: (K, D) each.
    dims = {n: inputs[n][-1] for n in ("person", "global_per_person") if n in inputs}
    if "person" not in dims or not all(isinstance(v, int) for v in dims.values()):
        return False
    # A time-aware head reads a fixed number of slots (static in the graph, or its range's).
    w_dim = inputs["bank"][1]
    w = w_dim if isinstance(w_dim, int) else (window or TRIAL_WINDOW)
    k = 3
    base = {n: rng.standard_normal((k, int(v))).astype(np.float32) for n, v in dims.items()}
    bank = rng.standard_normal((1, w, bank_dim)).astype(np.float32)
    mask = (np.arange(w) % 3 != 2)[None].astype(mask_dtype)  # some slots masked
    try:
        full = run({**base, "bank": np.repeat(bank, k, 0), "mask": np.repeat(mask, k, 0)})["action"]
        shared = run({**base, "bank": bank, "mask": mask})["action"]
    except Exception:  # noqa: BLE001 - a graph that cannot broadcast: the K-copy feed
        return False
    return bool(shared.shape == full.shape and np.allclose(shared, full, rtol=1e-4, atol=1e-5))

"""Figures written by the training tools (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["plot_cooccurrence"]


def plot_cooccurrence(
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    class_names: Sequence[str],
    path: str | PathLike[str],
    *,
    title: str = "Label co-occurrence (diagonal = instances per class)",
    only_present: bool = True,
    dpi: int = 110,
) -> Path:
    """Write the two (C, C) co-occurrence matrices side by side as a PNG heat map.

    Both panels share one logarithmic colour scale (`LogNorm`, from 1 to the largest
    count), so the same colour means the same count before and after balancing. A log
    scale cannot show 0: zero cells are masked and drawn in light grey, and the legend
    says so. With ``only_present``, classes with no instance in either matrix are left
    out, which keeps the names readable on a small label set.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    c = len(class_names)
    if b.shape != (c, c) or a.shape != (c, c):
        raise ValueError(
            f"plot_cooccurrence: matrices {b.shape} and {a.shape} must both be ({c}, {c}) "
            f"for {c} class names"
        )
    keep = np.arange(c)
    if only_present:
        keep = np.flatnonzero((np.diag(b) > 0) | (np.diag(a) > 0))
        if keep.size == 0:
            keep = np.arange(c)
    b, a = b[np.ix_(keep, keep)], a[np.ix_(keep, keep)]
    names = [_short(class_names[int(i)]) for i in keep]
    vmax = max(float(b.max(initial=0)), float(a.max(initial=0)), 1.0)
    norm = LogNorm(vmin=1.0, vmax=max(vmax, 10.0))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e8e8e8")  # grey: masked zeros

    k = len(names)
    side = min(max(4.0, 0.16 * k + 2.0), 12.0)  # inches per panel; names need room
    fontsize = max(4.0, min(9.0, 260.0 / max(k, 1)))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side + 1.0), constrained_layout=True)
    image = None
    for ax, mat, label in ((axes[0], b, "before"), (axes[1], a, "after CP-IA + LS")):
        masked = np.ma.masked_less_equal(mat, 0.0)
        image = ax.imshow(masked, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(f"{label}  (diag max/min = {_ratio(np.diag(mat))})", fontsize=10)
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=90, fontsize=fontsize)
        ax.set_yticklabels(names, fontsize=fontsize)
        ax.tick_params(length=0)
    assert image is not None
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8, pad=0.01)
    bar.set_label("count (log scale; grey = 0)")
    fig.suptitle(title, fontsize=11)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _short(name: str, limit: int = 30) -> str:
    # AVA names carry long examples ("talk to (e.g., self, a person, a group)").
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "\u2026"


def _ratio(diag: npt.NDArray[np.float64]) -> str:
    pos = diag[diag > 0]
    if pos.size == 0:
        return "n/a"
    return f"{pos.max() / pos.min():.1f}"

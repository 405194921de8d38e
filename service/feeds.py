"""What the engine hands each graph: batch items and the numpy feeds built from them.

The batchers (`service.batching`) cut batches of items from every stream's requests; the
functions here turn one batch into the inputs of the ONNX graphs and nothing else (no runtime,
no event loop), so benchmarks can rebuild exactly the feeds the engine runs.

* detector: `DetItem` holds one keyframe's letterboxed (1, 3, H, W) input
  (`service.detector.PersonDetector.prepare`); the detector stacks a batch itself.
* backbone: clips of the same spatial size share one feed ``slow (B, 3, T_s, H', W')``,
  ``fast (B, 3, T_f, H', W')`` and every clip's boxes in one (K, 5) tensor
  ``(batch index, x1, y1, x2, y2)`` in clip pixels (`backbone_feeds`).
* head: the persons of several keyframes, K rows, each with its keyframe's bank window
  (`head_feeds`): once per keyframe for a head that broadcasts one window over its persons,
  else per-person copies in one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.ringbuffer import Clip

__all__ = [
    "BackboneItem",
    "DetItem",
    "Features",
    "HeadItem",
    "backbone_feeds",
    "backbone_item",
    "head_feed",
    "head_feeds",
    "head_item",
    "split_rows",
]


@dataclass(frozen=True)
class DetItem:
    images: np.ndarray  # (1, 3, H, W) detector input
    transform: Any  # LetterboxTransform
    segment: int = 0  # the stream's segment (`StreamSession.segment`): a new one resets tracks


@dataclass(frozen=True)
class BackboneItem:
    slow: np.ndarray  # (3, T_s, H', W')
    fast: np.ndarray  # (3, T_f, H', W')
    boxes: np.ndarray  # (N, 4) xyxy in clip pixels


@dataclass(frozen=True)
class Features:
    person: np.ndarray  # (N, D)
    global_: np.ndarray  # (D,)
    bank: np.ndarray  # (N, D') features that go into the bank


@dataclass(frozen=True)
class HeadItem:
    person: np.ndarray  # (N, D)
    global_per_person: np.ndarray  # (N, D)
    bank: np.ndarray  # (W, D') padded window (shared by the keyframe's persons)
    mask: np.ndarray  # (W,) bool


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def split_rows(rows: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """``rows`` (K, ...) cut into consecutive pieces of ``counts`` rows (sum = K)."""
    return list(np.split(rows, np.cumsum(counts)[:-1]))


# -- backbone --------------------------------------------------------------------------------


def backbone_item(clip: Clip, boxes: np.ndarray, frame_hw: tuple[int, int]) -> BackboneItem:
    """One keyframe's clip with its persons' ``boxes`` (frame pixels) moved to clip pixels
    (frame pixels -> normalised -> clip pixels, training's boxes_to_pixels on the clip)."""
    h, w = frame_hw
    ch, cw = clip.size_hw
    scale = np.array([cw / w, ch / h, cw / w, ch / h], np.float32)
    return BackboneItem(clip.slow, clip.fast, (boxes * scale).astype(np.float32))


def backbone_feeds(items: list[BackboneItem]) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """One backbone feed per clip size in ``items`` (clips of different sizes cannot share a
    tensor), with the positions of the items it holds."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.fast.shape, []).append(i)
    feeds = []
    for idxs in groups.values():
        rows = [
            np.concatenate(
                [np.full((len(items[i].boxes), 1), b, np.float32), items[i].boxes], axis=1
            )
            for b, i in enumerate(idxs)
        ]
        # A batch of one is a view (no copy of the clip); larger batches must be stacked.
        feed = {
            "slow": _stack([items[i].slow for i in idxs]),  # (B, 3, T_s, H', W')
            "fast": _stack([items[i].fast for i in idxs]),  # (B, 3, T_f, H', W')
            # (K, 5) batch index, x1, y1, x2, y2 (clip pixels)
            "boxes": np.concatenate(rows).astype(np.float32, copy=False),
        }
        feeds.append((idxs, feed))
    return feeds


# -- head ------------------------------------------------------------------------------------


def head_item(features: Features, bank: np.ndarray, mask: np.ndarray) -> HeadItem:
    """One keyframe's head input: its persons, the clip's global feature repeated per person
    (a broadcast view, no copy) and its bank window."""
    n = features.person.shape[0]
    return HeadItem(
        features.person,
        np.broadcast_to(features.global_, (n, features.global_.shape[0])),
        bank,
        mask,
    )


def head_feeds(
    items: list[HeadItem], *, shares_window: bool, with_bank: bool, mask_dtype: Any
) -> list[dict[str, np.ndarray]]:
    """The head runs for ``items``, in order.

    With a window-sharing head (``shares_window``) one run per keyframe, its window passed
    once; otherwise one run for all their persons with per-person copies (`head_feed`).
    """
    if shares_window:
        return [
            {
                "person": it.person.astype(np.float32, copy=False),
                "global_per_person": it.global_per_person.astype(np.float32, copy=False),
                "bank": it.bank[None].astype(np.float32, copy=False),
                "mask": it.mask[None].astype(mask_dtype, copy=False),
            }
            for it in items
        ]
    return [head_feed(items, with_bank=with_bank, mask_dtype=mask_dtype)]


def head_feed(items: list[HeadItem], *, with_bank: bool, mask_dtype: Any) -> dict[str, np.ndarray]:
    """The head's feed for ``items``: K = all their persons, each with its window (when the
    head takes a ``bank`` input)."""
    counts = [it.person.shape[0] for it in items]
    feed: dict[str, np.ndarray] = {
        "person": np.concatenate([it.person for it in items]).astype(np.float32, copy=False),
        "global_per_person": np.concatenate([it.global_per_person for it in items]).astype(
            np.float32, copy=False
        ),
    }
    if with_bank:
        # (K, W, D'): each person sees its keyframe's window.
        feed["bank"] = np.concatenate(
            [
                np.broadcast_to(it.bank, (n, *it.bank.shape))
                for it, n in zip(items, counts, strict=True)
            ]
        ).astype(np.float32, copy=False)
        feed["mask"] = np.concatenate(
            [
                np.broadcast_to(it.mask, (n, *it.mask.shape))
                for it, n in zip(items, counts, strict=True)
            ]
        ).astype(mask_dtype, copy=False)
    return feed

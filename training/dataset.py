"""Keyframe datasets for training and evaluation of the action model.

One item is one keyframe: the clip around it, every annotated (or proposed) person box
and, for training, the multi-hot targets::

    FrameCache (uint8 frames at the cache short side)
      -> clip (T, H, W, 3) by core.sampling      boxes (K, 4) normalised -> pixels
      -> [train] scale jitter, flip, box jitter, colour jitter (training.augment)
      -> normalise (3, T, H, W) -> pack_pathways: slow (3, T_s, H, W), fast (3, T_f, H, W)

`collate` stacks items into a `Batch` with boxes (K, 5) = (batch_index, x1, y1, x2, y2)
in input pixels -- the model's box format (docs/internals.md).

Balancing (report B) happens once per epoch on the *label list*, not on pixels:
`balanced_entries` runs CP-IA (duplicates of rare boxes, each with its jitter) and then
LS (frequent labels dropped), and the dataset serves those entries.

`BankFeatureDataset` is stage 2 with a frozen backbone: the person and clip features of
every training keyframe are already in the stage-1 bank, so no pixels are needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.ava import LabelMap
from core.ava_data import DatasetInfo, KeyframeAnnotation
from core.bank_layout import DEFAULT_WINDOW_SECONDS, check_window_seconds
from core.clips import ClipSpec, boxes_to_pixels, pack_pathways, preprocess_clip
from core.preset_info import PresetInfo
from training import augment
from training.bank_extract import ExtractedBank
from training.frame_cache import FrameCache

__all__ = [
    "ActionDataset",
    "Augmentation",
    "BankFeatureDataset",
    "Batch",
    "Entry",
    "Sample",
    "balanced_entries",
    "collate",
    "plain_entries",
]


@dataclass(frozen=True)
class Entry:
    """One training/eval item: a keyframe, which of its boxes, their labels and jitter.

    ``box_index``: indices into the keyframe's boxes; ``targets``: (K, C) multi-hot for
    those boxes (after LS); ``jitter``: (K, 4) CP-IA box offsets as fractions of the box
    size (zeros for original boxes).
    """

    keyframe: int
    box_index: tuple[int, ...]
    targets: npt.NDArray[np.float32]
    jitter: npt.NDArray[np.float32]


def plain_entries(keyframes: Sequence[KeyframeAnnotation], labels: LabelMap) -> list[Entry]:
    """One entry per keyframe with all its boxes and labels (no balancing)."""
    out = []
    for i, kf in enumerate(keyframes):
        if len(kf) == 0:
            continue
        out.append(
            Entry(
                i,
                tuple(range(len(kf))),
                kf.label_matrix(labels),
                np.zeros((len(kf), 4), np.float32),
            )
        )
    return out


def balanced_entries(
    keyframes: Sequence[KeyframeAnnotation],
    labels: LabelMap,
    *,
    frequent_share: float,
    seed: int,
) -> list[Entry]:
    """CP-IA then LS on the boxes of ``keyframes`` (training.balancing.balance).

    Original keyframes keep all their boxes with LS-thinned labels; every CP-IA copy of a
    box becomes an extra one-box entry of its keyframe, carrying all of the box's
    (co-occurring) labels and its own jitter. A new ``seed`` per epoch redraws LS.
    """
    from training.balancing import balance

    owners: list[tuple[int, int]] = []  # (keyframe, box) of each instance row
    mats: list[npt.NDArray[np.float32]] = []
    for i, kf in enumerate(keyframes):
        mats.append(kf.label_matrix(labels))
        owners.extend((i, b) for b in range(len(kf)))
    y = np.concatenate(mats) > 0.5  # (N, C)
    boxes = np.concatenate([kf.boxes for kf in keyframes]).reshape(-1, 4)
    result = balance(y, boxes, frequent_threshold=frequent_share, seed=seed)
    n = len(owners)
    kept = result.labels.astype(np.float32)  # (N + D, C)
    out: list[Entry] = []
    row = 0
    for i, kf in enumerate(keyframes):
        k = len(kf)
        if k:
            out.append(Entry(i, tuple(range(k)), kept[row : row + k], np.zeros((k, 4), np.float32)))
        row += k
    for copy, src in enumerate(result.source[n:].tolist()):
        kf_index, box = owners[src]
        jitter = result.plan.jitter[copy : copy + 1].astype(np.float32)
        out.append(Entry(kf_index, (box,), kept[n + copy : n + copy + 1], jitter))
    return out


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation settings (all off = evaluation)."""

    flip: bool = False
    box_jitter: float = 0.0
    color_jitter: float = 0.0
    scale_jitter: tuple[int, int] | None = None
    force_flip: bool = False  # evaluation's flip test-time augmentation


@dataclass
class Sample:
    """One keyframe, ready for the model.

    slow (3, T_s, H, W), fast (3, T_f, H, W) float32; boxes (K, 4) input-pixel xyxy;
    norm_boxes (K, 4) the un-augmented normalised boxes (for results files); targets
    (K, C); bank (W, D_bank) and bank_mask (W,) the keyframe's long-term window or None.
    """

    slow: Tensor
    fast: Tensor
    boxes: Tensor
    norm_boxes: Tensor
    targets: Tensor
    video_id: str
    timestamp: int
    bank: Tensor | None = None
    bank_mask: Tensor | None = None


@dataclass
class Batch:
    """Collated samples. boxes (K, 5) = (batch_index, x1, y1, x2, y2) pixels; targets
    (K, C); scene_targets (B, C); bank (K, W, D_bank), bank_mask (K, W) or None."""

    slow: Tensor
    fast: Tensor
    boxes: Tensor
    norm_boxes: Tensor
    targets: Tensor
    scene_targets: Tensor
    keys: list[tuple[str, int]]
    bank: Tensor | None = None
    bank_mask: Tensor | None = None
    person_features: Tensor | None = None  # (K, D) BankFeatureDataset only
    global_features: Tensor | None = None  # (K, D) BankFeatureDataset only
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_index(self) -> Tensor:
        return self.boxes[:, 0].long()


class ActionDataset(Dataset[Sample]):
    """Keyframes of one split served from a `FrameCache`.

    Args:
        keyframes: ground truth (or proposals turned into boxes without labels).
        entries: which boxes/labels each item serves (`plain_entries`/`balanced_entries`).
        cache: decoded frames at the training (or test) short side.
        info: the dataset's fps / time_offset.
        preset: clip sampling and normalisation facts.
        augmentation: train-time augmentation; the default is none.
        bank: the long-term feature bank for stage 2, or None.
        bank_window_seconds / bank_persons: the window's length in seconds, centred on the
            keyframe (61 reads [t - 30, t + 30]), and persons per second.
        seed: base seed; item ``i`` of epoch ``e`` draws from ``(seed, e, i)``.
    """

    def __init__(
        self,
        keyframes: Sequence[KeyframeAnnotation],
        entries: Sequence[Entry],
        cache: FrameCache,
        info: DatasetInfo,
        preset: PresetInfo,
        *,
        augmentation: Augmentation = Augmentation(),
        bank: ExtractedBank | None = None,
        bank_window_seconds: int = DEFAULT_WINDOW_SECONDS,
        bank_persons: int = 5,
        seed: int = 0,
    ) -> None:
        self.keyframes = list(keyframes)
        self.entries = list(entries)
        self.cache = cache
        self.info = info
        self.preset = preset
        self.spec = ClipSpec.from_preset(preset)
        self.augmentation = augmentation
        self.bank = bank
        self.bank_window_seconds = check_window_seconds(bank_window_seconds)
        self.bank_persons = bank_persons
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        kf = self.keyframes[entry.keyframe]
        aug = self.augmentation
        rng = np.random.default_rng((self.seed, self.epoch, index))
        video = self.cache.get(kf.video_id)
        clip = video.clip(self.info.video_time(kf.timestamp), self.spec)  # (T, H, W, 3) uint8
        norm = kf.boxes[list(entry.box_index)].reshape(-1, 4)  # (K, 4) normalised
        height, width = clip.shape[1:3]
        boxes = boxes_to_pixels(norm, width, height)  # (K, 4) pixels
        if np.any(entry.jitter):
            boxes = augment.apply_box_jitter(boxes, entry.jitter, width=width, height=height)
        x: npt.NDArray[np.float32] | npt.NDArray[np.uint8] = clip
        if aug.scale_jitter is not None:
            x, boxes = augment.scale_jitter(x, boxes, rng, short_side_range=aug.scale_jitter)
        if aug.force_flip or (aug.flip and rng.random() < 0.5):
            x, boxes = augment.hflip(x, boxes)
        height, width = x.shape[1:3]
        if aug.box_jitter > 0:
            boxes = augment.jitter_boxes(
                boxes, rng, ratio=aug.box_jitter, width=width, height=height
            )
        if aug.color_jitter > 0:
            c = aug.color_jitter
            x = augment.color_jitter(x, rng, brightness=c, contrast=c, saturation=c)
        # No resize here (the clip is already at its size): normalise and lay out.
        chw = preprocess_clip(
            np.asarray(x), short_side=min(height, width), mean=self.preset.mean, std=self.preset.std
        )  # (3, T, H, W)
        slow, fast = pack_pathways(chw, self.preset.alpha)
        sample = Sample(
            slow=torch.from_numpy(slow),
            fast=torch.from_numpy(fast),
            boxes=torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            norm_boxes=torch.from_numpy(np.ascontiguousarray(norm, dtype=np.float32)),
            targets=torch.from_numpy(entry.targets),
            video_id=kf.video_id,
            timestamp=kf.timestamp,
        )
        if self.bank is not None:
            feats, mask = self.bank.window(
                kf.video_id, kf.timestamp, self.bank_window_seconds, self.bank_persons
            )
            sample.bank = torch.from_numpy(feats)
            sample.bank_mask = torch.from_numpy(mask)
        return sample


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples; boxes get their batch index; the keyframe's bank window is shared
    by all of its persons (each person attends to the same 61 s of context)."""
    from training.losses import scene_targets_from_persons

    counts = [s.boxes.shape[0] for s in samples]
    index = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts))  # (K,)
    boxes = torch.cat([index[:, None].float(), torch.cat([s.boxes for s in samples])], dim=1)
    targets = torch.cat([s.targets for s in samples])  # (K, C)
    bank = bank_mask = None
    if samples and samples[0].bank is not None:
        bank = torch.cat(
            [
                s.bank[None].expand(n, -1, -1)
                for s, n in zip(samples, counts, strict=True)
                if s.bank is not None
            ]
        )  # (K, W, D_bank)
        bank_mask = torch.cat(
            [
                s.bank_mask[None].expand(n, -1)
                for s, n in zip(samples, counts, strict=True)
                if s.bank_mask is not None
            ]
        )  # (K, W)
    return Batch(
        slow=torch.stack([s.slow for s in samples]),  # (B, 3, T_s, H, W)
        fast=torch.stack([s.fast for s in samples]),  # (B, 3, T_f, H, W)
        boxes=boxes,
        norm_boxes=torch.cat([s.norm_boxes for s in samples]),
        targets=targets,
        scene_targets=scene_targets_from_persons(targets, index, len(samples)),
        keys=[(s.video_id, s.timestamp) for s in samples],
        bank=bank,
        bank_mask=bank_mask,
    )


class BankFeatureDataset(Dataset[Batch]):
    """Stage 2 with a frozen backbone: features from the stage-1 bank, no pixels.

    Each item is one keyframe: its persons' bank features (K, D) (the bank was extracted
    with ground-truth boxes from the same split, so every GT person is in it), the clip
    feature, the long-term window and the targets. Items are already `Batch`-shaped; use
    `collate_feature_batches`.
    """

    def __init__(
        self,
        keyframes: Sequence[KeyframeAnnotation],
        entries: Sequence[Entry],
        bank: ExtractedBank,
        *,
        bank_window_seconds: int = DEFAULT_WINDOW_SECONDS,
        bank_persons: int = 5,
    ) -> None:
        self.keyframes = list(keyframes)
        self.bank = bank
        self.bank_window_seconds = check_window_seconds(bank_window_seconds)
        self.bank_persons = bank_persons
        self.items: list[tuple[Entry, npt.NDArray[np.int64]]] = []
        for entry in entries:
            kf = self.keyframes[entry.keyframe]
            rows = bank.match_rows(kf.video_id, kf.timestamp, kf.boxes[list(entry.box_index)])
            if rows is not None:
                self.items.append((entry, rows))

    def set_epoch(self, epoch: int) -> None:
        """Nothing is random per epoch here (kept for the training loop's interface)."""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Batch:
        entry, rows = self.items[index]
        kf = self.keyframes[entry.keyframe]
        person = torch.from_numpy(self.bank.person_features(kf.video_id, rows))  # (K, D)
        glob = torch.from_numpy(self.bank.global_feature(kf.video_id, kf.timestamp))  # (D,)
        feats, mask = self.bank.window(
            kf.video_id, kf.timestamp, self.bank_window_seconds, self.bank_persons
        )
        k = person.shape[0]
        targets = torch.from_numpy(entry.targets)
        return Batch(
            slow=torch.empty(0),
            fast=torch.empty(0),
            boxes=torch.cat(
                [torch.zeros(k, 1), torch.from_numpy(kf.boxes[list(entry.box_index)])], 1
            ),
            norm_boxes=torch.from_numpy(kf.boxes[list(entry.box_index)]),
            targets=targets,
            scene_targets=targets.amax(dim=0, keepdim=True).expand(k, -1),  # per person
            keys=[kf.key],
            bank=torch.from_numpy(feats)[None].expand(k, -1, -1),
            bank_mask=torch.from_numpy(mask)[None].expand(k, -1),
            person_features=person,
            global_features=glob[None].expand(k, -1),
        )


def collate_feature_batches(items: Sequence[Batch]) -> Batch:
    """Concatenate `BankFeatureDataset` items; batch indices renumbered 0..B-1."""
    counts = [b.targets.shape[0] for b in items]
    index = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts))
    boxes = torch.cat([b.boxes for b in items])
    boxes[:, 0] = index.float()

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(b, name) for b in items])

    return Batch(
        slow=torch.empty(0),
        fast=torch.empty(0),
        boxes=boxes,
        norm_boxes=cat("norm_boxes"),
        targets=cat("targets"),
        scene_targets=cat("scene_targets"),
        keys=[k for b in items for k in b.keys],
        bank=cat("bank"),
        bank_mask=cat("bank_mask"),
        person_features=cat("person_features"),
        global_features=cat("global_features"),
    )

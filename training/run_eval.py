"""Model evaluation runs: a checkpoint (or an ensemble) over a split, scored as AVA frame-mAP.

    boxes (gt | detector | proposals CSV) per keyframe
      -> for each model, scale, flip: clip at that short side -> probabilities (K, C)
      -> average (test-time augmentation and ensemble: score averaging, report B)
      -> results rows video,timestamp,box,action_id,score -> training.evaluation

Stage-2 models read the long-term window from a bank of the same split (extracted from
the stage-1 model with the same box source). The detector-threshold sweep runs the models
once on every box and re-scores the rows of boxes above each threshold (report B, Table 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from core.ava_data import DetectionRow, KeyframeProposals, read_annotations, write_results
from models.action_model import ActionModel
from training.config import TrainConfig
from training.evaluation import EvalResult, evaluate_frame_map

__all__ = [
    "ScoredBoxes",
    "evaluate_rows",
    "predict",
    "run_evaluation",
    "sweep_thresholds",
]

StrPath = str | PathLike[str]
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))


@dataclass(frozen=True)
class ScoredBoxes:
    """Predictions for one keyframe: boxes (K, 4) normalised, detector scores (K,),
    action probabilities (K, C) in ``class_ids`` order."""

    video_id: str
    timestamp: int
    boxes: npt.NDArray[np.float32]
    box_scores: npt.NDArray[np.float32]
    probs: npt.NDArray[np.float32]


def _bank_for(config: TrainConfig, split: str, bank_dir: StrPath | None) -> object | None:
    if config.stage != "stage2":
        return None
    from training.bank_extract import ExtractedBank, load_bank

    if bank_dir is not None:
        folder = Path(bank_dir)
        return (
            ExtractedBank(folder) if (folder / "meta.json").is_file() else load_bank(folder, split)
        )
    if config.bank_dir is None:
        raise ValueError("a stage-2 checkpoint needs a bank: pass --bank BANKDIR")
    return load_bank(config.bank_dir, split)


def predict(
    models: Sequence[tuple[ActionModel, TrainConfig]],
    data_dir: StrPath,
    split: str,
    proposals: Sequence[KeyframeProposals],
    *,
    scales: Sequence[int] | None = None,
    flip: bool = False,
    bank_dir: StrPath | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[ScoredBoxes]:
    """Average probabilities over models x scales x (flip) for every proposed box.

    ``scales`` None means each model's own short side. All models must share class ids.
    """
    from core.ava_data import read_dataset_info
    from core.clips import ClipSpec, boxes_to_pixels, pack_pathways, preprocess_clip
    from training.frame_cache import FrameCache

    info = read_dataset_info(data_dir)
    class_ids = models[0][0].class_ids
    if any(m.class_ids != class_ids for m, _ in models):
        raise ValueError("ensemble members must predict the same classes in the same order")
    props = [p for p in sorted(proposals, key=lambda p: p.key) if len(p.boxes)]
    sums = [np.zeros((len(p.boxes), len(class_ids)), np.float64) for p in props]
    views = 0
    caches: dict[int, FrameCache] = {}
    total = len(models) * len(scales or [0]) * (2 if flip else 1) * len(props)
    done = 0
    for model, config in models:
        model.eval()
        preset = model.preset_info
        assert preset is not None
        spec = ClipSpec.from_preset(preset)
        bank = _bank_for(config, split, bank_dir)
        for scale in scales or [preset.short_side]:
            cache = caches.setdefault(scale, FrameCache(data_dir, scale, fps=info.fps))
            for flipped in (False, True) if flip else (False,):
                views += 1
                for start in range(0, len(props), batch_size):
                    chunk = props[start : start + batch_size]
                    slows, fasts, rows, banks, masks = [], [], [], [], []
                    for b, p in enumerate(chunk):
                        clip = cache.get(p.video_id).clip(info.video_time(p.timestamp), spec)
                        chw = preprocess_clip(
                            clip, short_side=scale, mean=preset.mean, std=preset.std
                        )  # (3, T, H, W)
                        h, w = chw.shape[2:]
                        px = boxes_to_pixels(p.boxes, w, h)  # (K, 4)
                        if flipped:
                            chw = np.ascontiguousarray(chw[..., ::-1])
                            px = np.stack([w - px[:, 2], px[:, 1], w - px[:, 0], px[:, 3]], 1)
                        slow, fast = pack_pathways(chw, preset.alpha)
                        slows.append(torch.from_numpy(slow))
                        fasts.append(torch.from_numpy(fast))
                        rows.append(
                            torch.cat([torch.full((len(px), 1), float(b)), torch.from_numpy(px)], 1)
                        )
                        if bank is not None:
                            feats, mask = bank.window(  # type: ignore[attr-defined]
                                p.video_id,
                                p.timestamp,
                                config.bank_window_seconds,
                                config.bank_persons_per_second,
                            )
                            banks.append(torch.from_numpy(feats)[None].expand(len(px), -1, -1))
                            masks.append(torch.from_numpy(mask)[None].expand(len(px), -1))
                    with torch.no_grad():
                        out = model(
                            torch.stack(slows),
                            torch.stack(fasts),
                            torch.cat(rows),
                            torch.cat(banks) if banks else None,
                            torch.cat(masks) if masks else None,
                        )
                        probs = model.probabilities(out.action_logits).numpy()  # (K, C)
                    offset = 0
                    for i, p in enumerate(chunk):
                        k = len(p.boxes)
                        sums[start + i] += probs[offset : offset + k]
                        offset += k
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    return [
        ScoredBoxes(p.video_id, p.timestamp, p.boxes, p.scores, (s / views).astype(np.float32))
        for p, s in zip(props, sums, strict=True)
    ]


def to_rows(
    predictions: Sequence[ScoredBoxes], class_ids: Sequence[int], *, min_box_score: float = 0.0
) -> list[DetectionRow]:
    """Results rows (one per box and class) of boxes whose detector score >= threshold."""
    out: list[DetectionRow] = []
    for p in predictions:
        for k in np.flatnonzero(p.box_scores >= min_box_score).tolist():
            x1, y1, x2, y2 = (float(v) for v in p.boxes[k])
            for c, class_id in enumerate(class_ids):
                score = float(p.probs[k, c])
                out.append(
                    DetectionRow(p.video_id, p.timestamp, (x1, y1, x2, y2), int(class_id), score, 0)
                )
    return out


def evaluate_rows(rows: Sequence[DetectionRow], data_dir: StrPath, split: str) -> EvalResult:
    """Frame-mAP of results rows against the split's ground truth (excluded keyframes out)."""
    from core.ava import read_label_map_pbtxt
    from core.ava_data import read_excluded_timestamps

    data_dir = Path(data_dir)
    labels = read_label_map_pbtxt(data_dir / "annotations" / "label_map.pbtxt")
    # Every class: a keyframe whose rows are all outside the label map is still listed.
    gt = read_annotations(data_dir / "annotations" / f"{split}.csv")
    excluded_path = data_dir / "annotations" / f"excluded_{split}.csv"
    excluded = read_excluded_timestamps(excluded_path if excluded_path.is_file() else None)
    return evaluate_frame_map(gt, rows, labels, excluded)


def sweep_thresholds(
    predictions: Sequence[ScoredBoxes],
    class_ids: Sequence[int],
    data_dir: StrPath,
    split: str,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> list[tuple[float, EvalResult]]:
    """mAP when boxes below each detector-score threshold are dropped."""
    return [
        (t, evaluate_rows(to_rows(predictions, class_ids, min_box_score=t), data_dir, split))
        for t in thresholds
    ]


def run_evaluation(
    checkpoints: Sequence[StrPath],
    data_dir: StrPath,
    split: str,
    *,
    boxes: str = "gt",
    detector: StrPath | None = None,
    min_score: float = 0.0,
    scales: Sequence[int] | None = None,
    flip: bool = False,
    bank_dir: StrPath | None = None,
    results_csv: StrPath | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EvalResult, list[ScoredBoxes], tuple[int, ...]]:
    """Load checkpoints, get boxes, predict, write the results CSV, score it."""
    from training.boxes import resolve_boxes
    from training.train import load_split, load_trained_model

    data = load_split(Path(data_dir), split)
    models = [load_trained_model(Path(c))[:2] for c in checkpoints]
    proposals = resolve_boxes(
        boxes,
        keyframes=data.keyframes,
        data_dir=data_dir,
        info=data.info,
        detector=detector,
        min_score=min_score,
    )
    predictions = predict(
        models,
        data_dir,
        split,
        proposals,
        scales=scales,
        flip=flip,
        bank_dir=bank_dir,
        progress=progress,
    )
    class_ids = models[0][0].class_ids
    rows = to_rows(predictions, class_ids)
    if results_csv is not None:
        write_results(rows, results_csv)
    return evaluate_rows(rows, data_dir, split), predictions, class_ids


def long_term_ids(data_dir: StrPath) -> tuple[int, ...]:
    """The world's long-term-context classes (dataset.json ``long_term``), or ()."""
    from core.ava_data import read_dataset_info

    extra = read_dataset_info(data_dir).extra.get("long_term", [])
    return tuple(int(x["id"]) for x in extra if isinstance(x, dict) and "id" in x)

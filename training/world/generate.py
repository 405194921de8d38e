"""Write a whole synthetic AVA world to a directory (layout: docs/internals.md).

```
DIR/videos/<video_id>.mp4
DIR/annotations/{label_map.pbtxt, train.csv, val.csv, excluded_train.csv, excluded_val.csv}
DIR/dataset.json   DIR/CARD.md
DIR/classification/{train.csv, val.csv, classes.txt, clips/*.mp4}   (with classification)
```

Seeds: every video (and classification clip) has its own seed,
``base_seed * 100_000 + split_code * 10_000 + index`` with split codes 0 train, 1 val,
2 classification train, 3 classification val. Different splits therefore never share a
seed (for any base seed, as long as a split has fewer than 10,000 items), and a video
depends on nothing but its seed: not on the other videos, the worker count or the order
in which workers finish.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.ava import write_label_map_pbtxt
from training.world import classes as C
from training.world.render import encode_mp4, render_frames
from training.world.scenario import (
    FIRST_KEYFRAME,
    MIN_VISIBLE,
    Evidence,
    KeyframeLabel,
    Stage,
    WorldParams,
    annotate,
    make_classification_script,
    make_video_script,
)

SPLIT_CODES = {"train": 0, "val": 1, "cls_train": 2, "cls_val": 3}
MAX_PER_SPLIT = 10_000
GENERATOR_VERSION = 1


def item_seed(base_seed: int, split: str, index: int) -> int:
    """The seed of item ``index`` of ``split``; disjoint across splits by construction."""
    if not 0 <= index < MAX_PER_SPLIT:
        raise ValueError(f"index {index}: a split holds at most {MAX_PER_SPLIT} items")
    if base_seed < 0:
        raise ValueError(f"seed must be >= 0, got {base_seed}")
    return base_seed * 100_000 + SPLIT_CODES[split] * MAX_PER_SPLIT + index


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides a world's content (recorded in dataset.json)."""

    seed: int = 0
    train_videos: int = 8
    val_videos: int = 3
    seconds: int = 60
    min_persons: int = 2
    max_persons: int = 4
    fps: int = 15
    width: int = 320
    height: int = 240
    crf: int = 22
    classification: bool = False
    # 100 per class: with 40 a tiny 3D CNN memorised backgrounds (46% val error at 64x48);
    # with 100 it reached 0-0.6% on 160 val clips after 10-15 epochs (see the card).
    cls_train_per_class: int = 100
    cls_val_per_class: int = 20
    cls_seconds: int = 2

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2:
            raise ValueError(f"--size {self.width}x{self.height}: H.264 4:2:0 needs even sizes")
        if not 96 <= self.width <= 1920 or not 72 <= self.height <= 1080:
            raise ValueError(f"--size {self.width}x{self.height}: use 96x72 .. 1920x1080")
        if not 1 <= self.min_persons <= self.max_persons <= 12:
            raise ValueError(
                f"--persons {self.min_persons}-{self.max_persons}: need 1 <= MIN <= MAX <= 12"
            )
        if self.seconds < 2 * FIRST_KEYFRAME + 1:
            raise ValueError(f"--seconds {self.seconds}: need at least {2 * FIRST_KEYFRAME + 1}")
        if not 5 <= self.fps <= 60:
            raise ValueError(f"--fps {self.fps}: use 5..60")
        if self.train_videos < 0 or self.val_videos < 0:
            raise ValueError("video counts must be >= 0")

    @property
    def stage(self) -> Stage:
        return Stage(self.width, self.height, self.fps)


@dataclass
class VideoResult:
    video_id: str
    split: str
    seed: int
    seconds: int
    frames: int
    persons: int
    labels: list[KeyframeLabel] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)


# -- work units (run in worker processes; module-level so they pickle) -----------------------


def _make_video(
    out: Path, video_id: str, split: str, seed: int, config: WorldConfig
) -> VideoResult:
    params = WorldParams(config.seconds, config.min_persons, config.max_persons)
    script = make_video_script(video_id, seed, config.stage, params)
    frames = encode_mp4(
        out / "videos" / f"{video_id}.mp4",
        render_frames(script),
        fps=config.fps,
        width=config.width,
        height=config.height,
        crf=config.crf,
    )
    return VideoResult(
        video_id,
        split,
        seed,
        config.seconds,
        frames,
        len(script.persons),
        annotate(script),
        list(script.evidence),
    )


def _make_clips(
    out: Path, jobs: Sequence[tuple[str, int, int]], config: WorldConfig
) -> list[tuple[str, int, int]]:
    """Classification clips ``(clip_id, seed, class_id)``; returns them with frame counts."""
    done: list[tuple[str, int, int]] = []
    for clip_id, seed, class_id in jobs:
        script = make_classification_script(
            clip_id, seed, config.stage, class_id, config.cls_seconds
        )
        frames = encode_mp4(
            out / "classification" / "clips" / f"{clip_id}.mp4",
            render_frames(script),
            fps=config.fps,
            width=config.width,
            height=config.height,
            crf=config.crf,
        )
        done.append((clip_id, class_id, frames))
    return done


# -- writing --------------------------------------------------------------------------------


def annotation_rows(labels: Sequence[KeyframeLabel]) -> list[str]:
    """AVA CSV lines (no header), one per (person, action), in a fixed order."""
    rows: list[str] = []
    for k in sorted(labels, key=lambda k: (k.video_id, k.timestamp, k.person_id)):
        x1, y1, x2, y2 = k.box
        for action in sorted(k.labels):
            rows.append(
                f"{k.video_id},{k.timestamp:04d},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},"
                f"{action},{k.person_id}"
            )
    return rows


def class_counts(labels: Sequence[KeyframeLabel]) -> dict[int, int]:
    counts = Counter(a for k in labels for a in k.labels)
    return {c.id: counts.get(c.id, 0) for c in C.WORLD_CLASSES}


def imbalance_ratio(counts: dict[int, int]) -> float:
    """min(common counts) / max(rare counts): the issue asks for >= 10."""
    rare = max(counts[i] for i in C.RARE_IDS)
    common = min(counts[i] for i in C.COMMON_IDS)
    return float("inf") if rare == 0 else common / rare


ProgressFn = Callable[[str], None]


def generate_world(
    out: Path,
    config: WorldConfig,
    *,
    workers: int | None = None,
    progress: Callable[[int], ProgressFn] | None = None,
) -> dict[str, Any]:
    """Generate the world into ``out`` (created; must be empty) and return dataset.json.

    ``progress(total)`` may return a callback that is called once per finished item.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    video_jobs = [
        (f"{split}_{i:03d}", split, item_seed(config.seed, split, i))
        for split, n in (("train", config.train_videos), ("val", config.val_videos))
        for i in range(n)
    ]
    clip_jobs: dict[str, list[tuple[str, int, int]]] = {"cls_train": [], "cls_val": []}
    if config.classification:
        (out / "classification" / "clips").mkdir(parents=True, exist_ok=True)
        for split, per_class in (
            ("cls_train", config.cls_train_per_class),
            ("cls_val", config.cls_val_per_class),
        ):
            n = per_class * len(C.CLASSIFICATION_IDS)
            for i in range(n):
                # Classes interleave, so any prefix of a split is balanced.
                class_id = C.CLASSIFICATION_IDS[i % len(C.CLASSIFICATION_IDS)]
                name = split.removeprefix("cls_")
                clip_jobs[split].append(
                    (f"{name}_{i:04d}", item_seed(config.seed, split, i), class_id)
                )
    # Clips go to workers 16 at a time: one process round trip per clip would dominate.
    chunks = [
        jobs[i : i + 16]
        for jobs in (clip_jobs["cls_train"], clip_jobs["cls_val"])
        for i in range(0, len(jobs), 16)
    ]
    total = len(video_jobs) + sum(len(c) for c in chunks)
    tick = progress(total) if progress is not None else None
    n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)

    videos: dict[str, VideoResult] = {}
    clips: dict[str, tuple[int, int]] = {}
    if n_workers <= 1:
        for vid, split, seed in video_jobs:
            videos[vid] = _make_video(out, vid, split, seed, config)
            if tick:
                tick(vid)
        for chunk in chunks:
            for clip_id, class_id, frames in _make_clips(out, chunk, config):
                clips[clip_id] = (class_id, frames)
                if tick:
                    tick(clip_id)
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            vfuts = {
                pool.submit(_make_video, out, vid, split, seed, config): vid
                for vid, split, seed in video_jobs
            }
            cfuts = [pool.submit(_make_clips, out, chunk, config) for chunk in chunks]
            for fut, vid in vfuts.items():
                videos[vid] = fut.result()
                if tick:
                    tick(vid)
            for cfut in cfuts:
                for clip_id, class_id, frames in cfut.result():
                    clips[clip_id] = (class_id, frames)
                    if tick:
                        tick(clip_id)

    info = _write_annotations(out, config, [videos[v] for v, _, _ in video_jobs])
    if config.classification:
        info["classification"] = _write_classification(out, config, clip_jobs, clips)
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    from training.world.card import write_card

    write_card(out / "CARD.md", info)
    return info


def _write_annotations(
    out: Path, config: WorldConfig, results: Sequence[VideoResult]
) -> dict[str, Any]:
    ann = out / "annotations"
    write_label_map_pbtxt(C.world_label_map(), ann / "label_map.pbtxt")
    counts: dict[str, dict[int, int]] = {}
    for split in ("train", "val"):
        labels = [k for r in results if r.split == split for k in r.labels]
        rows = annotation_rows(labels)
        (ann / f"{split}.csv").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        # The world never excludes a keyframe; the files exist so AVA tooling finds them.
        (ann / f"excluded_{split}.csv").write_text("", encoding="utf-8")
        counts[split] = class_counts(labels)
    person_boxes = {
        split: sum(len(r.labels) for r in results if r.split == split) for split in counts
    }
    return {
        "name": "avaserve synthetic AVA world",
        "generator_version": GENERATOR_VERSION,
        "fps": config.fps,
        "size": [config.width, config.height],
        "time_offset": 0,
        "seed": config.seed,
        "config": asdict(config),
        "classes": [
            {
                "id": c.id,
                "name": c.name,
                "kind": c.kind,
                "count_train": counts["train"][c.id],
                "count_val": counts["val"][c.id],
            }
            for c in C.WORLD_CLASSES
        ],
        "pose_ids": [c.id for c in C.WORLD_CLASSES if c.kind == "pose"],
        "keyframes": {
            "first": FIRST_KEYFRAME,
            "last": f"seconds - {FIRST_KEYFRAME}",
            "min_visible": MIN_VISIBLE,
            "annotated_person_keyframes": person_boxes,
        },
        "imbalance": {
            "common_ids": list(C.COMMON_IDS),
            "rare_ids": list(C.RARE_IDS),
            "ratio_train": _finite(imbalance_ratio(counts["train"])),
            "ratio_val": _finite(imbalance_ratio(counts["val"])),
            "min_ratio": C.IMBALANCE_MIN_RATIO,
        },
        "long_term": [
            {
                "id": state_id,
                "name": C.CLASS_BY_ID[state_id].name,
                "evidence_id": event_id,
                "evidence_name": C.CLASS_BY_ID[event_id].name,
                "min_gap_s": C.LONG_TERM_MIN_GAP,
                "max_gap_s": C.LONG_TERM_MAX_GAP,
                "rule": (
                    f"on at keyframe t for person p iff p's evidence time e (the moment the "
                    f"prop of its '{C.CLASS_BY_ID[event_id].name}' event vanishes) has "
                    f"{C.LONG_TERM_MIN_GAP:g} <= t - e <= {C.LONG_TERM_MAX_GAP:g}"
                ),
            }
            for state_id, (event_id, _) in sorted(C.LONG_TERM.items())
        ],
        "evidence_events": [
            {"video_id": r.video_id, **asdict(ev)} for r in results for ev in r.evidence
        ],
        "videos": [
            {
                "video_id": r.video_id,
                "split": r.split,
                "seed": r.seed,
                "seconds": r.seconds,
                "frames": r.frames,
                "persons": r.persons,
            }
            for r in results
        ],
    }


def _finite(x: float) -> float | None:
    return None if x == float("inf") else round(x, 2)


def _write_classification(
    out: Path,
    config: WorldConfig,
    jobs: dict[str, list[tuple[str, int, int]]],
    clips: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    root = out / "classification"
    names = [C.CLASS_BY_ID[i].name for i in C.CLASSIFICATION_IDS]
    (root / "classes.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    seeds: dict[str, list[int]] = {}
    for split in ("cls_train", "cls_val"):
        name = split.removeprefix("cls_")
        with (root / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            for clip_id, _, class_id in jobs[split]:
                writer.writerow([f"clips/{clip_id}.mp4", C.CLASS_BY_ID[class_id].name])
        seeds[name] = [seed for _, seed, _ in jobs[split]]
    frames = sorted({f for _, f in clips.values()})
    return {
        "csv": "classification/{train,val}.csv: path,label (no header); path relative to "
        "the csv, label = the AVA class name (classes.txt lists them in index order)",
        "classes": [
            {"index": k, "id": i, "name": n}
            for k, (i, n) in enumerate(zip(C.CLASSIFICATION_IDS, names, strict=True))
        ],
        "clip_seconds": config.cls_seconds,
        "clip_frames": frames,
        "train_clips": len(jobs["cls_train"]),
        "val_clips": len(jobs["cls_val"]),
        "seeds": seeds,
    }

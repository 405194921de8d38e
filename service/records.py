"""Results: one `Prediction` per person per keyframe, and its writers/readers.

Formats:

* **JSON Lines** (``--out``): one object per prediction, self-describing::

      {"video": "clip", "time": 3.0, "track_id": 7, "box": [x1, y1, x2, y2] (frame pixels),
       "box_norm": [x1, y1, x2, y2] ([0, 1]), "score": 0.93 (detector), "context": "ok",
       "actions": [{"id": 12, "name": "stand", "score": 0.81}, ...] (top-k, descending),
       "scores": {"1": 0.01, ..., "80": 0.02} (every class the model predicts)}

* **AVA CSV** (``--csv``), the official results format ``avaserve eval`` and the ActivityNet
  evaluator read: ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` with normalised boxes, a
  4-digit whole-second timestamp, and per box either the top-k actions or every action at or
  above a score floor.

``context`` says what long-term context the head saw: ``ok`` (the bank window as designed),
``degraded`` (the shared bank was unreachable; only what this process had in hand) or
``none`` (the bundle has no bank).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import IO, Literal

import numpy as np

from core.ava import LabelMap
from core.defaults import TOP_K

__all__ = [
    "Context",
    "Prediction",
    "read_ava_csv",
    "read_jsonl",
    "write_ava_csv",
    "write_jsonl",
    "JsonlWriter",
    "AvaCsvWriter",
]

StrPath = str | PathLike[str]
Context = Literal["ok", "degraded", "none"]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Prediction:
    """One person at one keyframe.

    box: xyxy in pixels of the displayed frame; box_norm: the same box in [0, 1].
    probs: (C,) float32 action probabilities, column k is ``labels.ids[k]``, as the bundle's
    head computes them (the manifest's ``model.output_activation``: pose softmax + sigmoids,
    or a sigmoid per class for imported upstream heads).
    """

    video: str
    time: float
    track_id: int
    box: Box
    box_norm: Box
    score: float
    probs: np.ndarray
    labels: LabelMap
    context: Context = "ok"

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float32).reshape(-1)
        if probs.shape[0] != len(self.labels.ids):
            raise ValueError(
                f"Prediction: {probs.shape[0]} probabilities but {len(self.labels.ids)} labels"
            )
        object.__setattr__(self, "probs", probs)
        if self.context not in ("ok", "degraded", "none"):
            raise ValueError(f"Prediction.context must be ok|degraded|none, got {self.context!r}")

    def top(self, k: int = 3) -> list[tuple[int, str, float]]:
        """The k most probable actions: (id, name, probability), descending."""
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [
            (int(self.labels.ids[i]), self.labels.names[i], float(self.probs[i])) for i in order
        ]

    def to_json(self, *, top_k: int = TOP_K) -> dict[str, object]:
        return {
            "video": self.video,
            "time": round(float(self.time), 6),
            "track_id": int(self.track_id),
            "box": [round(float(v), 2) for v in self.box],
            "box_norm": [round(float(v), 6) for v in self.box_norm],
            "score": round(float(self.score), 6),
            "context": self.context,
            "actions": [{"id": i, "name": n, "score": round(p, 6)} for i, n, p in self.top(top_k)],
            "scores": {
                str(int(i)): round(float(p), 6)
                for i, p in zip(self.labels.ids, self.probs, strict=True)
            },
        }

    @classmethod
    def from_json(cls, obj: dict[str, object], labels: LabelMap | None = None) -> Prediction:
        scores = obj["scores"]
        assert isinstance(scores, dict)
        ids = tuple(int(k) for k in scores)
        if labels is None:
            names = {int(a["id"]): str(a["name"]) for a in obj.get("actions", [])}  # type: ignore[attr-defined]
            labels = LabelMap(ids=ids, names=tuple(names.get(i, str(i)) for i in ids))
        probs = np.asarray([float(scores[str(i)]) for i in labels.ids], np.float32)
        box = tuple(float(v) for v in obj["box"])  # type: ignore[attr-defined]
        box_norm = tuple(float(v) for v in obj["box_norm"])  # type: ignore[attr-defined]
        return cls(
            video=str(obj["video"]),
            time=float(obj["time"]),  # type: ignore[arg-type]
            track_id=int(obj["track_id"]),  # type: ignore[call-overload]
            box=box,  # type: ignore[arg-type]
            box_norm=box_norm,  # type: ignore[arg-type]
            score=float(obj["score"]),  # type: ignore[arg-type]
            probs=probs,
            labels=labels,
            context=obj["context"],  # type: ignore[arg-type]
        )


# -- JSON Lines ------------------------------------------------------------------------------


class JsonlWriter:
    """Appends predictions to a JSON Lines file as they arrive (flushes per keyframe batch)."""

    def __init__(self, path: StrPath, *, top_k: int = TOP_K) -> None:
        self.path = Path(path)
        self.top_k = top_k
        self._fh: IO[str] = self.path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, predictions: Iterable[Prediction]) -> None:
        for p in predictions:
            self._fh.write(json.dumps(p.to_json(top_k=self.top_k), separators=(",", ":")) + "\n")
            self.count += 1
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def write_jsonl(predictions: Iterable[Prediction], path: StrPath, *, top_k: int = TOP_K) -> int:
    w = JsonlWriter(path, top_k=top_k)
    try:
        w.write(predictions)
    finally:
        w.close()
    return w.count


def read_jsonl(path: StrPath, labels: LabelMap | None = None) -> list[Prediction]:
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(Prediction.from_json(json.loads(line), labels))
            except (KeyError, ValueError, TypeError, AssertionError) as e:
                raise ValueError(f"{path}:{n}: not a prediction record ({e})") from None
    return out


# -- AVA CSV ---------------------------------------------------------------------------------


class AvaCsvWriter:
    """Official AVA results rows, written as predictions arrive.

    top_k: actions per box (the ActivityNet challenge's convention); ignored when
        ``min_score`` is given. More rows cost file size but never lower frame-mAP.
    min_score: instead of top-k, every action with probability >= min_score.
    time_offset: added to the keyframe time (AVA's 15-minute cuts start at 900 s).
    """

    def __init__(
        self,
        path: StrPath,
        *,
        top_k: int | None = None,
        min_score: float | None = None,
        time_offset: int = 0,
    ) -> None:
        self.path = Path(path)
        self.top_k = top_k
        self.min_score = min_score
        self.time_offset = int(time_offset)
        self._fh: IO[str] = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self.rows = 0

    def write(self, predictions: Iterable[Prediction]) -> None:
        for p in predictions:
            ts = int(round(p.time)) + self.time_offset
            x1, y1, x2, y2 = p.box_norm
            if self.min_score is not None:
                cols = np.flatnonzero(p.probs >= self.min_score)
                cols = cols[np.argsort(-p.probs[cols], kind="stable")]
            else:
                k = len(p.probs) if self.top_k is None else self.top_k
                cols = np.argsort(-p.probs, kind="stable")[:k]
            for c in cols:
                self._writer.writerow(
                    [
                        p.video,
                        f"{ts:04d}",
                        f"{x1:.3f}",
                        f"{y1:.3f}",
                        f"{x2:.3f}",
                        f"{y2:.3f}",
                        int(p.labels.ids[c]),
                        f"{float(p.probs[c]):.6f}",
                    ]
                )
                self.rows += 1
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def write_ava_csv(
    predictions: Iterable[Prediction],
    path: StrPath,
    *,
    top_k: int | None = None,
    min_score: float | None = None,
    time_offset: int = 0,
) -> int:
    w = AvaCsvWriter(path, top_k=top_k, min_score=min_score, time_offset=time_offset)
    try:
        w.write(predictions)
    finally:
        w.close()
    return w.rows


@dataclass(frozen=True)
class AvaRow:
    video: str
    timestamp: int
    box_norm: Box
    action_id: int
    score: float


def read_ava_csv(path: StrPath) -> list[AvaRow]:
    """Read an AVA results CSV (8 columns); errors name the line."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        for n, fields in enumerate(csv.reader(fh), 1):
            if not fields:
                continue
            if len(fields) != 8:
                raise ValueError(f"{path}:{n}: expected 8 columns, got {len(fields)}")
            try:
                box = tuple(float(v) for v in fields[2:6])
                rows.append(
                    AvaRow(fields[0], int(float(fields[1])), box, int(fields[6]), float(fields[7]))  # type: ignore[arg-type]
                )
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return rows

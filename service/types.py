"""Small typed records that cross service boundaries (detector -> tracker -> pipeline).

Box format everywhere in this module: ``(N, 4)`` float32 ``(x1, y1, x2, y2)`` in **pixels** of
the frame the detector saw. Records are validated once, in ``__post_init__``, so the stages
after the boundary can trust shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def _as_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4) xyxy pixels, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: boxes contain NaN or inf; drop them before building the record")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"{name}: boxes must be xyxy with x2 >= x1 and y2 >= y1")
    return arr


def _as_vector(name: str, values: np.ndarray, n: int, dtype: type) -> np.ndarray:
    arr: np.ndarray = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values (one per box), got {arr.shape[0]}")
    return arr


@dataclass(frozen=True)
class Detections:
    """Detector output for one frame.

    boxes: (N, 4) float32 xyxy pixels; scores: (N,) float32; class_ids: (N,) int64.
    Index with a boolean mask or an index array: ``d[d.scores > 0.5]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as_boxes("Detections.boxes", self.boxes)
        n = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(
            self, "scores", _as_vector("Detections.scores", self.scores, n, np.float32)
        )
        object.__setattr__(
            self, "class_ids", _as_vector("Detections.class_ids", self.class_ids, n, np.int64)
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: int | np.ndarray | Sequence[int] | slice) -> Detections:
        if isinstance(index, int | np.integer):
            index = [int(index)]  # keep the (N, 4) shape: d[0] is a one-row Detections
        return Detections(self.boxes[index], self.scores[index], self.class_ids[index])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def merge(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.class_ids for p in parts]),
        )


@dataclass(frozen=True)
class Track:
    """One tracked person at one keyframe. box: (4,) float32 xyxy pixels."""

    track_id: int
    box: np.ndarray
    score: float


@dataclass(frozen=True)
class TrackedPersons:
    """Tracker output for one keyframe.

    track_ids: (N,) int64, >= 1, unique; boxes: (N, 4) float32 xyxy pixels (the detector's
    box, not the Kalman estimate: the action model must see what the detector saw);
    scores: (N,) float32 detector scores; det_index: (N,) int64 row of each person in the
    ``Detections`` passed to ``update`` (so callers can join back to other per-box data).
    """

    track_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    det_index: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as_boxes("TrackedPersons.boxes", self.boxes)
        n = boxes.shape[0]
        ids = _as_vector("TrackedPersons.track_ids", self.track_ids, n, np.int64)
        if (ids < 1).any() or len(np.unique(ids)) != n:
            raise ValueError("TrackedPersons.track_ids: ids must be >= 1 and unique per keyframe")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "track_ids", ids)
        object.__setattr__(
            self, "scores", _as_vector("TrackedPersons.scores", self.scores, n, np.float32)
        )
        object.__setattr__(
            self, "det_index", _as_vector("TrackedPersons.det_index", self.det_index, n, np.int64)
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __iter__(self) -> Iterator[Track]:
        for i in range(len(self)):
            yield Track(int(self.track_ids[i]), self.boxes[i], float(self.scores[i]))

    def __getitem__(self, index: int | np.ndarray | Sequence[int] | slice) -> TrackedPersons:
        if isinstance(index, int | np.integer):
            index = [int(index)]
        return TrackedPersons(
            self.track_ids[index], self.boxes[index], self.scores[index], self.det_index[index]
        )

    @classmethod
    def empty(cls) -> TrackedPersons:
        return cls(
            np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
            np.zeros(0, np.int64),
        )  # fmt: skip

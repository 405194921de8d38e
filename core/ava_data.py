"""AVA-format data files: annotation CSVs, excluded timestamps, proposals and results.

Formats (no header row in any of them; boxes are normalised ``[0, 1]`` xyxy):

=====================  =====================================================================
annotations            ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id`` (AVA v2.x);
                       7 columns (no ``person_id``) is accepted too, as AVA v1 shipped.
excluded timestamps    ``video_id,timestamp``
proposals              ``video_id,timestamp,x1,y1,x2,y2,score``, or 8 columns
                       ``...,x2,y2,<ignored>,score`` as in PySlowFast's predicted-box CSVs
                       (whose 7th column is empty or an action id).
results / detections   ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` -- the official
                       ActivityNet results format that `training.evaluation` scores.
=====================  =====================================================================

Timestamps are whole seconds of the source movie (AVA: 902..1798); ``dataset.json``'s
``time_offset`` turns them into times inside the video file.

Every problem raises `core.ava.AvaFormatError` naming the file, the 1-based line and
the field. Rows are grouped into one `KeyframeAnnotation` per (video, timestamp) with
one entry per person box and a set of action ids per box.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core.ava import AVA_NAMES, AvaFormatError, LabelMap

__all__ = [
    "AnnotationRow",
    "DatasetInfo",
    "DetectionRow",
    "KeyframeAnnotation",
    "KeyframeProposals",
    "UnknownClasses",
    "group_keyframes",
    "group_proposals",
    "read_annotations",
    "read_dataset_info",
    "read_excluded_timestamps",
    "read_keyframes",
    "read_proposals",
    "read_results",
    "write_dataset_info",
    "write_results",
]

StrPath = str | PathLike[str]
UnknownClasses = Literal["error", "skip"]
KeyframeKey = tuple[str, int]  # (video_id, timestamp)
_BOX_FIELDS = ("x1", "y1", "x2", "y2")


@dataclass(frozen=True, slots=True)
class AnnotationRow:
    """One line of an annotation CSV: one action of one person box at one keyframe."""

    video_id: str
    timestamp: int
    box: tuple[float, float, float, float]  # normalised xyxy
    action_id: int
    person_id: int | None  # None when the file has 7 columns
    line: int  # 1-based line in the file, for later error messages


@dataclass(frozen=True, slots=True)
class DetectionRow:
    """One scored box: a results row (``action_id`` set) or a proposal (``action_id`` None)."""

    video_id: str
    timestamp: int
    box: tuple[float, float, float, float]  # normalised xyxy
    action_id: int | None
    score: float
    line: int


@dataclass(frozen=True)
class KeyframeAnnotation:
    """Ground truth of one keyframe: N person boxes, each with its set of action ids.

    ``boxes``: (N, 4) float32, normalised xyxy. ``labels[i]`` are the action ids of box
    ``i``; ``person_ids[i]`` is its AVA person id (-1 where the file had none).
    """

    video_id: str
    timestamp: int
    boxes: npt.NDArray[np.float32]  # (N, 4)
    labels: tuple[frozenset[int], ...]
    person_ids: npt.NDArray[np.int64]  # (N,)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.boxes.shape != (n, 4) or self.person_ids.shape != (n,):
            raise ValueError(
                f"KeyframeAnnotation {self.key}: boxes {self.boxes.shape}, "
                f"{n} label sets and person_ids {self.person_ids.shape} disagree"
            )

    @property
    def key(self) -> KeyframeKey:
        return (self.video_id, self.timestamp)

    def __len__(self) -> int:
        return len(self.labels)

    def label_matrix(self, label_map: LabelMap) -> npt.NDArray[np.float32]:
        """(N, C) multi-hot targets in ``label_map`` column order; ids outside it drop."""
        out = np.zeros((len(self), len(label_map)), dtype=np.float32)
        for i, ids in enumerate(self.labels):
            for class_id in ids:
                if class_id in label_map:
                    out[i, label_map.index(class_id)] = 1.0
        return out


@dataclass(frozen=True)
class KeyframeProposals:
    """Person boxes proposed by a detector for one keyframe. (N, 4) normalised xyxy."""

    video_id: str
    timestamp: int
    boxes: npt.NDArray[np.float32]  # (N, 4)
    scores: npt.NDArray[np.float32]  # (N,)

    @property
    def key(self) -> KeyframeKey:
        return (self.video_id, self.timestamp)

    def above(self, threshold: float) -> KeyframeProposals:
        """Boxes scoring >= threshold (reports A and B drop < 0.8 / 0.85)."""
        keep = self.scores >= threshold
        return KeyframeProposals(self.video_id, self.timestamp, self.boxes[keep], self.scores[keep])


# -- row parsing ---------------------------------------------------------------------------


def _rows(path: StrPath, what: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line, fields) for every non-blank CSV line; clear error if no file."""
    path = Path(path)
    if not path.is_file():
        raise AvaFormatError(path, None, None, f"{what} file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            yield reader.line_num, [f.strip() for f in fields]


def _check_columns(path: StrPath, line: int, fields: list[str], allowed: Sequence[int]) -> None:
    if len(fields) not in allowed:
        want = " or ".join(str(n) for n in allowed)
        raise AvaFormatError(
            path, line, "columns", f"expected {want} comma-separated columns, found {len(fields)}"
        )


def _parse_timestamp(path: StrPath, line: int, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        hint = " (AVA CSVs have no header row; remove it)" if line == 1 else ""
        raise AvaFormatError(path, line, "timestamp", f"{text!r} is not a number{hint}") from None
    if not math.isfinite(value) or value != int(value):
        raise AvaFormatError(path, line, "timestamp", f"{text!r} is not a whole second")
    return int(value)


def _parse_int(path: StrPath, line: int, name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AvaFormatError(path, line, name, f"{text!r} is not an integer") from None


def _parse_float(path: StrPath, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AvaFormatError(path, line, name, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise AvaFormatError(path, line, name, f"{text!r} is not a finite number")
    return value


def _parse_box(
    path: StrPath, line: int, fields: Sequence[str]
) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (
        _parse_float(path, line, n, t) for n, t in zip(_BOX_FIELDS, fields, strict=True)
    )
    for name, value in zip(_BOX_FIELDS, (x1, y1, x2, y2), strict=True):
        if not 0.0 <= value <= 1.0:
            raise AvaFormatError(
                path, line, name, f"{value} is outside [0, 1] (boxes are normalised to the frame)"
            )
    if x1 >= x2:
        raise AvaFormatError(path, line, "x2", f"x2={x2} must be greater than x1={x1}")
    if y1 >= y2:
        raise AvaFormatError(path, line, "y2", f"y2={y2} must be greater than y1={y1}")
    return (x1, y1, x2, y2)


def _parse_keyed_box(
    path: StrPath, line: int, fields: list[str], columns: Sequence[int]
) -> tuple[str, int, tuple[float, float, float, float]]:
    """Check a row has one of ``columns`` column counts and parse its leading video id,
    timestamp and box (the six columns every AVA box CSV starts with)."""
    _check_columns(path, line, fields, columns)
    video_id = _parse_video_id(path, line, fields[0])
    timestamp = _parse_timestamp(path, line, fields[1])
    return video_id, timestamp, _parse_box(path, line, fields[2:6])


def _parse_video_id(path: StrPath, line: int, text: str) -> str:
    if not text:
        raise AvaFormatError(path, line, "video_id", "empty video id")
    return text


def _check_class(
    path: StrPath,
    line: int,
    action_id: int,
    label_map: LabelMap | None,
    unknown_classes: UnknownClasses,
) -> bool:
    """True if the row's class is kept; raises or returns False for unknown ids."""
    if label_map is None or action_id in label_map:
        return True
    if unknown_classes == "skip":
        return False
    raise AvaFormatError(
        path,
        line,
        "action_id",
        f"class id {action_id} is not in the label map ({len(label_map)} classes); "
        "use the label map the data was made with, or skip unknown classes",
    )


# -- readers ------------------------------------------------------------------------------


def read_annotations(
    path: StrPath,
    label_map: LabelMap | None = None,
    *,
    unknown_classes: UnknownClasses = "error",
) -> list[AnnotationRow]:
    """Read an AVA annotation CSV (8 columns, or 7 without ``person_id``).

    With a ``label_map``, a class id outside it is an error (``unknown_classes="error"``,
    right for training: a typo in the map would silently drop labels) or the row is
    dropped (``"skip"``, what the official evaluator does with classes outside its map).
    """
    if unknown_classes not in ("error", "skip"):
        raise ValueError(f"unknown_classes must be 'error' or 'skip', got {unknown_classes!r}")
    out: list[AnnotationRow] = []
    for line, fields in _rows(path, "annotation"):
        video_id, timestamp, box = _parse_keyed_box(path, line, fields, (7, 8))
        action_id = _parse_int(path, line, "action_id", fields[6])
        if action_id < 1:
            raise AvaFormatError(path, line, "action_id", f"{action_id} is not a class id (>= 1)")
        person_id = _parse_int(path, line, "person_id", fields[7]) if len(fields) == 8 else None
        if _check_class(path, line, action_id, label_map, unknown_classes):
            out.append(AnnotationRow(video_id, timestamp, box, action_id, person_id, line))
    return out


def read_excluded_timestamps(path: StrPath | None) -> set[KeyframeKey]:
    """Read ``video_id,timestamp`` rows; ``None`` (no file given) means nothing excluded."""
    if path is None:
        return set()
    out: set[KeyframeKey] = set()
    for line, fields in _rows(path, "excluded timestamps"):
        _check_columns(path, line, fields, (2,))
        out.add((_parse_video_id(path, line, fields[0]), _parse_timestamp(path, line, fields[1])))
    return out


def read_results(
    path: StrPath,
    label_map: LabelMap | None = None,
    *,
    unknown_classes: UnknownClasses = "skip",
) -> list[DetectionRow]:
    """Read a results CSV ``video_id,timestamp,x1,y1,x2,y2,action_id,score``.

    Classes outside ``label_map`` are dropped by default, as the official evaluator does.
    """
    out: list[DetectionRow] = []
    for line, fields in _rows(path, "results"):
        video_id, timestamp, box = _parse_keyed_box(path, line, fields, (8,))
        action_id = _parse_int(path, line, "action_id", fields[6])
        score = _parse_float(path, line, "score", fields[7])
        if _check_class(path, line, action_id, label_map, unknown_classes):
            out.append(DetectionRow(video_id, timestamp, box, action_id, score, line))
    return out


def read_proposals(path: StrPath, *, min_score: float = 0.0) -> list[DetectionRow]:
    """Read person proposals: 7 columns (score last) or PySlowFast's 8 (7th ignored).

    Rows scoring below ``min_score`` are dropped (the reports used 0.8 and 0.85).
    """
    out: list[DetectionRow] = []
    for line, fields in _rows(path, "proposals"):
        video_id, timestamp, box = _parse_keyed_box(path, line, fields, (7, 8))
        score = _parse_float(path, line, "score", fields[-1])
        if score >= min_score:
            out.append(DetectionRow(video_id, timestamp, box, None, score, line))
    return out


def write_results(rows: Iterable[DetectionRow], path: StrPath) -> None:
    """Write rows in the official results format (``action_id`` must be set)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for row in rows:
            if row.action_id is None:
                raise ValueError(f"{row.video_id},{row.timestamp}: results rows need an action id")
            x1, y1, x2, y2 = row.box
            writer.writerow(
                [
                    row.video_id,
                    f"{row.timestamp:04d}",
                    f"{x1:.3f}",
                    f"{y1:.3f}",
                    f"{x2:.3f}",
                    f"{y2:.3f}",
                    row.action_id,
                    f"{row.score:.6f}",
                ]
            )


# -- grouping -----------------------------------------------------------------------------


def group_keyframes(rows: Iterable[AnnotationRow]) -> list[KeyframeAnnotation]:
    """One record per (video, timestamp), sorted; rows of one box merge into one entry.

    Rows are the same box when their coordinates (as read) and person id agree -- AVA
    repeats the box on one row per action. Boxes keep first-seen order.
    """
    frames: dict[KeyframeKey, dict[tuple[tuple[float, ...], int], set[int]]] = {}
    for row in rows:
        per_box = frames.setdefault((row.video_id, row.timestamp), {})
        person = -1 if row.person_id is None else row.person_id
        per_box.setdefault((row.box, person), set()).add(row.action_id)
    out: list[KeyframeAnnotation] = []
    for (video_id, timestamp), per_box in sorted(frames.items()):
        keys = list(per_box)
        out.append(
            KeyframeAnnotation(
                video_id=video_id,
                timestamp=timestamp,
                boxes=np.array([box for box, _ in keys], dtype=np.float32).reshape(-1, 4),
                labels=tuple(frozenset(per_box[k]) for k in keys),
                person_ids=np.array([person for _, person in keys], dtype=np.int64),
            )
        )
    return out


def read_keyframes(
    path: StrPath,
    label_map: LabelMap | None = None,
    *,
    excluded: set[KeyframeKey] | None = None,
    unknown_classes: UnknownClasses = "error",
) -> list[KeyframeAnnotation]:
    """`read_annotations` + `group_keyframes`, minus the ``excluded`` keyframes."""
    rows = read_annotations(path, label_map, unknown_classes=unknown_classes)
    skip = excluded or set()
    return group_keyframes(r for r in rows if (r.video_id, r.timestamp) not in skip)


def group_proposals(rows: Iterable[DetectionRow]) -> list[KeyframeProposals]:
    """One record per (video, timestamp), sorted; a box repeated (one row per action in
    a results file) is kept once with its highest score."""
    frames: dict[KeyframeKey, dict[tuple[float, ...], float]] = {}
    for row in rows:
        per_box = frames.setdefault((row.video_id, row.timestamp), {})
        per_box[row.box] = max(row.score, per_box.get(row.box, -math.inf))
    out: list[KeyframeProposals] = []
    for (video_id, timestamp), per_box in sorted(frames.items()):
        out.append(
            KeyframeProposals(
                video_id=video_id,
                timestamp=timestamp,
                boxes=np.array(list(per_box), dtype=np.float32).reshape(-1, 4),
                scores=np.array(list(per_box.values()), dtype=np.float32),
            )
        )
    return out


# -- dataset.json --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """The numbers in ``DIR/dataset.json`` that readers need (docs/internals.md).

    ``time_offset`` is subtracted from a CSV timestamp to get the time inside the video
    file: 0 for a synthetic world, 900 for AVA's 15-minute cuts (timestamp 902 is 2 s
    into the cut). Keys this class does not know are kept in ``extra`` and written back.
    """

    fps: float
    width: int
    height: int
    time_offset: float = 0.0
    seed: int | None = None
    classes: LabelMap | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"dataset fps must be > 0, got {self.fps}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"dataset size must be positive, got {self.width}x{self.height}")

    def video_time(self, timestamp: float) -> float:
        """Seconds into the video file of a CSV timestamp."""
        return float(timestamp) - self.time_offset


_KNOWN_KEYS = ("fps", "size", "width", "height", "time_offset", "seed", "classes")


def read_dataset_info(path: StrPath) -> DatasetInfo:
    """Read ``dataset.json``; ``path`` may be the file or the dataset directory.

    ``size`` is ``[width, height]`` (or ``width``/``height`` keys); ``classes`` is a list
    of ``{"id": N, "name": "..."}`` (or bare AVA ids, named from the AVA list).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise AvaFormatError(path, None, None, "dataset.json not found (is this a dataset dir?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AvaFormatError(path, exc.lineno, None, f"not valid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise AvaFormatError(path, None, None, "expected a JSON object")

    def number(key: str, default: float | None = None) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AvaFormatError(path, None, key, f"expected a number, got {value!r}")
        return float(value)

    if "size" in raw:
        size = raw["size"]
        if (
            not isinstance(size, list | tuple)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        ):
            raise AvaFormatError(path, None, "size", f"expected [width, height], got {size!r}")
        width, height = int(size[0]), int(size[1])
    else:
        width, height = int(number("width")), int(number("height"))
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise AvaFormatError(path, None, "seed", f"expected an integer, got {seed!r}")
    classes = _parse_classes(path, raw.get("classes"))
    fps, time_offset = number("fps"), number("time_offset", 0.0)
    try:
        return DatasetInfo(
            fps=fps,
            width=width,
            height=height,
            time_offset=time_offset,
            seed=seed,
            classes=classes,
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except ValueError as exc:  # DatasetInfo's own range checks
        raise AvaFormatError(path, None, None, str(exc)) from None


def _parse_classes(path: Path, raw: object) -> LabelMap | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise AvaFormatError(path, None, "classes", "expected a non-empty list")
    ids: list[int] = []
    names: list[str] = []
    for item in raw:
        if isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= len(AVA_NAMES):
            ids.append(item)
            names.append(AVA_NAMES[item - 1])
        elif (
            isinstance(item, dict)
            and isinstance(item.get("id"), int)
            and isinstance(item.get("name"), str)
        ):
            ids.append(item["id"])
            names.append(item["name"])
        else:
            raise AvaFormatError(
                path, None, "classes", f"entry {item!r} is neither an AVA id nor {{id, name}}"
            )
    try:
        return LabelMap(ids=tuple(ids), names=tuple(names))
    except ValueError as exc:
        raise AvaFormatError(path, None, "classes", str(exc)) from None


def write_dataset_info(info: DatasetInfo, path: StrPath) -> None:
    """Write ``dataset.json`` (``path`` may be the dataset directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    raw: dict[str, Any] = {
        "fps": info.fps,
        "size": [info.width, info.height],
        "time_offset": info.time_offset,
        "seed": info.seed,
    }
    if info.classes is not None:
        raw["classes"] = [{"id": i, "name": n} for i, n in info.classes]
    raw.update(info.extra)
    path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")

"""The files `avaserve eval` scores, read as the official ActivityNet evaluator reads them.

Two modes (the scoring rules, `training.evaluation`'s module docstring, are the same):

* **official** (default): what ``get_ava_performance.py`` accepts is accepted.
  * Rows of 2, 7 or 8 columns. A 2-column ``video_id,timestamp`` row lists a keyframe with
    no boxes; a 7-column results row has score 1.0; a GT row's 8th column is its person id.
  * Any numeric timestamp, keyed ``"%.6f"`` (`training.evaluation.image_key`).
  * Coordinates are any float (outside ``[0, 1]`` too), used as parsed. Detection boxes
    with ``x2 <= x1`` or ``y2 <= y1`` are dropped by the scoring, as upstream.
  * Fields are not stripped: ``float``/``int`` ignore surrounding blanks, video ids keep them.
  * What the official reader cannot read -- a wrong column count, a number that does not
    parse, a GT box with ``x2 < x1`` or ``y2 < y1`` (the official engine stops on those) --
    raises `AvaFormatError` naming file, line and field. Blank lines are skipped (the
    official reader stops on them).
* **strict** (``--strict``): avaserve's validating readers (`core.ava_data`) refuse,
  with file/line/field, anything outside the AVA v2 format: 2-column rows, results rows
  without a score, timestamps that are not whole seconds, non-finite numbers, coordinates
  outside ``[0, 1]``, ``x2 <= x1`` or ``y2 <= y1``, class ids < 1.

In both modes rows of classes outside the label map are dropped and counted.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from core.ava import AvaFormatError, LabelMap
from training.evaluation import (
    MAX_DETECTIONS_PER_KEYFRAME,
    ImageKey,
    KeyframeTable,
    detection_table_from_rows,
    gt_table_from_rows,
    image_key,
)

__all__ = ["EvalInputs", "read_eval_inputs"]

StrPath = str | PathLike[str]
_BOX_FIELDS = ("x1", "y1", "x2", "y2")


@dataclass(frozen=True)
class EvalInputs:
    """Both sides as read, and the excluded keyframes; `training.evaluation.evaluate_tables`
    scores them."""

    gt: KeyframeTable
    detections: KeyframeTable
    excluded: set[ImageKey]


def read_eval_inputs(
    gt: StrPath,
    detections: StrPath,
    label_map: LabelMap,
    excluded: StrPath | None = None,
    *,
    strict: bool = False,
    max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
) -> EvalInputs:
    """Read the GT, results and excluded-timestamps CSVs (see the module docstring)."""
    ids = frozenset(label_map.ids)
    if strict:
        from core.ava_data import read_annotations, read_excluded_timestamps, read_results

        # No label map here: rows of other classes must still list their keyframe; the
        # tables drop them.
        gt_table = gt_table_from_rows(read_annotations(gt), ids)
        det_table = detection_table_from_rows(
            read_results(detections), ids, max_detections_per_keyframe
        )
        excluded_keys = {image_key(v, t) for v, t in read_excluded_timestamps(excluded)}
    else:
        gt_table = KeyframeTable(ids)
        _read_official(gt, gt_table, "ground truth", score_field="person_id")
        det_table = KeyframeTable(ids, capacity=max_detections_per_keyframe)
        _read_official(detections, det_table, "results", score_field="score")
        excluded_keys = _read_excluded(excluded)
    bad = [(key, line) for key, line in gt_table.inverted if key not in excluded_keys]
    if bad:
        (video, ts), line = bad[0]
        raise AvaFormatError(
            gt,
            line,
            "x2/y2",
            f"GT box at {video},{ts} has x2 < x1 or y2 < y1 ({len(bad)} such rows); the "
            "official evaluator stops on such GT boxes, so fix the file",
        )
    return EvalInputs(gt_table, det_table, excluded_keys)


def _rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line, raw fields) of every non-blank line."""
    if not path.is_file():
        raise AvaFormatError(path, None, None, f"{what} file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for fields in reader:
            if fields:
                yield reader.line_num, fields


def _key(path: Path, line: int, fields: list[str]) -> ImageKey:
    try:
        return image_key(fields[0], fields[1])
    except ValueError:
        hint = " (AVA CSVs have no header row; remove it)" if line == 1 else ""
        raise AvaFormatError(
            path, line, "timestamp", f"{fields[1]!r} is not a number{hint}"
        ) from None


def _number(path: Path, line: int, name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise AvaFormatError(path, line, name, f"{text!r} is not a number") from None


def _read_official(path_like: StrPath, table: KeyframeTable, what: str, score_field: str) -> None:
    """Fill ``table`` with a CSV's rows, read the way get_ava_performance.py reads them."""
    path = Path(path_like)
    for line, fields in _rows(path, what):
        if len(fields) not in (2, 7, 8):
            raise AvaFormatError(
                path, line, "columns", f"expected 2, 7 or 8 comma-separated columns, found "
                f"{len(fields)}"
            )  # fmt: skip
        key = _key(path, line, fields)
        if len(fields) == 2:  # a keyframe with no boxes
            table.add_empty(key)
            continue
        fields_box = zip(_BOX_FIELDS, fields[2:6], strict=True)
        x1, y1, x2, y2 = (_number(path, line, name, text) for name, text in fields_box)
        try:
            action_id = int(fields[6])
        except ValueError:
            raise AvaFormatError(
                path, line, "action_id", f"{fields[6]!r} is not an integer"
            ) from None
        # Upstream parses the score only for rows of the label map's classes.
        score = 1.0
        if len(fields) == 8 and action_id in table.class_ids:
            score = _number(path, line, score_field, fields[7])
        table.add(key, (x1, y1, x2, y2), action_id, score, scored=len(fields) == 8, line=line)


def _read_excluded(path_like: StrPath | None) -> set[ImageKey]:
    """``video_id,timestamp`` rows (the pre-2020 official exclusions file)."""
    if path_like is None:
        return set()
    path = Path(path_like)
    out: set[ImageKey] = set()
    for line, fields in _rows(path, "excluded timestamps"):
        if len(fields) != 2:
            raise AvaFormatError(
                path, line, "columns", f"expected 2 comma-separated columns, found {len(fields)}"
            )
        out.add(_key(path, line, fields))
    return out

"""core.ava_data: AVA CSV readers, grouping, dataset.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.ava import AvaFormatError, LabelMap, read_label_map_pbtxt
from core.ava_data import (
    DatasetInfo,
    DetectionRow,
    group_keyframes,
    group_proposals,
    read_annotations,
    read_dataset_info,
    read_excluded_timestamps,
    read_keyframes,
    read_proposals,
    read_results,
    write_dataset_info,
    write_results,
)

EVAL60 = "ava_action_list_v2.1_for_activitynet_2018.pbtxt"


def test_sample_with_the_60_class_map(assets: Path) -> None:
    ava = assets / "ava"
    lm = read_label_map_pbtxt(ava / EVAL60)
    rows = read_annotations(ava / "ava_sample.csv", lm)
    assert len(rows) == 8
    assert rows[0].video_id == "0f39OWEqJ24" and rows[0].timestamp == 902  # "0902"
    assert rows[0].box == (0.031, 0.162, 0.670, 0.995) and rows[0].person_id == 0
    frames = group_keyframes(rows)
    assert [f.key for f in frames] == [
        ("0f39OWEqJ24", 902),
        ("0f39OWEqJ24", 903),
        ("_-Z6wFjXtGQ", 902),
    ]
    assert [len(f) for f in frames] == [1, 1, 1]
    assert frames[0].labels == (frozenset({12, 17, 79}),)
    assert frames[2].labels == (frozenset({12, 74, 80}),)
    np.testing.assert_allclose(frames[1].boxes, [[0.034, 0.189, 0.669, 0.980]], rtol=1e-6)
    targets = frames[0].label_matrix(lm)
    assert targets.shape == (1, 60) and targets.sum() == 3 and targets[0, lm.index(79)] == 1


def test_sample_with_its_own_map_has_a_class_outside_it(assets: Path) -> None:
    # mmaction2's 4-class sample map lacks class 74, which the sample CSV uses (line 7):
    # strict reading reports it; the evaluator's skip mode drops that row.
    ava = assets / "ava"
    lm = read_label_map_pbtxt(ava / "action_list_sample.pbtxt")
    with pytest.raises(AvaFormatError) as info:
        read_annotations(ava / "ava_sample.csv", lm)
    assert (info.value.line, info.value.field) == (7, "action_id")
    rows = read_annotations(ava / "ava_sample.csv", lm, unknown_classes="skip")
    assert len(rows) == 7 and all(r.action_id != 74 for r in rows)


def test_excluded_sample(assets: Path) -> None:
    excluded = read_excluded_timestamps(assets / "ava" / "ava_excluded_timestamps_sample.csv")
    assert excluded == {("0f39OWEqJ24", 903), ("_-Z6wFjXtGQ", 902)}
    frames = read_keyframes(
        assets / "ava" / "ava_sample.csv", LabelMap.ava_all(), excluded=excluded
    )
    assert [f.key for f in frames] == [("0f39OWEqJ24", 902)]
    assert read_excluded_timestamps(None) == set()


GOOD = "vid,0902,0.1,0.2,0.5,0.6,12,3"


@pytest.mark.parametrize(
    ("line2", "field", "message"),
    [
        ("vid,0902,0.1,0.2,0.5,0.6,12", None, None),  # 7 columns: no person id, fine
        ("vid,0902,0.1,0.2,0.5,0.6", "columns", "expected 7 or 8"),
        ("vid,0902,0.1,0.2,0.5,0.6,12,3,9", "columns", "found 9"),
        ("vid,0902,0.1,0.2,1.5,0.6,12,3", "x2", "outside"),
        ("vid,0902,-0.1,0.2,0.5,0.6,12,3", "x1", "outside"),
        ("vid,0902,0.5,0.2,0.5,0.6,12,3", "x2", "greater than x1"),
        ("vid,0902,0.1,0.7,0.5,0.6,12,3", "y2", "greater than y1"),
        ("vid,0902,0.1,abc,0.5,0.6,12,3", "y1", "not a number"),
        ("vid,0902,0.1,0.2,0.5,0.6,99,3", "action_id", "not in the label map"),
        ("vid,0902,0.1,0.2,0.5,0.6,twelve,3", "action_id", "not an integer"),
        ("vid,0902,0.1,0.2,0.5,0.6,12,p", "person_id", "not an integer"),
        ("vid,0902.5,0.1,0.2,0.5,0.6,12,3", "timestamp", "whole second"),
        ("vid,nan,0.1,0.2,0.5,0.6,12,3", "timestamp", "whole second"),
        (",0902,0.1,0.2,0.5,0.6,12,3", "video_id", "empty"),
    ],
)
def test_malformed_annotation_rows(
    tmp_path: Path, line2: str, field: str | None, message: str | None
) -> None:
    path = tmp_path / "gt.csv"
    path.write_text(f"{GOOD}\n{line2}\n")
    lm = LabelMap.from_ids([12, 17])
    if message is None:
        assert len(read_annotations(path, lm)) == 2
        return
    with pytest.raises(AvaFormatError, match=message) as info:
        read_annotations(path, lm)
    assert info.value.file == str(path)
    assert info.value.line == 2
    assert info.value.field == field
    assert f"{path}, line 2, field {field!r}" in str(info.value)


def test_header_row_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "gt.csv"
    path.write_text(f"video_id,timestamp,x1,y1,x2,y2,action_id,person_id\n{GOOD}\n")
    with pytest.raises(AvaFormatError, match="no header row") as info:
        read_annotations(path)
    assert (info.value.line, info.value.field) == (1, "timestamp")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(AvaFormatError, match="annotation file not found") as info:
        read_annotations(tmp_path / "missing.csv")
    assert info.value.file == str(tmp_path / "missing.csv")


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path: Path) -> None:
    path = tmp_path / "gt.csv"
    path.write_text(f"{GOOD}\n\n{GOOD}\nvid,0902,0.1,0.2,0.5,0.6,12\nvid,1,2\n")
    with pytest.raises(AvaFormatError) as info:
        read_annotations(path)
    assert info.value.line == 5


def test_grouping_merges_actions_of_one_box_and_keeps_people_apart(tmp_path: Path) -> None:
    path = tmp_path / "gt.csv"
    path.write_text(
        "v,0903,0.1,0.1,0.4,0.9,12,1\n"
        "v,0902,0.1,0.1,0.4,0.9,12,1\n"
        "v,0902,0.5,0.1,0.9,0.9,11,2\n"
        "v,0902,0.1,0.1,0.4,0.9,79,1\n"
        "a,0902,0.1,0.1,0.4,0.9,80,1\n"
    )
    frames = group_keyframes(read_annotations(path))
    assert [f.key for f in frames] == [("a", 902), ("v", 902), ("v", 903)]
    v902 = frames[1]
    assert v902.labels == (frozenset({12, 79}), frozenset({11}))
    assert v902.person_ids.tolist() == [1, 2]
    assert v902.boxes.shape == (2, 4) and v902.boxes.dtype == np.float32


def test_results_and_proposals(tmp_path: Path) -> None:
    rows = [
        DetectionRow("v", 902, (0.1, 0.1, 0.4, 0.9), 12, 0.9, 0),
        DetectionRow("v", 902, (0.1, 0.1, 0.4, 0.9), 79, 0.4, 0),
        DetectionRow("v", 903, (0.5, 0.1, 0.9, 0.9), 99, 0.7, 0),
    ]
    path = tmp_path / "results.csv"
    write_results(rows, path)
    assert path.read_text().splitlines()[0] == "v,0902,0.100,0.100,0.400,0.900,12,0.900000"
    back = read_results(path, LabelMap.from_ids([12, 79]))
    assert [(r.action_id, r.score) for r in back] == [(12, 0.9), (79, 0.4)]  # 99 skipped
    with pytest.raises(AvaFormatError) as info:
        read_results(path, LabelMap.from_ids([12, 79]), unknown_classes="error")
    assert (info.value.line, info.value.field) == (3, "action_id")
    # A results file read as proposals: one box per (keyframe, box) with the best score.
    proposals = group_proposals(read_proposals(path))
    assert [p.key for p in proposals] == [("v", 902), ("v", 903)]
    assert proposals[0].scores.tolist() == pytest.approx([0.9])
    assert len(proposals[0].above(0.95).boxes) == 0


def test_proposal_formats_and_threshold(tmp_path: Path) -> None:
    path = tmp_path / "proposals.csv"
    path.write_text(
        "v,0902,0.1,0.1,0.4,0.9,0.95\n"  # 7 columns
        "v,0902,0.5,0.1,0.9,0.9,,0.5\n"  # PySlowFast's 8 columns with an empty label
        "v,0903,0.5,0.1,0.9,0.9,0.85\n"
    )
    assert len(read_proposals(path)) == 3
    kept = read_proposals(path, min_score=0.85)
    assert [(r.timestamp, r.score) for r in kept] == [(902, 0.95), (903, 0.85)]
    path.write_text("v,0902,0.1,0.1,0.4,0.9,high\n")
    with pytest.raises(AvaFormatError) as info:
        read_proposals(path)
    assert (info.value.line, info.value.field) == (1, "score")


def test_excluded_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "ex.csv"
    path.write_text("v,0902\nv,0903,extra\n")
    with pytest.raises(AvaFormatError) as info:
        read_excluded_timestamps(path)
    assert (info.value.line, info.value.field) == (2, "columns")


def test_dataset_info_round_trip(tmp_path: Path) -> None:
    info = DatasetInfo(
        fps=30.0,
        width=320,
        height=240,
        time_offset=900.0,
        seed=7,
        classes=LabelMap.from_ids([12, 14]),
        extra={"generator": "world"},
    )
    write_dataset_info(info, tmp_path)
    assert read_dataset_info(tmp_path) == info
    assert info.video_time(902) == 2.0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"size": [320, 240]}', "fps"),
        ('{"fps": 30, "size": [320]}', "size"),
        ('{"fps": 30, "size": [320, 240], "seed": "x"}', "seed"),
        ('{"fps": 30, "size": [320, 240], "classes": [{"id": 1}]}', "classes"),
        ('{"fps": 30, "size": [320, 240], "classes": [3, 3]}', "classes"),
        ('{"fps": 0, "size": [320, 240]}', None),
        ('{"fps": 30,', None),
    ],
)
def test_dataset_info_errors(tmp_path: Path, text: str, field: str | None) -> None:
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(AvaFormatError) as info:
        read_dataset_info(tmp_path / "dataset.json")
    assert info.value.field == field


def test_dataset_info_accepts_bare_ids_and_width_height(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(
        '{"fps": 25, "width": 64, "height": 48, "classes": [12]}'
    )
    info = read_dataset_info(tmp_path)
    assert (info.width, info.height, info.time_offset) == (64, 48, 0.0)
    assert info.classes == LabelMap.from_ids([12])

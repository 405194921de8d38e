"""core.ava: AVA facts, LabelMap, and the label-map / names readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.ava import (
    AVA_NAMES,
    EVALUATED_IDS,
    POSE_IDS,
    AvaFormatError,
    LabelMap,
    label_map_from_names,
    read_class_names,
    read_label_map_pbtxt,
    write_label_map_pbtxt,
)


def test_facts() -> None:
    assert len(AVA_NAMES) == 80
    assert tuple(range(1, 15)) == POSE_IDS
    assert [AVA_NAMES[i - 1] for i in (1, 12, 14, 80)] == [
        "bend/bow (at the waist)",
        "stand",
        "walk",
        "watch (a person)",
    ]
    assert len(EVALUATED_IDS) == 60 and len(set(EVALUATED_IDS)) == 60
    assert sorted(EVALUATED_IDS) == list(EVALUATED_IDS)
    # crawl (2) is one of the 20 unscored classes; swim (13) is scored
    assert 2 not in EVALUATED_IDS and 13 in EVALUATED_IDS


def test_facts_match_the_shipped_files(assets: Path) -> None:
    assert read_class_names(assets / "ava" / "ava_v2.2_80_classes.txt") == AVA_NAMES
    lm = read_label_map_pbtxt(assets / "ava" / "ava_action_list_v2.1_for_activitynet_2018.pbtxt")
    assert lm.ids == EVALUATED_IDS
    assert lm == LabelMap.ava_evaluated()  # names agree with the 80-name list too


def test_sample_label_map_allows_repeated_names(assets: Path) -> None:
    lm = read_label_map_pbtxt(assets / "ava" / "action_list_sample.pbtxt")
    assert lm.ids == (12, 17, 79, 80)
    assert lm.names == ("action1", "action2", "action3", "action3")


def test_label_map_queries() -> None:
    lm = LabelMap.from_ids([12, 3, 80])
    assert len(lm) == 3 and 3 in lm and 4 not in lm
    assert lm.index(80) == 2 and lm.name(12) == "stand"
    assert lm.pose_ids == (12, 3)
    assert lm.pose_mask() == (True, True, False)
    assert lm.subset([80, 12, 99]).ids == (12, 80)
    assert list(lm)[1] == (3, "crouch/kneel")
    with pytest.raises(KeyError, match="class id 4"):
        lm.index(4)
    assert LabelMap.ava_all().ids == tuple(range(1, 81))
    assert label_map_from_names(["a", "b"]).ids == (1, 2)


@pytest.mark.parametrize(
    ("ids", "names", "error"),
    [
        ((1, 2), ("a",), "2 ids but 1 names"),
        ((), (), "no classes"),
        ((1, 1), ("a", "b"), "appears twice"),
        ((0,), ("a",), "positive"),
    ],
)
def test_label_map_validation(ids: tuple, names: tuple, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        LabelMap(ids=ids, names=names)


def test_pbtxt_round_trip(tmp_path: Path) -> None:
    lm = LabelMap(ids=(5, 1, 70), names=('say "hi"', "a\\b", "hug (a person)"))
    write_label_map_pbtxt(lm, tmp_path / "m.pbtxt")
    assert read_label_map_pbtxt(tmp_path / "m.pbtxt") == lm


def test_pbtxt_v22_label_blocks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "v22.pbtxt"
    path.write_text(
        "# AVA v2.2 style\n"
        'label {\n  name: "bend/bow (at the waist)"\n  label_id: 1\n'
        "  label_type: PERSON_MOVEMENT\n}\n"
        'label { name: "crawl" label_id: 2 label_type: PERSON_MOVEMENT }\n'
    )
    assert read_label_map_pbtxt(path) == LabelMap.from_ids([1, 2])


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ('item {\n  name: "a"\n  id: x\n}\n', 3, "id", "not a positive integer"),
        (
            'item {\n  name: "a"\n  id: 3\n}\nitem {\n  name: "b"\n  id: 3\n}\n',
            7,
            "id",
            "already defined on line 3",
        ),
        ('item {\n  name: "a"\n}\n', 1, "id", "no 'id:'"),
        ("item {\n  id: 4\n}\n", 1, "name", "no 'name:'"),
        ('item {\n  name: "a"\n  id: 1\n}\n@@\n', 5, None, "cannot parse"),
        ('thing {\n  name: "a"\n  id: 1\n}\n', 1, None, "expected 'item {'"),
        ('item {\n  name: "a"\n  id: 1\n', 3, None, "expected 'key: value' or '}'"),
        ("", None, None, "no 'item"),
    ],
)
def test_malformed_pbtxt_names_file_line_field(
    tmp_path: Path, text: str, line: int | None, field: str | None, message: str
) -> None:
    path = tmp_path / "bad.pbtxt"
    path.write_text(text)
    with pytest.raises(AvaFormatError, match=message) as info:
        read_label_map_pbtxt(path)
    assert info.value.file == str(path) and str(path) in str(info.value)
    assert info.value.line == line
    assert info.value.field == field


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(AvaFormatError, match="not found"):
        read_label_map_pbtxt(tmp_path / "nope.pbtxt")
    with pytest.raises(AvaFormatError, match="not found"):
        read_class_names(tmp_path / "nope.txt")


def test_class_names_blank_line_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("stand\n\nwalk\n\n")
    with pytest.raises(AvaFormatError) as info:
        read_class_names(path)
    assert (info.value.line, info.value.field) == (2, "name")
    path.write_text("stand\nwalk\n\n")
    assert read_class_names(path) == ("stand", "walk")

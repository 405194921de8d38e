"""training.eval_csv: the evaluator's files read as get_ava_performance.py reads them, or
refused with --strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.ava import AvaFormatError, LabelMap
from training.eval_csv import read_eval_inputs
from training.evaluation import evaluate_tables

LM = LabelMap.from_ids([11, 12])
GT_ROW = "v,0902,0.0,0.0,0.4,0.4,12,0\n"
DET_ROW = "v,0902,0.0,0.0,0.4,0.4,12,0.9\n"


def _files(tmp_path: Path, gt: str, det: str, excluded: str | None = None) -> tuple:
    (tmp_path / "gt.csv").write_text(gt)
    (tmp_path / "det.csv").write_text(det)
    ex = None
    if excluded is not None:
        ex = tmp_path / "ex.csv"
        ex.write_text(excluded)
    return tmp_path / "gt.csv", tmp_path / "det.csv", ex


def test_timestamp_spellings_are_one_keyframe(tmp_path: Path) -> None:
    gt, det, ex = _files(
        tmp_path,
        GT_ROW + "v,902.0,0.5,0.5,0.9,0.9,12,1\n",
        "v,902.000000,0.0,0.0,0.4,0.4,12,0.9\nv, 902 ,0.5,0.5,0.9,0.9,12,0.8\n",
        "v,0903\n",
    )
    inputs = read_eval_inputs(gt, det, LM, ex)
    assert set(inputs.gt.entries()) == {("v", "902.000000")}
    assert set(inputs.detections.entries()) == {("v", "902.000000")}
    assert inputs.excluded == {("v", "903.000000")}
    assert evaluate_tables(inputs.gt, inputs.detections, LM, inputs.excluded).mean_ap == 1.0


def test_fields_are_not_stripped_for_video_ids(tmp_path: Path) -> None:
    # csv.reader keeps blanks: " v" is another video, as in the official reader.
    gt, det, _ = _files(tmp_path, GT_ROW, " v,0902,0.0,0.0,0.4,0.4,12, 0.9\n")
    inputs = read_eval_inputs(gt, det, LM)
    r = evaluate_tables(inputs.gt, inputs.detections, LM, inputs.excluded)
    assert r.mean_ap == 0.0 and r.rules.det_unlisted_keyframe == 1


def test_score_of_a_class_outside_the_map_is_not_read(tmp_path: Path) -> None:
    # Upstream parses the 8th column only for the label map's classes.
    gt, det, _ = _files(tmp_path, GT_ROW, DET_ROW + "v,0902,0.0,0.0,0.4,0.4,74,n/a\n\n")
    inputs = read_eval_inputs(gt, det, LM)
    assert inputs.detections.unknown_class == 1


def test_results_row_without_score_scores_one(tmp_path: Path) -> None:
    gt, det, _ = _files(tmp_path, GT_ROW, "v,0902,0.0,0.0,0.4,0.4,12\n")
    inputs = read_eval_inputs(gt, det, LM)
    assert inputs.detections.entries()[("v", "902.000000")][0][0] == 1.0
    assert inputs.detections.without_score == 1


def test_inverted_gt_box_is_refused_unless_excluded(tmp_path: Path) -> None:
    gt, det, ex = _files(tmp_path, GT_ROW + "v,0903,0.4,0.0,0.0,0.4,12,0\n", DET_ROW, "v,903\n")
    with pytest.raises(AvaFormatError, match=r"gt.csv, line 2, field 'x2/y2'.*v,903\.000000"):
        read_eval_inputs(gt, det, LM)
    assert read_eval_inputs(gt, det, LM, ex).gt.inverted == [(("v", "903.000000"), 2)]


@pytest.mark.parametrize(
    ("gt_text", "field"),
    [
        ("v,0902\n", "columns"),  # a keyframe with no actions
        ("v,902.5,0.0,0.0,0.4,0.4,12,0\n", "timestamp"),
        ("v,0902,0.0,0.0,0.4,1.2,12,0\n", "y2"),
        ("v,0902,0.0,0.0,0.4,nan,12,0\n", "y2"),
        ("v,0902,0.0,0.0,0.0,0.4,12,0\n", "x2"),  # empty box
        ("v,0902,0.0,0.0,0.4,0.4,0,0\n", "action_id"),
    ],
)
def test_strict_refuses_what_the_official_reader_takes(
    tmp_path: Path, gt_text: str, field: str
) -> None:
    gt, det, _ = _files(tmp_path, gt_text, DET_ROW)
    read_eval_inputs(gt, det, LM)  # the official reading takes it
    with pytest.raises(AvaFormatError, match=f"gt.csv, line 1, field '{field}'"):
        read_eval_inputs(gt, det, LM, strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_both_modes_score_alike(tmp_path: Path, strict: bool) -> None:
    gt, det, ex = _files(
        tmp_path,
        GT_ROW + "v,0903,0.0,0.0,0.4,0.4,11,0\nv,0904,0.0,0.0,0.4,0.4,74,0\n",
        DET_ROW + "v,0904,0.0,0.0,0.4,0.4,11,0.95\nv,0905,0.0,0.0,0.4,0.4,11,0.99\n",
        "v,0903\n",
    )
    inputs = read_eval_inputs(gt, det, LM, ex, strict=strict)
    r = evaluate_tables(inputs.gt, inputs.detections, LM, inputs.excluded)
    # 903 (the only "sit" GT) excluded; 904 listed via class 74 -> its "sit" row is an FP
    # for a class without GT; 905 unlisted -> ignored.
    assert r.per_class_ap[12] == 1.0 and r.classes_without_gt == (11,)
    assert (r.rules.gt_excluded, r.rules.gt_unknown_class) == (1, 1)
    assert (r.rules.det_unlisted_keyframe, r.classes[0].num_detections) == (1, 1)


def test_missing_file_and_bad_excluded_row(tmp_path: Path) -> None:
    gt, det, ex = _files(tmp_path, GT_ROW, DET_ROW, "v,0902,extra\n")
    with pytest.raises(AvaFormatError, match="ex.csv, line 1, field 'columns'"):
        read_eval_inputs(gt, det, LM, ex)
    with pytest.raises(AvaFormatError, match="results file not found"):
        read_eval_inputs(gt, tmp_path / "none.csv", LM)

"""`avaserve eval`: the per-class table and the last line `mAP@0.5IOU: <value>`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from cli_support import command_app
from typer.testing import CliRunner

from training.eval_cli import register

EVAL60 = "ava_action_list_v2.1_for_activitynet_2018.pbtxt"


def _app() -> typer.Typer:
    return command_app(register)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(_app(), ["eval", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("label_map", ["action_list_sample.pbtxt", EVAL60])
@pytest.mark.parametrize("excluded", [False, True])
def test_sample_against_itself(assets: Path, label_map: str, excluded: bool) -> None:
    ava = assets / "ava"
    sample = str(ava / "ava_sample.csv")
    args = ["--gt", sample, "--detections", sample, "--label-map", str(ava / label_map)]
    if excluded:
        args += ["--excluded", str(ava / "ava_excluded_timestamps_sample.csv")]
    code, out = _run(*args)
    assert code == 0, out
    assert out.rstrip("\n").splitlines()[-1] == "mAP@0.5IOU: 1.0"
    assert "action2" in out or "carry/hold" in out  # the per-class table


def test_json_output(assets: Path, tmp_path: Path) -> None:
    ava = assets / "ava"
    sample = str(ava / "ava_sample.csv")
    out_json = tmp_path / "eval.json"
    code, out = _run(
        "--gt", sample, "--detections", sample,
        "--label-map", str(ava / "action_list_sample.pbtxt"), "--json", str(out_json),
    )  # fmt: skip
    assert code == 0, out
    data = json.loads(out_json.read_text())
    assert data["mAP"] == 1.0 and data["classes_without_gt"] == []
    assert [c["id"] for c in data["per_class"]] == [12, 17, 79, 80]


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_hand_case_through_the_cli(tmp_path: Path) -> None:
    lm = _write(tmp_path / "m.pbtxt", 'item {\n  name: "stand"\n  id: 12\n}\n')
    gt = _write(tmp_path / "gt.csv", "v,0902,0.0,0.0,0.4,0.4,12,0\nv,0902,0.5,0.5,0.9,0.9,12,1\n")
    dets = _write(tmp_path / "det.csv", "v,0902,0.0,0.0,0.4,0.4,12,0.9\n")
    code, out = _run("--gt", gt, "--detections", dets, "--label-map", lm)
    assert code == 0, out
    assert out.rstrip("\n").splitlines()[-1] == "mAP@0.5IOU: 0.5"


@pytest.mark.parametrize(
    ("det_text", "strict", "message"),
    [
        ("v,0902,0.0,0.0,0.4,0.4,12\n", True, "det.csv, line 1, field 'columns'"),
        ("v,0902,0.0,0.0,1.4,0.4,12,0.9\n", True, "det.csv, line 1, field 'x2'"),
        ("v,0902,0.4,0.0,0.0,0.4,12,0.9\n", True, "det.csv, line 1, field 'x2'"),
        ("v,902.5,0.0,0.0,0.4,0.4,12,0.9\n", True, "det.csv, line 1, field 'timestamp'"),
        ("v,0902\n", True, "det.csv, line 1, field 'columns'"),
        ("v,0902,0.0,0.0,0.4,0.4,12,high\n", True, "det.csv, line 1, field 'score'"),
        ("v,0902,0.0,0.0,0.4,0.4,12,high\n", False, "det.csv, line 1, field 'score'"),
        ("v,0902,0.0,0.0,0.4,0.4,12,0.9,1\n", False, "det.csv, line 1, field 'columns'"),
        ("v,0902,0.0,0.0,0.4,0.4,stand,0.9\n", False, "det.csv, line 1, field 'action_id'"),
        ("video_id,timestamp\n", False, "det.csv, line 1, field 'timestamp'"),
    ],
)
def test_bad_detections_give_a_clear_error(
    tmp_path: Path, det_text: str, strict: bool, message: str
) -> None:
    lm = _write(tmp_path / "m.pbtxt", 'item {\n  name: "stand"\n  id: 12\n}\n')
    gt = _write(tmp_path / "gt.csv", "v,0902,0.0,0.0,0.4,0.4,12,0\n")
    dets = _write(tmp_path / "det.csv", det_text)
    args = ["eval", "--gt", gt, "--detections", dets, "--label-map", lm]
    result = CliRunner().invoke(_app(), [*args, "--strict"] if strict else args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_rows_the_official_evaluator_reads_are_scored_and_counted(tmp_path: Path) -> None:
    """Without --strict each rule applies as upstream, and the summary says how often."""
    lm = _write(tmp_path / "m.pbtxt", 'item {\n  name: "stand"\n  id: 12\n}\n')
    gt = _write(
        tmp_path / "gt.csv",
        "v,0902,0.0,0.0,0.4,0.4,12,0\n"
        "v,0902,0.5,0.5,0.9,0.9,74,0\n"  # class outside the map
        "v,903\n"  # listed keyframe with no actions
        "v,904,0.0,0.0,0.4,0.4,12,0\n",  # excluded below
    )
    dets = _write(
        tmp_path / "det.csv",
        "v,902.0,0.0,0.0,0.4,0.4,12\n"  # no score column: 1.0; TP
        "v,0902,0.4,0.0,0.0,0.4,12,0.95\n"  # x2 < x1: dropped
        "v,0902,0.0,0.0,1.2,0.4,12,0.3\n"  # outside [0, 1], used as given: FP
        "v,0903,0.0,0.0,0.4,0.4,12,0.2\n"  # listed, no GT: FP
        "v,0904,0.0,0.0,0.4,0.4,12,0.9\n"  # excluded
        "v,0905,0.0,0.0,0.4,0.4,12,0.99\n",  # not in the GT: ignored
    )
    excluded = _write(tmp_path / "ex.csv", "v,904\n")
    args = ["--gt", gt, "--detections", dets, "--label-map", lm, "--excluded", excluded]
    code, out = _run(*args, "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    assert out.rstrip("\n").splitlines()[-1] == "mAP@0.5IOU: 1.0"
    rules = json.loads((tmp_path / "r.json").read_text())["rules"]
    assert rules == {
        "gt_unknown_class": 1, "det_unknown_class": 0, "gt_empty_keyframe": 1,
        "det_empty_keyframe": 0, "det_without_score": 1, "gt_outside_frame": 0,
        "det_outside_frame": 1, "det_over_cap": 0, "gt_excluded": 1, "det_excluded": 1,
        "det_unlisted_keyframe": 1, "unlisted_keyframes": 1, "det_invalid_box": 1,
    }  # fmt: skip
    assert "keyframe not listed in the GT (ignored; 1 keyframes)" in out
    assert "box with x2<=x1 or y2<=y1 (dropped)" in out
    # --strict refuses the same files at the first row outside the AVA v2 format.
    code, out = _run(*args, "--strict")
    assert code == 2 and "gt.csv, line 3, field 'columns'" in out


def test_missing_option_is_explained(tmp_path: Path) -> None:
    lm = _write(tmp_path / "m.pbtxt", 'item {\n  name: "stand"\n  id: 12\n}\n')
    code, out = _run("--gt", lm, "--label-map", lm)
    assert code != 0 and "--detections" in out


def test_real_entry_point(assets: Path) -> None:
    ava = assets / "ava"
    sample = str(ava / "ava_sample.csv")
    cmd = [
        sys.executable, "-m", "avaserve.cli", "eval", "--gt", sample, "--detections", sample,
        "--label-map", str(ava / EVAL60),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert out.stdout.rstrip("\n").splitlines()[-1] == "mAP@0.5IOU: 1.0"

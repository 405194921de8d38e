"""`avaserve eval` against the official ActivityNet AVA evaluator, on random cases.

The official scoring engine is ActivityNet's ``Evaluation/ava`` package; the ``slowfast``
1.0 wheel ships it unchanged as ``slowfast.utils.ava_evaluation`` (installed by the
Makefile, imported here at test time, never copied). The wheel's CSV helper
(``slowfast.utils.ava_eval_helper``) follows the pre-2020 reader instead: no 50-row cap
per keyframe, no score sort, integer timestamps, no 2-column rows, and detections at
keyframes the GT does not list are scored. So `_official_map` reads the files the way
ActivityNet's ``get_ava_performance.py`` does (written here from its rules) and feeds the
packaged engine as that script does; `test_matches_slowfast_helper` also runs the
wheel's own helper on cases where the two readers agree.
"""

from __future__ import annotations

import csv
import decimal
import heapq
import io
import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from cli_support import command_app
from typer.testing import CliRunner

from core.ava import LabelMap, read_label_map_pbtxt, write_label_map_pbtxt
from training.eval_cli import register
from training.eval_csv import read_eval_inputs
from training.evaluation import evaluate_tables

ENGINE = "slowfast.utils.ava_evaluation.object_detection_evaluation"
NUM_CASES = 300
TOLERANCE = 1e-9
# The engine's np.nanmean over classes that all lack GT (a case with no GT) warns.
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The packaged official engine, with the numpy/logging names it was written against."""
    module = pytest.importorskip(
        ENGINE,
        reason="the official AVA evaluator is not installed (make's test venv installs "
        "slowfast==1.0, which ships it)",
    )
    # Written for numpy < 1.20 (np.float, np.bool, np.NAN) and Python < 3.13 (logging.warn).
    for name, value in (("float", float), ("bool", np.bool_), ("NAN", np.nan)):
        if not hasattr(np, name):
            monkeypatch.setattr(np, name, value, raising=False)
    if not hasattr(logging, "warn"):
        monkeypatch.setattr(logging, "warn", logging.warning, raising=False)
    return module


# -- the official protocol, driven by hand -------------------------------------------------


def _official_labelmap(path: Path) -> tuple[list[dict[str, Any]], set[int]]:
    """get_ava_performance.py's label-map reading: '  name:' and '  id:' lines."""
    categories: list[dict[str, Any]] = []
    name = ""
    for line in path.read_text().splitlines():
        if line.startswith("  name:"):
            name = line.split('"')[1]
        elif line.startswith("  id:") or line.startswith("  label_id:"):
            categories.append({"id": int(line.split()[-1]), "name": name})
    return categories, {c["id"] for c in categories}


def _official_csv(path: Path, whitelist: set[int], capacity: int) -> tuple[dict, set]:
    """Per keyframe the kept (score, class, y1, x1, y2, x2) rows, best first; all keys."""
    heaps: dict[str, list] = defaultdict(list)
    keys: set[str] = set()
    with path.open() as handle:
        for row in csv.reader(handle):
            key = f"{row[0]},{float(decimal.Decimal(row[1])):.6f}"
            keys.add(key)
            if len(row) == 2:
                continue
            x1, y1, x2, y2 = (float(v) for v in row[2:6])
            action = int(row[6])
            if action not in whitelist:
                continue
            score = float(row[7]) if len(row) == 8 else 1.0
            item = (score, action, y1, x1, y2, x2)
            if capacity < 1 or len(heaps[key]) < capacity:
                heapq.heappush(heaps[key], item)
            elif score > heaps[key][0][0]:
                heapq.heapreplace(heaps[key], item)
    return {k: sorted(v, key=lambda t: -t[0]) for k, v in heaps.items()}, keys


def _official_map(engine: Any, case: Case) -> dict[str, float]:
    """mAP and per-class AP (by name) from the packaged engine, fed as ActivityNet does."""
    categories, whitelist = _official_labelmap(case.label_map)
    excluded = set()
    if case.excluded is not None:
        with case.excluded.open() as handle:
            excluded = {f"{r[0]},{float(decimal.Decimal(r[1])):.6f}" for r in csv.reader(handle)}
    evaluator = engine.PascalDetectionEvaluator(categories)
    gt, listed = _official_csv(case.gt, whitelist, 0)
    for key, rows in gt.items():
        if key in excluded:
            continue
        evaluator.add_single_ground_truth_image_info(
            key,
            {
                "groundtruth_boxes": np.array([r[2:] for r in rows], dtype=float),
                "groundtruth_classes": np.array([r[1] for r in rows], dtype=int),
                "groundtruth_difficult": np.zeros(len(rows), dtype=bool),
            },
        )
    det, _ = _official_csv(case.detections, whitelist, 50)
    for key, rows in det.items():
        if key in excluded or key not in listed:
            continue
        evaluator.add_single_detected_image_info(
            key,
            {
                "detection_boxes": np.array([r[2:] for r in rows], dtype=float),
                "detection_classes": np.array([r[1] for r in rows], dtype=int),
                "detection_scores": np.array([r[0] for r in rows], dtype=float),
            },
        )
    return _by_name(evaluator.evaluate())


def _by_name(metrics: dict[str, float]) -> dict[str, float]:
    out = {"mAP": float(metrics["PascalBoxes_Precision/mAP@0.5IOU"])}
    prefix = "PascalBoxes_PerformanceByCategory/AP@0.5IOU/"
    out.update({k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)})
    return out


# -- avaserve eval -----------------------------------------------------------------------


def _app() -> typer.Typer:
    return command_app(register)


def _avaserve_json(case: Case, tmp: Path, *, cli: bool = True) -> dict[str, Any]:
    """The JSON of `avaserve eval` (``cli=False``: the calls the CLI makes, without its
    table rendering, which costs most of the time)."""
    if cli:
        args = ["eval", "--gt", str(case.gt), "--detections", str(case.detections)]
        args += ["--label-map", str(case.label_map), "--json", str(tmp / "out.json")]
        if case.excluded is not None:
            args += ["--excluded", str(case.excluded)]
        result = CliRunner().invoke(_app(), args)
        assert result.exit_code == 0, result.output
        data = json.loads((tmp / "out.json").read_text())
    else:
        labels = read_label_map_pbtxt(case.label_map)
        inputs = read_eval_inputs(case.gt, case.detections, labels, case.excluded)
        data = evaluate_tables(inputs.gt, inputs.detections, labels, inputs.excluded).to_json()
    return data


def _aps(data: dict[str, Any]) -> dict[str, float]:
    """mAP and per-class AP by class name from `avaserve eval --json` (null: NaN)."""
    out = {"mAP": math.nan if data["mAP"] is None else data["mAP"]}
    out.update({c["name"]: math.nan if c["ap"] is None else c["ap"] for c in data["per_class"]})
    return out


def _max_difference(ours: dict[str, float], theirs: dict[str, float]) -> float:
    assert ours.keys() == theirs.keys()
    worst = 0.0
    for name, value in theirs.items():
        assert math.isnan(value) == math.isnan(ours[name]), (name, value, ours[name])
        if not math.isnan(value):
            worst = max(worst, abs(value - ours[name]))
    return worst


# -- random cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label_map: Path
    gt: Path
    detections: Path
    excluded: Path | None


def _box(rng: random.Random) -> list[float]:
    x1, y1 = rng.uniform(-0.05, 0.8), rng.uniform(-0.05, 0.8)
    return [x1, y1, x1 + rng.uniform(0.05, 0.3), y1 + rng.uniform(0.05, 0.3)]


def _jitter(rng: random.Random, box: list[float]) -> list[float]:
    # Mostly small shifts (true positives), sometimes IoU near or below 0.5.
    scale = rng.choice([0.01, 0.03, 0.08])
    return [v + rng.gauss(0.0, scale) for v in box]


def _timestamp(rng: random.Random, second: int) -> str:
    return rng.choice([f"{second:04d}", str(second), f"{second}.0", f"{second}.000000"])


def _score(rng: random.Random, tie: bool) -> str:
    # Few distinct values make ties; repr keeps every float exact.
    return repr(rng.choice([0.2, 0.5, 0.9]) if tie else rng.random())


def random_case(rng: random.Random, tmp: Path, *, helper_safe: bool = False) -> Case:
    """Random GT and results CSVs. ``helper_safe``: only inputs on which slowfast's
    pre-2020 CSV helper reads what get_ava_performance.py reads (see the module docstring).
    """
    if rng.random() < 0.1:
        label_map = LabelMap.ava_evaluated()
    else:
        ids = sorted(rng.sample(range(1, 81), rng.randint(1, 8)))
        label_map = LabelMap(ids=tuple(ids), names=tuple(f"class {i}" for i in ids))
    ids = list(label_map.ids)
    others = [i for i in range(1, 81) if i not in label_map]
    write_label_map_pbtxt(label_map, tmp / "labels.pbtxt")
    tie = not helper_safe and rng.random() < 0.4
    cap_case = not helper_safe and rng.random() < 0.15

    gt_lines: list[str] = []
    det_lines: list[str] = []
    keyframes = [
        (f"vid{v}", s)
        for v in range(rng.randint(1, 3))
        for s in rng.sample(range(900, 912), rng.randint(1, 5))
    ]
    gt_keys = []
    for video, second in keyframes:
        # "listed": a 2-column GT row, no actions; "unlisted": the GT does not name the
        # keyframe (its detections are ignored); else GT boxes.
        mode = rng.choices(["listed", "unlisted", "boxes"], [0.15, 0.1, 0.75])[0]
        if helper_safe and mode == "listed":
            mode = "boxes"
        if helper_safe and mode == "unlisted":
            continue
        if mode != "unlisted":
            gt_keys.append((video, second))
        if mode == "listed":
            gt_lines.append(f"{video},{_timestamp(rng, second)}")
        persons = [_box(rng) for _ in range(rng.randint(0 if mode != "boxes" else 1, 4))]
        for person, box in enumerate(persons if mode == "boxes" else []):
            labels = rng.sample(ids, rng.randint(0, min(3, len(ids))))
            if others and rng.random() < 0.3:
                labels.append(rng.choice(others))  # a class outside the map
            if not labels:
                labels = [rng.choice(ids)]
            for action in labels:
                ts = f"{second:04d}" if helper_safe else _timestamp(rng, second)
                row = [video, ts, *map(repr, box), str(action)]
                if helper_safe or rng.random() < 0.8:
                    row.append(str(person))
                gt_lines.append(",".join(row))
        # Detections: jittered persons, random boxes, any class.
        rows = []
        count = rng.randint(51, 70) if cap_case else rng.randint(0, 12)
        for _ in range(count):
            box = _jitter(rng, rng.choice(persons)) if persons and rng.random() < 0.7 else _box(rng)
            if not helper_safe and rng.random() < 0.1:  # inverted or empty box
                box[0], box[2] = (box[2], box[0]) if rng.random() < 0.7 else (box[0], box[0])
            action = rng.choice(ids + others[:3] if rng.random() < 0.2 else ids)
            rows.append((box, action, _score(rng, tie)))
        if helper_safe:  # the helper keeps file order: write best first, no equal scores
            rows.sort(key=lambda r: -float(r[2]))
        for box, action, score in rows:
            ts = f"{second:04d}" if helper_safe else _timestamp(rng, second)
            row = [video, ts, *map(repr, box), str(action)]
            if helper_safe or rng.random() < 0.95:
                row.append(score)
            det_lines.append(",".join(row))
    (tmp / "gt.csv").write_text("".join(f"{line}\n" for line in gt_lines))
    (tmp / "det.csv").write_text("".join(f"{line}\n" for line in det_lines))
    excluded = None
    if gt_keys and rng.random() < 0.4:
        chosen = rng.sample(keyframes, rng.randint(1, max(1, len(keyframes) // 3)))
        (tmp / "excluded.csv").write_text("".join(f"{v},{s:04d}\n" for v, s in chosen))
        excluded = tmp / "excluded.csv"
    return Case(tmp / "labels.pbtxt", tmp / "gt.csv", tmp / "det.csv", excluded)


def _cases(tmp_path: Path, seed: int, count: int, **kwargs: Any) -> Iterator[tuple[int, Case]]:
    rng = random.Random(seed)
    for i in range(count):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        yield i, random_case(rng, folder, **kwargs)


@pytest.mark.slow
def test_matches_the_official_evaluator(engine: Any, tmp_path: Path) -> None:
    worst = 0.0
    rules: dict[str, int] = defaultdict(int)
    ties = classes_without_gt = 0
    for i, case in _cases(tmp_path, seed=19, count=NUM_CASES):
        theirs = _official_map(engine, case)
        ours = _avaserve_json(case, case.gt.parent, cli=i % 10 == 0)
        diff = _max_difference(_aps(ours), theirs)
        assert diff <= TOLERANCE, f"case {i} ({case.gt.parent}): {diff}"
        worst = max(worst, diff)
        for name, count in ours["rules"].items():
            rules[name] += count
        classes_without_gt += len(ours["classes_without_gt"])
        scores = [r[7] for r in csv.reader(case.detections.read_text().splitlines()) if len(r) == 8]
        ties += len(scores) - len(set(scores))
    print(f"\nmax |avaserve - official| over {NUM_CASES} random cases: {worst:.3g}")
    # The cases reach every rule, so the comparison above can fail on each of them.
    for rule in (
        "gt_unknown_class", "det_unknown_class", "gt_empty_keyframe", "det_without_score",
        "gt_outside_frame", "det_over_cap", "gt_excluded", "det_excluded",
        "det_unlisted_keyframe", "det_invalid_box",
    ):  # fmt: skip
        assert rules[rule] > 0, rule
    assert ties > 0 and classes_without_gt > 0


def test_matches_slowfast_helper(engine: Any, tmp_path: Path) -> None:
    """Where slowfast's own CSV helper reads as ActivityNet does, it agrees too."""
    from slowfast.utils import ava_eval_helper as helper

    for i, case in _cases(tmp_path, seed=7, count=60, helper_safe=True):
        categories, whitelist = helper.read_labelmap(str(case.label_map))
        gt = helper.read_csv(str(case.gt), whitelist, load_score=False)
        det = helper.read_csv(str(case.detections), whitelist, load_score=True)
        excluded = helper.read_exclusions(str(case.excluded) if case.excluded else None)
        with redirect_stdout(io.StringIO()):  # it pprints the metrics
            theirs = _by_name(helper.run_evaluation(categories, gt, det, excluded))
        diff = _max_difference(_aps(_avaserve_json(case, case.gt.parent, cli=i % 10 == 0)), theirs)
        assert diff <= TOLERANCE, f"case {i} ({case.gt.parent}): {diff}"


def test_inverted_gt_box_stops_both(engine: Any, tmp_path: Path) -> None:
    """The official engine raises on a GT box with x2 < x1; avaserve refuses the file."""
    write_label_map_pbtxt(LabelMap.from_ids([12]), tmp_path / "labels.pbtxt")
    (tmp_path / "gt.csv").write_text("v,0902,0.5,0.1,0.2,0.4,12,0\n")
    (tmp_path / "det.csv").write_text("v,0902,0.1,0.1,0.5,0.4,12,0.9\n")
    case = Case(tmp_path / "labels.pbtxt", tmp_path / "gt.csv", tmp_path / "det.csv", None)
    with pytest.raises(ValueError, match="Invalid box data"):
        _official_map(engine, case)
    args = ["eval", "--gt", str(case.gt), "--detections", str(case.detections)]
    result = CliRunner().invoke(_app(), [*args, "--label-map", str(case.label_map)])
    assert result.exit_code == 2
    assert "gt.csv, line 1" in result.output and "x2 < x1" in result.output

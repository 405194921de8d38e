"""Prediction records: JSON Lines and AVA CSV round trips, top-k and score-floor CSV rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.ava import LabelMap
from service.records import Prediction, read_ava_csv, read_jsonl, write_ava_csv, write_jsonl

LABELS = LabelMap(
    ids=(1, 11, 12, 80), names=("bend/bow (at the waist)", "sit", "stand", "watch (a person)")
)


def _pred(t: float, tid: int, probs: list[float], context: str = "ok") -> Prediction:
    return Prediction(
        video="vid_1",
        time=t,
        track_id=tid,
        box=(10.0, 20.0, 110.0, 220.0),
        box_norm=(10 / 320, 20 / 240, 110 / 320, 220 / 240),
        score=0.91,
        probs=np.asarray(probs, np.float32),
        labels=LABELS,
        context=context,  # type: ignore[arg-type]
    )


PREDS = [
    _pred(0.0, 1, [0.1, 0.2, 0.6, 0.9]),
    _pred(1.0, 1, [0.05, 0.7, 0.2, 0.3], "degraded"),
    _pred(1.0, 2, [0.3, 0.1, 0.5, 0.01], "none"),
]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    assert write_jsonl(PREDS, path, top_k=2) == 3
    back = read_jsonl(path)
    assert len(back) == 3
    for a, b in zip(PREDS, back, strict=True):
        assert (a.video, a.time, a.track_id, a.context) == (b.video, b.time, b.track_id, b.context)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
        np.testing.assert_allclose(a.box_norm, b.box_norm, atol=1e-6)
        assert b.labels.ids == LABELS.ids
    assert back[0].top(1) == [(80, "watch (a person)", pytest.approx(0.9))]
    # reading with the model's label map keeps every name
    assert read_jsonl(path, LABELS)[2].labels.names == LABELS.names


@pytest.mark.parametrize(
    ("top_k", "min_score", "rows"),
    [(None, None, 12), (2, None, 6), (None, 0.5, 4)],
)
def test_ava_csv(tmp_path: Path, top_k: int | None, min_score: float | None, rows: int) -> None:
    path = tmp_path / "r.csv"
    assert write_ava_csv(PREDS, path, top_k=top_k, min_score=min_score, time_offset=900) == rows
    back = read_ava_csv(path)
    assert len(back) == rows
    assert back[0].video == "vid_1" and back[0].timestamp == 900
    assert back[0].action_id == 80 and back[0].score == pytest.approx(0.9)  # best first
    np.testing.assert_allclose(back[0].box_norm, PREDS[0].box_norm, atol=1e-3)
    assert path.read_text().splitlines()[0].startswith("vid_1,0900,0.031,0.083,0.344,0.917,80,")


def test_ava_csv_is_readable_by_training_eval(tmp_path: Path) -> None:
    """The official format, as `avaserve eval` reads it."""
    from core.ava_data import read_results

    path = tmp_path / "r.csv"
    write_ava_csv(PREDS, path, top_k=3)
    rows = read_results(path)
    assert len(rows) == 9 and rows[0].timestamp == 0 and rows[0].action_id == 80


def test_invalid_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels"):
        _pred(0.0, 1, [0.1, 0.2])
    with pytest.raises(ValueError, match="context"):
        _pred(0.0, 1, [0.1, 0.2, 0.3, 0.4], "maybe")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_jsonl(bad)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b,c\n")
    with pytest.raises(ValueError, match="8 columns"):
        read_ava_csv(bad_csv)

"""The rendered MP4 decodes, and boxes are drawn where the predictions say, in the track colour."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import tiny_bundle as tb

from core.ava import LabelMap
from service.records import Prediction
from service.render import draw_predictions, render_video, track_colour

LABELS = LabelMap(ids=(11, 12), names=("sit", "stand"))


def _pred(t: float, tid: int, box: tuple[float, float, float, float]) -> Prediction:
    w, h = 160, 120
    return Prediction(
        video="v",
        time=t,
        track_id=tid,
        box=box,
        box_norm=(box[0] / w, box[1] / h, box[2] / w, box[3] / h),
        score=0.9,
        probs=np.array([0.2, 0.8], np.float32),
        labels=LABELS,
    )


def test_draw_predictions_pixels() -> None:
    img = np.zeros((120, 160, 3), np.uint8)
    out = draw_predictions(img, [_pred(0.0, 3, (40.0, 60.0, 120.0, 115.0))])
    colour = np.array(track_colour(3))
    # left edge of the box (below the label) has the track colour; the inside stays black
    assert np.abs(out[100, 40].astype(int) - colour).max() <= 1
    assert out[90, 80].tolist() == [0, 0, 0]
    assert img.max() == 0  # the input is not modified


def test_render_video_is_decodable_with_boxes(tmp_path: Path) -> None:
    src = tb.make_video(tmp_path / "src.mp4", seconds=2.2, fps=10, size=(160, 120))
    preds = [_pred(0.0, 1, (20.0, 50.0, 70.0, 115.0)), _pred(1.0, 2, (90.0, 50.0, 150.0, 115.0))]
    out = tmp_path / "out.mp4"
    n = render_video(src, preds, out, isolated=False)
    assert n == 22
    with av.open(str(out)) as c:
        decoded = list(c.decode(video=0))
        frames = [f.to_ndarray(format="rgb24") for f in decoded]
        times = [float(f.pts * f.time_base) for f in decoded]
    assert len(frames) == 22 and frames[0].shape == (120, 160, 3)
    # Plays at the source's pace: frame i at i / 10 s (a wrong encoder time base once made
    # each 0.1 s step 100 frames of a 1/10 s base, i.e. 10 s).
    np.testing.assert_allclose(times, np.arange(22) / 10.0, atol=0.002)
    green = np.array(track_colour(2))
    blue = np.array(track_colour(1))

    def near(px: np.ndarray, colour: np.ndarray) -> bool:
        return int(np.abs(px.astype(int) - colour).max()) <= 40  # lossy codec

    # frame at 0.2 s shows track 1's box edge; frame at 1.0 s shows track 2's
    assert near(frames[2][100, 20], blue)
    assert near(frames[10][100, 90], green)
    assert not near(frames[10][100, 20], blue)

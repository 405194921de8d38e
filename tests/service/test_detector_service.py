"""Keyframe detection: the bundle's detector in both formats, and a user's raw YOLOX file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_bundle as tb

from core.manifest import BundleError, load_manifest
from service.decode import decode_frames
from service.detector import PersonDetector, load_user_detector
from service.runtime import OnnxRuntime, RuntimeLoadError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_bundle(tmp_path_factory.mktemp("bundle"))


def _ped_frames(assets: Path, times: list[float]) -> list[np.ndarray]:
    out, want = [], list(times)
    with decode_frames(assets / "video" / "pedestrians_vtest.avi", isolated=False) as dec:
        for f in dec:
            if want and f.pts_seconds >= want[0] - 1e-6:
                out.append(f.image)
                want.pop(0)
            if not want:
                break
    return out


def test_avaserve_format_maps_boxes_to_frame_pixels(bundle: Path) -> None:
    m = load_manifest(bundle)
    assert m.detector is not None and m.detector.format == "avaserve"
    det = PersonDetector(OnnxRuntime(bundle / "detector.onnx"), m.detector)
    frames = [np.zeros((120, 160, 3), np.uint8)] * 3  # batched: one Detections per frame
    out = det.detect(frames)
    assert len(out) == 3
    scale = np.array([160 / 64, 120 / 64, 160 / 64, 120 / 64], np.float32)  # stretch resize
    for d in out:
        np.testing.assert_allclose(d.boxes, tb.FIXED_BOXES * scale, atol=1e-4)
        np.testing.assert_allclose(d.scores, tb.FIXED_SCORES)
    assert det.score_threshold == 0.8 and det.low_threshold == pytest.approx(0.1)


def test_yolox_format_finds_people(assets: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from export.detector import build_yolox_detector

    spec, _ = build_yolox_detector(
        assets / "detector" / "yolox_nano.onnx", tmp_path / "detector.onnx"
    )
    det = PersonDetector(OnnxRuntime(tmp_path / "detector.onnx"), spec)
    assert det.max_batch == 1  # YOLOX-nano's static batch: run one image at a time
    frames = _ped_frames(assets, [1.0, 5.0])
    out = det.detect(frames)
    for d in out:
        persons = d[d.scores >= det.score_threshold]
        assert len(persons) >= 1
        assert (persons.boxes[:, 2] <= 768).all() and (persons.boxes[:, 3] <= 576).all()
        heights = persons.boxes[:, 3] - persons.boxes[:, 1]
        assert ((heights > 30) & (heights < 300)).all()  # pedestrian-sized, in frame pixels

    # The raw YOLOX file decoded in numpy (the --detector path) gives the same persons.
    raw = load_user_detector(assets / "detector" / "yolox_nano.onnx", score_threshold=0.8)
    assert raw.raw_yolox is not None and raw.raw_yolox.layout.sigmoid_applied
    for a, b in zip(out, raw.detect(frames), strict=True):
        a, b = a[a.scores >= 0.5], b[b.scores >= 0.5]
        assert len(a) == len(b)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_user_detector_contract_graph_without_spec_assumes_yolox(bundle: Path) -> None:
    det = load_user_detector(bundle / "detector.onnx", score_threshold=0.7)
    assert det.raw_yolox is None and det.spec.channel_order == "BGR"
    assert det.score_threshold == 0.7


def test_user_detector_errors(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_user_detector(tmp_path / "missing.onnx")
    with pytest.raises(RuntimeLoadError, match="not a detector"):
        load_user_detector(bundle / "head.onnx")

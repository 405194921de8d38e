"""detector.onnx from the project's own detector: signature, ops, parity with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.detector_io import preprocess
from export.detector import check_detector_signature, graph_domains
from training.detector.export import (
    DetectorParityError,
    export_detector_onnx,
    read_spec,
)
from training.detector.model import DetectorConfig, PersonDetectorNet, detect

# nms_score_threshold 0 and a neutral heat bias: random weights then give scores around 0.5
# and a few dozen boxes per image, so NMS has real work to do.
TINY = DetectorConfig(
    input_hw=(64, 96), widths=(8, 8, 16, 16, 16), head_width=8, nms_score_threshold=0.0
)


@pytest.fixture(scope="module")
def model() -> PersonDetectorNet:
    torch.manual_seed(0)
    m = PersonDetectorNet(TINY).eval()
    with torch.no_grad():
        assert m.out.bias is not None
        m.out.bias[0] = 0.0
    return m


@pytest.fixture(scope="module")
def exported(model: PersonDetectorNet, tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
    path = tmp_path_factory.mktemp("det") / "detector.onnx"
    return export_detector_onnx(model, path, frames=frames, score_threshold=0.6), path


def test_signature_spec_and_ops(exported) -> None:
    result, path = exported
    graph = check_detector_signature(path)  # the export side's own contract check
    assert graph.sha256 == result.graph.sha256
    spec = read_spec(path)
    assert spec == result.spec
    assert spec.format == "avaserve" and spec.input_size == (64, 96)
    assert spec.score_threshold == 0.6 and spec.channel_order == "RGB"
    domains = graph_domains(path)
    assert set(domains) == {""}, domains  # default ONNX domain only
    assert "NonMaxSuppression" in domains[""]
    assert path.stat().st_size < 10 * 2**20


def test_parity_figures(exported) -> None:
    result, _ = exported
    assert result.num_detections > 0  # NMS had boxes to choose from
    for name, diff in result.parity.items():
        assert diff <= 1e-4, (name, diff)


def test_dynamic_batch_matches_eager(model: PersonDetectorNet, exported) -> None:
    _, path = exported
    spec = read_spec(path)
    rng = np.random.default_rng(3)
    images = np.concatenate(
        [preprocess(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8), spec)[0] for _ in range(2)]
    )  # (2, 3, 64, 96)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, class_ids, batch_index = sess.run(
        ["boxes", "scores", "class_ids", "batch_index"], {"images": images}
    )
    ref = detect(model, torch.from_numpy(images))
    np.testing.assert_array_equal(batch_index, ref.batch_index.numpy())
    assert set(batch_index.tolist()) == {0, 1}
    np.testing.assert_array_equal(class_ids, np.zeros_like(class_ids))
    np.testing.assert_allclose(boxes, ref.boxes.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, ref.scores.numpy(), atol=1e-5)
    assert (np.diff(scores[batch_index == 0]) <= 0).all()  # descending within an image


def test_parity_gate_refuses(model: PersonDetectorNet, tmp_path: Path) -> None:
    path = tmp_path / "detector.onnx"
    with pytest.raises(DetectorParityError, match="tolerance"):
        export_detector_onnx(model, path, tolerance=-1.0)  # any difference fails
    assert not path.exists()


def test_read_spec_refuses_foreign_file(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["images"], ["y"])], "g", [x], [y])
    )
    onnx.save(m, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="metadata"):
        read_spec(tmp_path / "other.onnx")

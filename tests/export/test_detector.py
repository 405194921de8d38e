"""export/detector.py: YOLOX-nano + appended decode/NMS, against numpy and against real people."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from core.boxes import batched_nms
from core.detector_io import preprocess, unletterbox_boxes
from core.manifest import DETECTOR_OUTPUTS, DetectorSpec
from core.yolox import yolox_grid
from export.detector import (
    DetectorExportError,
    build_yolox_detector,
    check_detector_signature,
    graph_domains,
    probe_yolox_layout,
    yolox_postprocess_numpy,
)

KEYFRAME_SECONDS = (5, 10, 20, 30, 60, 70)  # people in view at each (3-10 walk through)


@pytest.fixture(scope="module")
def yolox(assets: Path) -> Path:
    return assets / "detector" / "yolox_nano.onnx"


@pytest.fixture(scope="module")
def built(yolox: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DetectorSpec]:
    dst = tmp_path_factory.mktemp("det") / "detector.onnx"
    spec, _ = build_yolox_detector(yolox, dst)
    return dst, spec


@pytest.fixture(scope="module")
def keyframes(assets: Path) -> dict[int, np.ndarray]:
    """RGB frames at the chosen integer seconds of the pedestrian video (10 fps)."""
    out: dict[int, np.ndarray] = {}
    with av.open(str(assets / "video" / "pedestrians_vtest.avi")) as container:
        for frame in container.decode(video=0):
            if frame.time is None:
                continue
            sec = round(frame.time)
            if abs(frame.time - sec) < 1e-6 and sec in KEYFRAME_SECONDS:
                out[sec] = frame.to_ndarray(format="rgb24")
            if len(out) == len(KEYFRAME_SECONDS):
                break
    assert sorted(out) == sorted(KEYFRAME_SECONDS)
    return out


def _run(sess: ort.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"images": images}), strict=True))


def test_contract_and_default_domain_only(built: tuple[Path, DetectorSpec]) -> None:
    path, spec = built
    graph = check_detector_signature(path)
    assert [t.name for t in graph.outputs] == list(DETECTOR_OUTPUTS)
    assert graph.inputs[0].shape == (1, 3, 416, 416)
    assert graph.outputs[0].shape == ("N", 4)
    domains = graph_domains(path)
    # Every operator, listed: all from the default ONNX domain (no custom NMS plugin).
    assert set(domains) == {""}, domains
    assert {"NonMaxSuppression", "GatherND", "Exp", "Conv"} <= domains[""]
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert (spec.channel_order, spec.pad_value, spec.letterbox_anchor, spec.mean) == (
        "BGR",
        114.0,
        "top_left",
        None,
    )


def test_probe_reads_this_files_layout(yolox: Path) -> None:
    # Measured on the shared file: raw grid offsets, sigmoid already applied in the graph.
    layout = probe_yolox_layout(onnx.load(str(yolox)), (416, 416))
    assert not layout.decoded and layout.sigmoid_applied


def test_grid_order() -> None:
    grid, stride = yolox_grid((416, 416))
    assert grid.shape == (3549, 2) and stride.shape == (3549, 1)
    assert grid[:3].tolist() == [[0, 0], [1, 0], [2, 0]]  # x fastest
    assert grid[52].tolist() == [0, 1] and stride[52, 0] == 8
    assert stride[52 * 52, 0] == 16 and stride[-1, 0] == 32 and grid[-1].tolist() == [12, 12]


def test_graph_equals_numpy_reference(
    yolox: Path, built: tuple[Path, DetectorSpec], keyframes: dict[int, np.ndarray]
) -> None:
    path, spec = built
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(yolox), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = [preprocess(f, spec)[0] for f in keyframes.values()]
    inputs.append(rng.uniform(0, 255, (1, 3, 416, 416)).astype(np.float32))
    for images in inputs:
        got = _run(full, images)
        want = yolox_postprocess_numpy(head.run(None, {"images": images})[0], spec)
        for name in DETECTOR_OUTPUTS:
            assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)  # pixels
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
        np.testing.assert_array_equal(got["class_ids"], want["class_ids"])
        np.testing.assert_array_equal(got["batch_index"], want["batch_index"])


def test_multiclass_graph_equals_numpy(
    yolox: Path, tmp_path: Path, keyframes: dict[int, np.ndarray]
) -> None:
    spec, _ = build_yolox_detector(
        yolox, tmp_path / "d.onnx", class_ids=(0, 2, 24), nms_score_threshold=0.05
    )
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(yolox), providers=["CPUExecutionProvider"])
    images = preprocess(keyframes[20], spec)[0]
    got = _run(sess, images)
    want = yolox_postprocess_numpy(head.run(None, {"images": images})[0], spec)
    np.testing.assert_array_equal(got["class_ids"], want["class_ids"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)
    assert set(got["class_ids"].tolist()) <= {0, 2, 24}


def test_finds_people_on_pedestrian_keyframes(
    built: tuple[Path, DetectorSpec], keyframes: dict[int, np.ndarray]
) -> None:
    path, spec = built
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sec, frame in keyframes.items():
        images, t = preprocess(frame, spec)
        out = _run(sess, images)
        keep = out["scores"] >= 0.5
        boxes = unletterbox_boxes(out["boxes"][keep], t, clip=False)
        assert keep.sum() >= 3, f"t={sec}s: {keep.sum()} persons >= 0.5"
        assert (out["class_ids"] == 0).all() and (out["batch_index"] == 0).all()
        h, w = frame.shape[:2]
        # Inside the frame (a pixel of slack for boxes touching the border) and person-shaped.
        assert (
            (boxes[:, :2] >= -1).all()
            and (boxes[:, 2] <= w + 1).all()
            and (boxes[:, 3] <= h + 1).all()
        )
        assert ((boxes[:, 3] - boxes[:, 1]) > (boxes[:, 2] - boxes[:, 0])).mean() >= 0.8


def test_blank_frame_gives_empty_outputs(built: tuple[Path, DetectorSpec]) -> None:
    path, spec = built
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, _ = preprocess(np.full((240, 320, 3), 114, np.uint8), spec)
    out = _run(sess, images)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
    assert out["class_ids"].dtype == np.int64


def test_batched_nms_matches_onnx_runtime() -> None:
    """The reference NMS alone against ONNX Runtime's NonMaxSuppression on crowded boxes."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (2, 300, 2)).astype(np.float32)
    wh = rng.uniform(5, 40, (2, 300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=2)
    scores = rng.uniform(0, 1, (2, 3, 300)).astype(np.float32)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["b", "s", "m", "i", "t"], ["sel"])],
        "nms",
        [
            helper.make_tensor_value_info("b", f, [2, 300, 4]),
            helper.make_tensor_value_info("s", f, [2, 3, 300]),
        ],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, ["N", 3])],
        [
            onnx.numpy_helper.from_array(np.array([20], np.int64), "m"),
            onnx.numpy_helper.from_array(np.array([0.45], np.float32), "i"),
            onnx.numpy_helper.from_array(np.array([0.3], np.float32), "t"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"b": boxes, "s": scores})[0]
    want = batched_nms(boxes, scores, iou_threshold=0.45, score_threshold=0.3, max_per_class=20)
    np.testing.assert_array_equal(got, want)


def test_rejects_non_yolox_models(tmp_path: Path) -> None:
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["out"])],
        "g",
        [helper.make_tensor_value_info("images", f, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", f, [1, 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "x.onnx"))
    with pytest.raises(DetectorExportError, match=r"not \(B, anchors, 5 \+ classes\)"):
        build_yolox_detector(tmp_path / "x.onnx", tmp_path / "d.onnx")

"""core/detector_io.py: letterbox geometry round trips and the preprocessing it prescribes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.detector_io import letterbox_transform, preprocess, unletterbox_boxes
from core.manifest import DetectorSpec


def _spec(**kw: object) -> DetectorSpec:
    base: dict[str, object] = dict(
        format="yolox", input_height=416, input_width=416, channel_order="BGR"
    )
    base.update(kw)
    return DetectorSpec.model_validate(base)


@pytest.mark.parametrize(
    ("frame_hw", "anchor", "scale", "pad", "resized_wh"),
    [
        ((576, 768), "top_left", 416 / 768, (0, 0), (416, 312)),
        ((576, 768), "center", 416 / 768, (0, 52), (416, 312)),
        ((240, 426), "top_left", 416 / 426, (0, 0), (416, 234)),
        ((1000, 500), "center", 416 / 1000, (104, 0), (208, 416)),
        ((416, 416), "top_left", 1.0, (0, 0), (416, 416)),
    ],
)
def test_letterbox_transform(
    frame_hw: tuple[int, int],
    anchor: str,
    scale: float,
    pad: tuple[int, int],
    resized_wh: tuple[int, int],
) -> None:
    t = letterbox_transform(frame_hw, _spec(letterbox_anchor=anchor))
    assert t.scale_x == pytest.approx(scale) and t.scale_y == pytest.approx(scale)
    assert (t.pad_x, t.pad_y) == pad
    assert (t.resized_w, t.resized_h) == resized_wh


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("anchor", ["top_left", "center"])
def test_boxes_round_trip(resize: str, anchor: str) -> None:
    t = letterbox_transform((576, 768), _spec(resize=resize, letterbox_anchor=anchor))
    frame_boxes = np.array([[10, 20, 110, 220], [700, 500, 768, 576]], np.float32)
    canvas = frame_boxes.copy()
    canvas[:, 0::2] = canvas[:, 0::2] * t.scale_x + t.pad_x
    canvas[:, 1::2] = canvas[:, 1::2] * t.scale_y + t.pad_y
    np.testing.assert_allclose(unletterbox_boxes(canvas, t), frame_boxes, atol=1e-3)


def test_unletterbox_clips_to_frame() -> None:
    t = letterbox_transform((576, 768), _spec())
    out = unletterbox_boxes(np.array([[-5, -5, 500, 400]], np.float32), t)
    assert out.min() >= 0 and out[0, 2] <= 768 and out[0, 3] <= 576
    assert unletterbox_boxes(np.zeros((0, 4), np.float32), t).shape == (0, 4)


def test_preprocess_yolox_layout() -> None:
    frame = np.zeros((576, 768, 3), np.uint8)
    frame[..., 0] = 200  # red in RGB
    images, t = preprocess(frame, _spec())
    assert images.shape == (1, 3, 416, 416) and images.dtype == np.float32
    # BGR: the red channel lands last; the pad below the image is 114, unscaled.
    assert images[0, 2, 0, 0] == pytest.approx(200) and images[0, 0, 0, 0] == 0
    assert (images[0, :, t.resized_h :, :] == 114).all()


def test_preprocess_normalises_when_asked() -> None:
    spec = _spec(
        channel_order="RGB",
        pixel_scale=255.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        pad_value=0,
    )
    images, _ = preprocess(np.full((416, 416, 3), 255, np.uint8), spec)
    np.testing.assert_allclose(images, 2.0, atol=1e-6)


def test_preprocess_rejects_bad_frames() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess(np.zeros((10, 10), np.uint8), _spec())


def test_detector_spec_round_trips_through_onnx_metadata(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from core.detector_io import SPEC_METADATA_KEY, spec_from_onnx_metadata

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    assert spec_from_onnx_metadata(plain) is None

    spec = _spec(score_threshold=0.3)
    helper.set_model_props(model, {SPEC_METADATA_KEY: spec.model_dump_json()})
    tagged = tmp_path / "tagged.onnx"
    onnx.save(model, str(tagged))
    assert spec_from_onnx_metadata(tagged) == spec


def _reference_preprocess(frame: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """The spec applied literally on a float canvas: resize, pad, order, scale, normalise."""
    from PIL import Image

    t = letterbox_transform(frame.shape[:2], spec)
    resized = np.asarray(
        Image.fromarray(frame).resize((t.resized_w, t.resized_h), Image.Resampling.BILINEAR)
    )
    canvas = np.full((t.canvas_h, t.canvas_w, 3), spec.pad_value, np.float32)
    canvas[t.pad_y : t.pad_y + t.resized_h, t.pad_x : t.pad_x + t.resized_w] = resized
    if spec.channel_order == "BGR":
        canvas = canvas[:, :, ::-1]
    canvas = canvas / np.float32(spec.pixel_scale)
    if spec.mean is not None and spec.std is not None:
        canvas = (canvas - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("size", [(240, 320), (577, 769), (100, 50)])
def test_preprocess_table_equals_literal_float_canvas(
    order: str, normalise: bool, resize: str, size: tuple[int, int]
) -> None:
    """The per-channel lookup table gives bit-identical inputs to the literal recipe."""
    kw: dict[str, object] = {"pixel_scale": 1.0, "pad_value": 114.0}
    if normalise:
        kw = {"pixel_scale": 255.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    spec = DetectorSpec(
        format="yolox",
        input_height=320,
        input_width=416,
        resize=resize,
        channel_order=order,
        **kw,  # type: ignore[arg-type]
    )
    frame = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    images, _ = preprocess(frame, spec)
    expected = _reference_preprocess(frame, spec)
    assert images.shape == expected.shape == (1, 3, 320, 416)
    assert images.flags.c_contiguous and images.dtype == np.float32
    assert np.array_equal(images, expected)

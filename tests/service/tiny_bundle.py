"""Test helpers: a tiny model bundle made of hand-built ONNX graphs, and short test videos.

The graphs follow the bundle contract's names and shapes (detector / backbone / head) but
compute something trivial, so the service tests run in milliseconds and never import torch.
Loaded by path from the tests (pytest runs with --import-mode=importlib).

* detector: every image gets the same ``FIXED_BOXES`` (canvas pixels) with ``FIXED_SCORES``;
  one is below the 0.8 threshold (must never produce a record, may continue a track).
* backbone: global = mean of each pathway's pixels x W; person = global[batch index] + box
  coordinates x W' (so features depend on clip content and on the box).
* head: sigmoid((person + global + masked mean of the bank) x W).
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from core.ava import AVA_NAMES
from core.manifest import (
    BankSpec,
    BundleManifest,
    DetectorSpec,
    ModelInfo,
    Preprocessing,
    Provenance,
    describe_graph,
    write_manifest,
)

D = 16
CLASS_IDS = (1, 11, 12, 14, 80)
POSE_IDS = (1, 11, 12, 14)
DET_HW = (64, 64)
# canvas pixels of the 64 x 64 stretched detector input
FIXED_BOXES = np.array([[4, 8, 24, 60], [36, 6, 60, 58], [26, 30, 34, 40]], np.float32)
FIXED_SCORES = np.array([0.95, 0.9, 0.3], np.float32)
OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def detector_graph(path: Path) -> None:
    n = len(FIXED_BOXES)
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero1", "one1"], ["b1"]),  # (1,) = B
        helper.make_node("Concat", ["b1", "one1"], ["rep2"], axis=0),
        helper.make_node("Tile", ["box_c", "rep2"], ["boxes"]),
        helper.make_node("Tile", ["score_c", "b1"], ["scores"]),
        helper.make_node("Tile", ["cls_c", "b1"], ["class_ids"]),
        helper.make_node("Squeeze", ["b1"], ["b0"]),
        helper.make_node("Range", ["zero0", "b0", "one0"], ["ar"]),
        helper.make_node("Unsqueeze", ["ar", "one1"], ["ar2"]),  # (B, 1)
        helper.make_node("Expand", ["ar2", "shape_bn"], ["bi2"]),  # (B, n)
        helper.make_node("Reshape", ["bi2", "minus1"], ["batch_index"]),
    ]
    inits = [
        _const("zero1", np.array([0], np.int64)),
        _const("one1", np.array([1], np.int64)),
        _const("zero0", np.array(0, np.int64)),
        _const("one0", np.array(1, np.int64)),
        _const("minus1", np.array([-1], np.int64)),
        _const("shape_bn", np.array([1, n], np.int64)),
        _const("box_c", FIXED_BOXES),
        _const("score_c", FIXED_SCORES),
        _const("cls_c", np.zeros(n, np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, *DET_HW])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("class_ids", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["N"]),
        ],
        inits,
    )
    _save(graph, path)


def backbone_graph(path: Path, t_slow: int, t_fast: int) -> None:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("ReduceMean", ["fast"], ["gf"], axes=[2, 3, 4], keepdims=0),
        helper.make_node("ReduceMean", ["slow"], ["gs"], axes=[2, 3, 4], keepdims=0),
        helper.make_node("Concat", ["gf", "gs"], ["g6"], axis=1),  # (B, 6)
        helper.make_node("MatMul", ["g6", "wg"], ["global"]),  # (B, D)
        helper.make_node("Gather", ["boxes", "zero0"], ["bcol"], axis=1),  # (K,)
        helper.make_node("Cast", ["bcol"], ["bidx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["global", "bidx"], ["gp"], axis=0),  # (K, D)
        helper.make_node("Slice", ["boxes", "one1", "five1", "one1"], ["coords"]),  # (K, 4)
        helper.make_node("MatMul", ["coords", "wb"], ["pb"]),
        helper.make_node("Add", ["gp", "pb"], ["person"]),
    ]
    inits = [
        _const("zero0", np.array(0, np.int64)),
        _const("one1", np.array([1], np.int64)),
        _const("five1", np.array([5], np.int64)),
        _const("wg", rng.normal(size=(6, D)).astype(np.float32)),
        _const("wb", (rng.normal(size=(4, D)) * 0.01).astype(np.float32)),
    ]
    graph = helper.make_graph(
        nodes,
        "backbone",
        [
            helper.make_tensor_value_info("slow", TensorProto.FLOAT, ["B", 3, t_slow, "h", "w"]),
            helper.make_tensor_value_info("fast", TensorProto.FLOAT, ["B", 3, t_fast, "h", "w"]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["K", 5]),
        ],
        [
            helper.make_tensor_value_info("person", TensorProto.FLOAT, ["K", D]),
            helper.make_tensor_value_info("global", TensorProto.FLOAT, ["B", D]),
        ],
        inits,
    )
    _save(graph, path)


def head_graph(path: Path, slots: int | None = None) -> None:
    """``slots``: a fixed window size W, as a time-aware (slot-layout) head is exported."""
    rng = np.random.default_rng(2)
    c = len(CLASS_IDS)
    nodes = [
        helper.make_node("Unsqueeze", ["mask", "two1"], ["m3"]),  # (K, W, 1)
        helper.make_node("Mul", ["bank", "m3"], ["bm"]),
        helper.make_node("ReduceSum", ["bm", "one1"], ["bs"], keepdims=0),  # (K, D)
        helper.make_node("ReduceSum", ["mask", "one1"], ["cnt"], keepdims=1),  # (K, 1)
        helper.make_node("Add", ["cnt", "onef"], ["cnt1"]),
        helper.make_node("Div", ["bs", "cnt1"], ["ctx"]),
        helper.make_node("Add", ["person", "global_per_person"], ["x0"]),
        helper.make_node("Add", ["x0", "ctx"], ["x"]),
        helper.make_node("MatMul", ["x", "wh"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["action"]),
        helper.make_node("MatMul", ["global_per_person", "wh"], ["sl"]),
        helper.make_node("Sigmoid", ["sl"], ["scene"]),
    ]
    inits = [
        _const("one1", np.array([1], np.int64)),
        _const("two1", np.array([2], np.int64)),
        _const("onef", np.array(1.0, np.float32)),
        _const("wh", rng.normal(size=(D, c)).astype(np.float32)),
    ]
    # The bank's batch axis is its own symbol, as the export names it (KB).
    _save_head(nodes, inits, path, bank_axis="KB", slots=slots)


def _save_head(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    path: Path,
    *,
    bank_axis: str,
    slots: int | None = None,
) -> None:
    c = len(CLASS_IDS)
    w: str | int = "W" if slots is None else slots
    graph = helper.make_graph(
        nodes,
        "head",
        [
            helper.make_tensor_value_info("person", TensorProto.FLOAT, ["K", D]),
            helper.make_tensor_value_info("global_per_person", TensorProto.FLOAT, ["K", D]),
            helper.make_tensor_value_info("bank", TensorProto.FLOAT, [bank_axis, w, D]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [bank_axis, w]),
        ],
        [
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["K", c]),
            helper.make_tensor_value_info("scene", TensorProto.FLOAT, ["K", c]),
        ],
        inits,
    )
    _save(graph, path)


def concat_head_graph(path: Path) -> None:
    """A head that cannot take one shared window: it concatenates each person with its own
    bank rows (Concat needs equal batch sizes), like a head written per person would."""
    rng = np.random.default_rng(3)
    c = len(CLASS_IDS)
    nodes = [
        helper.make_node("Unsqueeze", ["person", "one1"], ["pu"]),  # (K, 1, D)
        helper.make_node("Unsqueeze", ["mask", "two1"], ["m3"]),  # (K, W, 1)
        helper.make_node("Mul", ["bank", "m3"], ["bm"]),
        helper.make_node("Concat", ["pu", "bm"], ["cat"], axis=1),  # (K, W + 1, D)
        helper.make_node("ReduceMean", ["cat"], ["x0"], axes=[1], keepdims=0),  # (K, D)
        helper.make_node("Add", ["x0", "global_per_person"], ["x"]),
        helper.make_node("MatMul", ["x", "wh"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["action"]),
        helper.make_node("MatMul", ["global_per_person", "wh"], ["sl"]),
        helper.make_node("Sigmoid", ["sl"], ["scene"]),
    ]
    inits = [
        _const("one1", np.array([1], np.int64)),
        _const("two1", np.array([2], np.int64)),
        _const("wh", rng.normal(size=(D, c)).astype(np.float32)),
    ]
    _save_head(nodes, inits, path, bank_axis="K")


def make_bundle(
    out: Path,
    *,
    short_side: int = 32,
    num_frames: int = 8,
    alpha: int = 4,
    sampling_rate: int = 2,
    bank: bool = True,
    window_seconds: int = 61,
    concat_head: bool = False,
    layout: str = "unordered",
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    detector_graph(out / "detector.onnx")
    backbone_graph(out / "backbone.onnx", num_frames // alpha, num_frames)
    if concat_head:
        concat_head_graph(out / "head.onnx")
    else:
        head_graph(out / "head.onnx", window_seconds * 5 if layout == "slots" else None)
    names = tuple(AVA_NAMES[i - 1] for i in CLASS_IDS)
    manifest = BundleManifest(
        model=ModelInfo(
            preset="test_tiny",
            class_ids=CLASS_IDS,
            class_names=names,
            pose_ids=POSE_IDS,
            evaluated_ids=CLASS_IDS,
        ),
        preprocessing=Preprocessing(
            short_side=short_side,
            mean=(0.45, 0.45, 0.45),
            std=(0.225, 0.225, 0.225),
            num_frames=num_frames,
            alpha=alpha,
            sampling_rate=sampling_rate,
            target_fps=30.0,
        ),
        detector=DetectorSpec(
            format="avaserve",
            input_height=DET_HW[0],
            input_width=DET_HW[1],
            resize="stretch",
            channel_order="RGB",
            pixel_scale=255.0,
            score_threshold=0.8,
            nms_score_threshold=0.1,
        ),
        bank=BankSpec(
            enabled=bank,
            window_seconds=window_seconds,
            persons_per_second=5,
            feature_dim=D if bank else 0,
            layout=layout,
            slot_origin_s=-((window_seconds - 1) // 2),
        ),
        graphs={
            "detector": describe_graph(out / "detector.onnx"),
            "backbone": describe_graph(out / "backbone.onnx"),
            "head": describe_graph(out / "head.onnx"),
        },
        provenance=Provenance(avaserve_version="test", checkpoint="hand-built test graphs"),
    )
    write_manifest(out, manifest)
    return out


def make_video(
    path: Path,
    *,
    seconds: float = 4.0,
    fps: int = 25,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
    codec: str = "mpeg4",
) -> Path:
    """A short video of smooth random colour blobs that move (so every frame differs)."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(int(seconds * fps)):
            ys = (np.arange(h)[:, None] / 8 + i * 0.05) % (base.shape[0] - 1)
            xs = (np.arange(w)[None, :] / 8 + i * 0.1) % (base.shape[1] - 1)
            img = base[ys.astype(int), xs.astype(int)]
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class SlowRuntime:
    """Wraps a runtime so each run takes at least ``delay`` seconds (a saturated detector or
    backbone)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.input_shapes = inner.input_shapes

    def run(self, inputs: Any) -> Any:
        time.sleep(self.delay)
        return self.inner.run(inputs)

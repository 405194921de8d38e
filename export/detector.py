"""``detector.onnx``: one output signature for every person detector the service runs.

Contract (also in core.manifest.DetectorSpec, which records the preprocessing)::

    images       (B, 3, H, W) float32   the detector's own preprocessing (YOLOX: BGR 0-255,
                                        letterboxed top-left with pad 114, no normalisation)
    boxes        (N, 4) float32         x1, y1, x2, y2 in detector-input (canvas) pixels
    scores       (N,)   float32         YOLOX: objectness * class probability
    class_ids    (N,)   int64           dataset class id (COCO person = 0)
    batch_index  (N,)   int64           image of the batch each row belongs to

Rows are what ONNX ``NonMaxSuppression`` selects, in its order: by image, then class, then
descending score. ``batch_index`` is part of the contract so that a detector exported with a
dynamic batch (the project's own, or a re-exported YOLOX) lets the service batch keyframes
across streams with no change; the bundled YOLOX-nano has a static batch of 1.

YOLOX: the public ONNX export ends at the head, ``output (B, A, 5 + C)`` with, per anchor,
``[x, y, log w, log h, objectness, class probs]`` over a grid of strides 8/16/32. We append
the decode as default-domain ONNX ops (no custom plugin, so ONNX Runtime and TensorRT's ONNX
parser both take it)::

    xy = (raw_xy + grid) * stride,  wh = exp(raw_wh) * stride,  score = obj * cls

The layout of a given file (already decoded? sigmoid already applied?) is probed by running
it, not assumed: `probe_yolox_layout`. `yolox_postprocess_numpy` (the numpy decoder of
core/yolox.py, then core.boxes.batched_nms) is the reference the tests hold the graph to.

The project's own detector (``format="avaserve"``, a torchvision-style detector from the
detector fine-tuning issue) is exported by its own code with the same input and output names;
`check_detector_signature` verifies any detector file against the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper, version_converter

from core.boxes import batched_nms
from core.defaults import DEFAULT_SCORE_THRESHOLD
from core.manifest import (
    DETECTOR_INPUT,
    DETECTOR_OUTPUTS,
    DetectorSpec,
    GraphSpec,
    describe_graph,
)
from core.yolox import (
    YOLOX_STRIDES,
    YoloxLayout,
    decode_yolox,
    layout_from_probes,
    probe_images,
    yolox_grid,
)
from models.onnx_utils import append_nms_outputs

__all__ = [
    "DetectorExportError",
    "build_yolox_detector",
    "check_detector_signature",
    "graph_domains",
    "probe_yolox_layout",
    "yolox_postprocess_numpy",
]

StrPath = str | PathLike[str]

DEFAULT_OPSET = 17


class DetectorExportError(ValueError):
    """A detector file that cannot become ``detector.onnx``; the message says why and what to do."""


# -- numpy reference -------------------------------------------------------------------------


def yolox_postprocess_numpy(
    raw: NDArray[np.float32], spec: DetectorSpec, layout: YoloxLayout | None = None
) -> dict[str, NDArray[np.generic]]:
    """The whole appended graph in numpy: the reference `build_yolox_detector` is tested against."""
    layout = layout or YoloxLayout(decoded=False, sigmoid_applied=True)
    boxes, scores = decode_yolox(raw, spec.input_size, layout, class_ids=spec.class_ids)
    scores_t = scores.transpose(0, 2, 1)  # (B, K, A)
    sel = batched_nms(
        boxes,
        scores_t,
        iou_threshold=spec.nms_iou,
        score_threshold=spec.nms_score_threshold,
        max_per_class=spec.max_detections,
    )
    b, k, a = sel[:, 0], sel[:, 1], sel[:, 2]
    return {
        "boxes": boxes[b, a].reshape(-1, 4),
        "scores": scores_t[b, k, a],
        "class_ids": np.asarray(spec.class_ids, dtype=np.int64)[k],
        "batch_index": b.astype(np.int64),
    }


# -- probing the source model ----------------------------------------------------------------


def probe_yolox_layout(model: onnx.ModelProto, input_hw: tuple[int, int]) -> YoloxLayout:
    """Run the model in ONNX Runtime on `core.yolox.probe_images` and read the layout off
    the numbers (`core.yolox.layout_from_probes`)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    probes = probe_images(*input_hw)
    return layout_from_probes(
        np.concatenate([sess.run(None, {name: x})[0] for x in probes], axis=1)
    )


# -- graph building --------------------------------------------------------------------------


def _const(name: str, value: NDArray[np.generic]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def _append_yolox_postprocess(
    model: onnx.ModelProto, spec: DetectorSpec, layout: YoloxLayout, num_anchors: int
) -> None:
    g = model.graph
    raw = g.output[0].name
    p = "avaserve_post_"  # prefix keeps our tensor names clear of the source graph's

    def n(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        g.node.append(helper.make_node(op, ins, [p + out], name=p + out, **attrs))
        return p + out

    grid, stride = yolox_grid(spec.input_size)
    if grid.shape[0] != num_anchors:
        raise DetectorExportError(
            f"the model has {num_anchors} anchors but strides {YOLOX_STRIDES} on "
            f"{spec.input_size} give {grid.shape[0]}; is this a YOLOX model of that input size?"
        )
    score_cols = np.asarray([5 + c for c in spec.class_ids], dtype=np.int64)
    g.initializer.extend(
        [
            _const(p + "grid", grid[None]),  # (1, A, 2)
            _const(p + "stride", stride[None]),  # (1, A, 1)
            _const(p + "half", np.array(0.5, np.float32)),
            _const(p + "s0", np.array([0], np.int64)),
            _const(p + "s2", np.array([2], np.int64)),
            _const(p + "s4", np.array([4], np.int64)),
            _const(p + "s5", np.array([5], np.int64)),
            _const(p + "ax2", np.array([2], np.int64)),
            _const(p + "score_cols", score_cols),
        ]
    )
    # (B, A, 5 + C) -> xy, wh (B, A, 2), obj (B, A, 1), cls (B, A, K)
    xy = n("Slice", [raw, p + "s0", p + "s2", p + "ax2"], "xy")
    wh = n("Slice", [raw, p + "s2", p + "s4", p + "ax2"], "wh")
    obj = n("Slice", [raw, p + "s4", p + "s5", p + "ax2"], "obj")
    cls = n("Gather", [raw, p + "score_cols"], "cls", axis=2)
    if layout.decoded:
        ctr, size = xy, wh
    else:
        ctr = n("Mul", [n("Add", [xy, p + "grid"], "xy_cell"), p + "stride"], "ctr")
        size = n("Mul", [n("Exp", [wh], "wh_exp"), p + "stride"], "size")
    if not layout.sigmoid_applied:
        obj, cls = n("Sigmoid", [obj], "obj_p"), n("Sigmoid", [cls], "cls_p")
    half = n("Mul", [size, p + "half"], "half_size")
    x1y1 = n("Sub", [ctr, half], "x1y1")
    x2y2 = n("Add", [ctr, half], "x2y2")
    boxes_all = n("Concat", [x1y1, x2y2], "boxes_all", axis=2)  # (B, A, 4) xyxy
    scores_all = n("Mul", [obj, cls], "scores_all")  # (B, A, K)
    scores_t = n("Transpose", [scores_all], "scores_t", perm=[0, 2, 1])  # (B, K, A)
    append_nms_outputs(model, boxes_all, scores_t, spec, prefix=p)


def build_yolox_detector(
    src: StrPath,
    dst: StrPath,
    *,
    class_ids: Sequence[int] = (0,),
    person_class_id: int = 0,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_score_threshold: float = 0.1,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    opset: int = DEFAULT_OPSET,
) -> tuple[DetectorSpec, GraphSpec]:
    """Turn a YOLOX ONNX model into ``detector.onnx`` (the contract above) at ``dst``.

    Returns the manifest's detector record and the graph record (hash and I/O read back
    from the written file through ONNX Runtime).
    """
    model = onnx.load(str(src))
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise DetectorExportError(
            f"{src}: expected one input and one output (a YOLOX head export), got "
            f"{len(model.graph.input)} inputs and {len(model.graph.output)} outputs"
        )
    in_dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    if len(in_dims) != 4 or in_dims[1] != 3 or not in_dims[2] or not in_dims[3]:
        raise DetectorExportError(
            f"{src}: input shape {in_dims} is not (B, 3, H, W) with fixed H, W; re-export the "
            f"YOLOX model with a fixed input size"
        )
    if len(out_dims) != 3 or out_dims[2] < 6:
        raise DetectorExportError(
            f"{src}: output shape {out_dims} is not (B, anchors, 5 + classes)"
        )
    num_classes = out_dims[2] - 5
    bad = [c for c in class_ids if not 0 <= c < num_classes]
    if bad:
        raise DetectorExportError(f"class_ids {bad} are outside the model's {num_classes} classes")
    # The input keeps the source's own name only if it already is the contract's.
    if model.graph.input[0].name != DETECTOR_INPUT:
        raise DetectorExportError(
            f"{src}: input is named {model.graph.input[0].name!r}, the contract needs "
            f"{DETECTOR_INPUT!r}"
        )
    spec = DetectorSpec(
        format="yolox",
        file=Path(dst).name,
        input_height=in_dims[2],
        input_width=in_dims[3],
        resize="letterbox",
        letterbox_anchor="top_left",
        pad_value=114.0,
        channel_order="BGR",
        pixel_scale=1.0,
        score_threshold=score_threshold,
        nms_score_threshold=nms_score_threshold,
        nms_iou=nms_iou,
        max_detections=max_detections,
        person_class_id=person_class_id,
        class_ids=tuple(class_ids),
    )
    layout = probe_yolox_layout(model, spec.input_size)
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current < opset:
        # NonMaxSuppression/GatherND exist since 10/11, but the bundle promises opset >= 17
        # everywhere; the converter also rewrites ops whose signature changed (Resize, Slice).
        model = version_converter.convert_version(model, opset)
    _append_yolox_postprocess(model, spec, layout, out_dims[1])
    model.producer_name = "avaserve.export.detector"
    # The IR version opset 17 needs; a newer default IR would lock out older ONNX Runtimes.
    model.ir_version = max(model.ir_version, 8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    graph = describe_graph(dst, opset=max(current, opset))
    return spec, graph


# -- checks ----------------------------------------------------------------------------------


def graph_domains(path_or_model: StrPath | onnx.ModelProto) -> dict[str, set[str]]:
    """Operator types per domain ('' = default ONNX domain), subgraphs included."""
    model = (
        path_or_model
        if isinstance(path_or_model, onnx.ModelProto)
        else onnx.load(str(path_or_model))
    )
    found: dict[str, set[str]] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.setdefault(node.domain or "", set()).add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def check_detector_signature(path: StrPath) -> GraphSpec:
    """Verify a detector file follows the contract (names, dtypes, ranks); return its record."""
    graph = describe_graph(path)
    expect = {
        "boxes": ("float32", 2),
        "scores": ("float32", 1),
        "class_ids": ("int64", 1),
        "batch_index": ("int64", 1),
    }
    ins = [(t.name, t.dtype, t.rank) for t in graph.inputs]
    if ins != [(DETECTOR_INPUT, "float32", 4)]:
        raise DetectorExportError(
            f"{path}: inputs {ins}; the contract is one float32 (B, 3, H, W) input "
            f"named {DETECTOR_INPUT!r}"
        )
    outs = {t.name: (t.dtype, t.rank) for t in graph.outputs}
    if outs != expect:
        raise DetectorExportError(
            f"{path}: outputs {outs}; the contract is {expect} (names {list(DETECTOR_OUTPUTS)})"
        )
    return graph

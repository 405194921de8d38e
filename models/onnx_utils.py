"""ONNX export helper shared by the tests and the export tool.

Exporter choice (torch 2.13). ``torch.onnx.export`` defaults to ``dynamo=True``, the
torch.export-based exporter. We use the TorchScript exporter (``dynamo=False``) with
``dynamic_axes`` because, measured here on the RoI head and the full models:

* both exporters produce graphs that ONNX Runtime runs with K = 0, 1, 3 boxes and any
  batch, with the same default-domain ops;
* the dynamo exporter needs ``onnxscript`` (not a dependency of this project; it is not
  in the environment) and took ~4 s for the RoI head alone versus ~0.2 s, and it
  specialises sizes 0/1 of the example inputs, so the example must avoid them;
* the TorchScript exporter is deprecated but still shipped in torch 2.13.

``export_onnx(..., dynamo=True)`` exists for when the TorchScript exporter is removed: it
maps the same named dynamic axes to ``torch.export.Dim`` objects (needs onnxscript).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.manifest import DetectorSpec
from models.action_model import ActionModel

if TYPE_CHECKING:
    import onnx

DEFAULT_OPSET = 17


def export_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> Path:
    """Export ``module(*args)`` (in eval mode) to ``path`` and return the path.

    Args:
        module: the module; its ``forward`` takes ``args`` positionally and returns a
            tensor or a tuple of tensors.
        args: example inputs. With ``dynamo=True`` avoid sizes 0 and 1 on dynamic axes.
        input_names, output_names: graph input/output names, in order.
        dynamic_axes: ``{name: {axis: symbol}}`` for inputs and outputs, e.g.
            ``{"boxes": {0: "K"}, "person": {0: "K"}}``; axes sharing a symbol are one
            dimension.
        opset: ONNX opset (>= 17: LayerNormalization is a single op from 17 on).
        dynamo: use the torch.export-based exporter instead (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Restore every submodule's own mode afterwards: a wrapper built in train mode around an
    # eval-mode model must not flip the model to train mode.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with warnings.catch_warnings():
            # TracerWarnings about shape checks and the exporter's own deprecation notice.
            warnings.simplefilter("ignore")
            if dynamo:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    opset_version=opset,
                    dynamo=True,
                    dynamic_shapes=_dynamic_shapes(input_names, dynamic_axes or {}),
                )
            else:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()},
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
    finally:
        for m, training in modes:
            m.training = training
    return path


def _dynamic_shapes(
    input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]]
) -> tuple[dict[int, object] | None, ...]:
    dims: dict[str, object] = {}
    shapes: list[dict[int, object] | None] = []
    for name in input_names:
        axes = dynamic_axes.get(name)
        if not axes:
            shapes.append(None)
            continue
        shapes.append(
            {axis: dims.setdefault(sym, torch.export.Dim(sym, min=0)) for axis, sym in axes.items()}
        )
    return tuple(shapes)


def onnx_ops(path: str | Path) -> set[tuple[str, str]]:
    """(domain, op_type) of every node in the graph, subgraphs and functions included.

    The default ONNX domain is reported as ``""`` ("ai.onnx" is normalised to it).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: set[tuple[str, str]] = set()

    def visit(nodes: Sequence[onnx.NodeProto]) -> None:
        for node in nodes:
            found.add(("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node)
                for g in attr.graphs:
                    visit(g.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return found


def append_nms_outputs(
    model: onnx.ModelProto, boxes: str, scores: str, spec: DetectorSpec, *, prefix: str
) -> None:
    """End a detector graph with ONNX ``NonMaxSuppression`` and the detector contract's outputs.

    ``boxes (B, A, 4)`` xyxy and ``scores (B, K, A)`` (tensors of ``model``'s graph) ->
    ``boxes (N, 4)``, ``scores (N,)``, ``class_ids (N,)`` (``spec.class_ids`` indexed by the
    class column) and ``batch_index (N,)``, which replace the graph's outputs. NMS takes the
    spec's ``max_detections`` per class, ``nms_iou`` and ``nms_score_threshold``
    (``center_point_box=0``; `core.boxes.batched_nms` is its numpy twin). ``prefix`` keeps the
    new tensor names clear of the source graph's. Used by the YOLOX export
    (export/detector.py) and the project's own detector (training/detector/export.py).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph

    def const(name: str, value: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(value, name=prefix + name))
        return prefix + name

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        g.node.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    max_out = const("max_out", np.array([spec.max_detections], np.int64))
    iou = const("iou", np.array([spec.nms_iou], np.float32))
    score_thr = const("score_thr", np.array([spec.nms_score_threshold], np.float32))
    class_table = const("class_table", np.asarray(spec.class_ids, np.int64))
    cols_ba = const("cols_ba", np.array([0, 2], np.int64))
    col_b = const("col_b", np.array(0, np.int64))
    col_k = const("col_k", np.array(1, np.int64))
    sel = node(
        "NonMaxSuppression",
        [boxes, scores, max_out, iou, score_thr],
        prefix + "selected",
        center_point_box=0,
    )  # (N, 3) int64: batch, class, index
    ba = node("Gather", [sel, cols_ba], prefix + "sel_ba", axis=1)  # (N, 2)
    node("GatherND", [boxes, ba], "boxes")  # (N, 4)
    node("GatherND", [scores, sel], "scores")  # (N,)
    k = node("Gather", [sel, col_k], prefix + "sel_k", axis=1)  # (N,)
    node("Gather", [class_table, k], "class_ids", axis=0)
    node("Gather", [sel, col_b], "batch_index", axis=1)
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("class_ids", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["N"]),
        ]
    )


# Graph signatures of the two halves of an ActionModel (issue 5: backbone.onnx, head.onnx).
FEATURES_INPUTS = ("slow", "fast", "boxes")
FEATURES_OUTPUTS = ("person", "global")
FEATURES_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "slow": {0: "B"},
    "fast": {0: "B"},
    "boxes": {0: "K"},
    "person": {0: "K"},
    "global": {0: "B"},
}
HEAD_INPUTS = ("person", "global_per_person", "bank", "mask")
# The bank's batch axis has its own symbol: every person of a keyframe reads the same window,
# so the service may pass it once (KB = 1) for K persons when the head broadcasts (the LFB
# head does; the engine checks at load). A shared "K" would tell ONNX Runtime's memory
# planner that the two are equal.
HEAD_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "person": {0: "K"},
    "global_per_person": {0: "K"},
    "bank": {0: "KB", 1: "W"},
    "mask": {0: "KB", 1: "W"},
    "action": {0: "K"},
    "scene": {0: "K"},
}


class FeaturesGraph(nn.Module):
    """``ActionModel.features`` as a module: (slow, fast, boxes) -> (person, global)."""

    def __init__(self, model: ActionModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, slow: torch.Tensor, fast: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.features(slow, fast, boxes)


class HeadGraph(nn.Module):
    """``ActionModel.head`` as a module: (person, global_per_person, bank, mask) ->
    action (K, C) [, scene (K, C) with the global branch]; logits, or probabilities (the
    model's ``output_activation``) with ``probabilities=True``. ``output_names`` lists the
    outputs.
    """

    def __init__(self, model: ActionModel, *, probabilities: bool = False) -> None:
        super().__init__()
        self.model = model
        self.probabilities = probabilities

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("action", "scene") if self.model.use_global else ("action",)

    def forward(
        self,
        person: torch.Tensor,
        global_per_person: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        action, scene = self.model.head(person, global_per_person, bank, mask)
        if self.probabilities:
            action = self.model.probabilities(action)
            scene = torch.sigmoid(scene) if scene is not None else None
        return (action,) if scene is None else (action, scene)

"""Export a trained person detector to ``detector.onnx`` with the uniform signature.

Contract (export/detector.py, core.manifest.DetectorSpec)::

    images       (B, 3, H, W) float32   RGB, letterboxed top-left (pad 114), /255, mean/std
    boxes        (N, 4) float32         x1, y1, x2, y2 in input (canvas) pixels
    scores       (N,)   float32         person confidence (heatmap peak)
    class_ids    (N,)   int64           0 (person; the only class)
    batch_index  (N,)   int64           image of the batch

How NMS gets into the graph: the network and its decode (sigmoid, 3x3 max-pool peaks,
top-K, box assembly) are exported from PyTorch by the TorchScript exporter
(`models.onnx_utils.export_onnx`) as a graph ending in ``cand_boxes (B, K, 4)`` and
``cand_scores (B, 1, K)``; then ONNX ``NonMaxSuppression`` and the gathers that produce
the contract's outputs are appended with ``onnx.helper`` -- the same way export/detector.py
finishes YOLOX. Appending keeps the PyTorch side free of export-only tricks (a custom
symbolic would tie the model to the TorchScript exporter, which is deprecated, and the
dynamo exporter needs onnxscript), and every op is in the default domain, so ONNX
Runtime and TensorRT's parser both take the file. In eager PyTorch the same step is
`core.boxes.nms` (numpy), written to ONNX NMS semantics.

Parity gate: before writing, ONNX Runtime runs the candidate graph and the final graph on
real frames (or random ones when none are given) and compares them with PyTorch: the
candidates (boxes, scores) must agree within ``tolerance`` (1e-4; boxes, in pixels, within
``tolerance`` times the input size), and the post-NMS outputs must select the same rows
with the same values. Export refuses to write a file
that fails and says which output diverged by how much.

The `DetectorSpec` is stored in the file's metadata (``avaserve.detector_spec``), so
``avaserve eval-detector --onnx`` can preprocess for a file without a bundle.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import helper
from torch import nn

from core.detector_io import SPEC_METADATA_KEY
from core.manifest import DETECTOR_INPUT, DetectorSpec, GraphSpec, describe_graph
from models.onnx_utils import append_nms_outputs
from training.detector.model import PersonDetectorNet, decode, detect, detector_spec

__all__ = [
    "DetectorExport",
    "DetectorParityError",
    "SPEC_METADATA_KEY",
    "CandidateGraph",
    "export_detector_onnx",
    "read_spec",
]

StrPath = str | PathLike[str]
DEFAULT_OPSET = 17
CANDIDATE_OUTPUTS = ("cand_boxes", "cand_scores")


class DetectorParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree; the message names the output and the difference."""


@dataclass(frozen=True)
class DetectorExport:
    """What `export_detector_onnx` wrote: the manifest records and the parity figures.

    ``parity``: max abs difference ONNX Runtime vs PyTorch per output, over all frames;
    ``cand_*`` before NMS, the rest after NMS (same rows selected).
    """

    spec: DetectorSpec
    graph: GraphSpec
    parity: dict[str, float]
    num_frames: int
    num_detections: int


class CandidateGraph(nn.Module):
    """images (B, 3, H, W) -> cand_boxes (B, K, 4) input px, cand_scores (B, 1, K).

    ``cand_scores`` has the class axis ONNX NonMaxSuppression wants (B, classes, boxes).
    """

    def __init__(self, model: PersonDetectorNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.model.config
        heat, ltrb = self.model(images)
        boxes, scores = decode(
            heat, ltrb, stride=c.stride, k=c.max_candidates, peak_filter=c.peak_filter
        )
        return boxes, scores.unsqueeze(1)


def read_spec(path: StrPath) -> DetectorSpec:
    """The `DetectorSpec` stored in a ``detector.onnx`` written by `export_detector_onnx`."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == SPEC_METADATA_KEY:
            return DetectorSpec.model_validate_json(prop.value)
    raise ValueError(
        f"{path}: no {SPEC_METADATA_KEY!r} metadata (not written by avaserve's detector "
        "export); pass the bundle's manifest detector record instead"
    )


def _session(model_bytes: bytes) -> object:
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _matched_diff(
    boxes_a: npt.NDArray[np.float32],
    scores_a: npt.NDArray[np.float32],
    boxes_b: npt.NDArray[np.float32],
    scores_b: npt.NDArray[np.float32],
) -> tuple[float, float]:
    """Max abs (box, score) difference between two equally long row sets, rows paired
    greedily by nearest (box, score). Pairing instead of comparing row by row: rows with
    equal scores (a saturated sigmoid gives several 1.0) may come out of TopK and NMS in
    either order, and that order carries no meaning."""
    if boxes_a.shape[0] == 0:
        return 0.0, 0.0
    cost = np.maximum(
        np.abs(boxes_a[:, None, :] - boxes_b[None, :, :]).max(axis=2),
        np.abs(scores_a[:, None] - scores_b[None, :]),
    )  # (N, N)
    used = np.zeros(boxes_b.shape[0], dtype=bool)
    worst_box = worst_score = 0.0
    for i in np.argsort(cost.min(axis=1), kind="stable"):
        j = int(np.argmin(np.where(used, np.inf, cost[i])))
        used[j] = True
        worst_box = max(worst_box, float(np.abs(boxes_a[i] - boxes_b[j]).max()))
        worst_score = max(worst_score, float(abs(scores_a[i] - scores_b[j])))
    return worst_box, worst_score


def _parity(
    candidates: onnx.ModelProto,
    final: onnx.ModelProto,
    model: PersonDetectorNet,
    inputs: Sequence[npt.NDArray[np.float32]],
    tolerance: float,
    spec: DetectorSpec,
) -> tuple[dict[str, float], int]:
    cand_sess = _session(candidates.SerializeToString())
    final_sess = _session(final.SerializeToString())
    graph = CandidateGraph(model).eval()
    worst = {"cand_boxes": 0.0, "cand_scores": 0.0, "boxes": 0.0, "scores": 0.0}
    count = 0
    for i, x in enumerate(inputs):
        with torch.no_grad():
            ref_b, ref_s = (t.numpy() for t in graph(torch.from_numpy(x)))
        ort_b, ort_s = cand_sess.run(list(CANDIDATE_OUTPUTS), {DETECTOR_INPUT: x})  # type: ignore[attr-defined]
        for b in range(x.shape[0]):
            # Zero-score candidates (non-peaks that filled the top-K) tie and come in any
            # order; NMS never keeps them (score > threshold >= 0), so they are not compared.
            keep_ref, keep_ort = ref_s[b, 0] > 0, ort_s[b, 0] > 0
            if keep_ref.sum() != keep_ort.sum():
                raise DetectorParityError(
                    f"frame {i}: {int(keep_ort.sum())} candidate peaks in ONNX Runtime, "
                    f"{int(keep_ref.sum())} in PyTorch"
                )
            db, ds = _matched_diff(
                ort_b[b][keep_ort], ort_s[b, 0][keep_ort], ref_b[b][keep_ref], ref_s[b, 0][keep_ref]
            )
            worst["cand_boxes"] = max(worst["cand_boxes"], db)
            worst["cand_scores"] = max(worst["cand_scores"], ds)
        ref = detect(model, torch.from_numpy(x), score_threshold=spec.nms_score_threshold)
        boxes, scores, class_ids, batch_index = final_sess.run(  # type: ignore[attr-defined]
            ["boxes", "scores", "class_ids", "batch_index"], {DETECTOR_INPUT: x}
        )
        if boxes.shape[0] != len(ref) or not np.array_equal(batch_index, ref.batch_index.numpy()):
            raise DetectorParityError(
                f"frame {i}: ONNX Runtime kept {boxes.shape[0]} boxes after NMS, PyTorch "
                f"{len(ref)} (scores ORT {np.round(scores, 5).tolist()} vs PyTorch "
                f"{np.round(ref.scores.numpy(), 5).tolist()})"
            )
        if not np.array_equal(class_ids, ref.class_ids.numpy()):
            raise DetectorParityError(f"frame {i}: class_ids differ after NMS")
        for b in range(x.shape[0]):
            sel = batch_index == b
            db, ds = _matched_diff(
                boxes[sel], scores[sel], ref.boxes.numpy()[sel], ref.scores.numpy()[sel]
            )
            worst["boxes"] = max(worst["boxes"], db)
            worst["scores"] = max(worst["scores"], ds)
        count += len(ref)
    # Boxes are pixels up to max(H, W): float32 spacing there is ~3e-5, so two runtimes that
    # round exp() differently by a few ulps can differ by ~1e-4 px. Boxes are therefore held
    # to ``tolerance`` relative to the input size; scores (in [0, 1]) to ``tolerance``.
    box_scale = float(max(model.config.input_hw))
    for name, diff in worst.items():
        limit = tolerance * box_scale if "boxes" in name else tolerance
        if not diff <= limit:
            raise DetectorParityError(
                f"output {name!r}: ONNX Runtime vs PyTorch max abs difference {diff:.3g} > "
                f"{limit:.3g} (tolerance {tolerance:g}"
                + (f" x input size {box_scale:g} px" if "boxes" in name else "")
                + "); the file was not written"
            )
    return worst, count


def export_detector_onnx(
    checkpoint: StrPath | PersonDetectorNet,
    path: StrPath,
    *,
    frames: Sequence[npt.NDArray[np.uint8]] | None = None,
    score_threshold: float | None = None,
    tolerance: float = 1e-4,
    opset: int = DEFAULT_OPSET,
) -> DetectorExport:
    """Write ``detector.onnx`` for a checkpoint (or a model) after the parity gate.

    ``frames``: RGB ``(h, w, 3)`` uint8 frames for the parity check, preprocessed with
    `core.detector_io.preprocess` (the service's path); ``None`` uses 4 random images.
    ``score_threshold`` is the service's keep threshold recorded in the spec; ``None`` takes
    the best-F1 threshold of the val sweep `train_detector` stored in the checkpoint
    (0.5 when there is none). Override it with the action model's detector-threshold
    sweep when that is known. The batch axis is dynamic.
    """
    from core.detector_io import preprocess
    from models.onnx_utils import export_onnx
    from training.detector.checkpoint import detector_checkpoint_metrics, load_detector_checkpoint

    if isinstance(checkpoint, PersonDetectorNet):
        model, stored = checkpoint.eval(), None
    else:
        model = load_detector_checkpoint(checkpoint)
        stored = detector_checkpoint_metrics(checkpoint).get("score_threshold")
    if score_threshold is None:
        score_threshold = float(stored) if stored is not None else 0.5
    spec = detector_spec(model.config, score_threshold=score_threshold, file=Path(path).name)
    h, w = model.config.input_hw
    if frames:
        inputs = [preprocess(np.asarray(f, np.uint8), spec)[0] for f in frames]
    else:
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((1, 3, h, w)).astype(np.float32) for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        cand_path = Path(tmp) / "candidates.onnx"
        export_onnx(
            CandidateGraph(model),
            (torch.from_numpy(inputs[0]),),
            cand_path,
            input_names=[DETECTOR_INPUT],
            output_names=list(CANDIDATE_OUTPUTS),
            dynamic_axes={
                DETECTOR_INPUT: {0: "B"},
                "cand_boxes": {0: "B"},
                "cand_scores": {0: "B"},
            },
            opset=opset,
        )
        candidates = onnx.load(str(cand_path))
    final = onnx.ModelProto()
    final.CopyFrom(candidates)
    append_nms_outputs(final, *CANDIDATE_OUTPUTS, spec, prefix="avaserve_nms_")
    final.producer_name = "avaserve.training.detector"
    helper.set_model_props(final, {SPEC_METADATA_KEY: spec.model_dump_json()})
    onnx.checker.check_model(final, full_check=True)
    parity, count = _parity(candidates, final, model, inputs, tolerance, spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(final, str(path))
    graph = describe_graph(path, opset=opset)
    return DetectorExport(
        spec=spec, graph=graph, parity=parity, num_frames=len(inputs), num_detections=count
    )

"""Keyframe person detection through the bundle's ``detector.onnx`` (both formats) or a user's own.

Graph contract (core.manifest.DetectorSpec; both ``avaserve`` and ``yolox`` formats)::

    images (B, 3, H, W) float32 -> boxes (N, 4) canvas pixels, scores (N,), class_ids (N,),
                                   batch_index (N,)        after NMS

The spec says how to letterbox/normalise a frame (core.detector_io) and which class is a
person. `PersonDetector.detect(frames)` returns one `Detections` per frame in **frame
pixels**, persons only, down to the graph's low NMS floor: the tracker uses the low tier to
continue tracks, and the pipeline keeps only persons at or above ``score_threshold`` (the
manifest's; core.defaults.DEFAULT_SCORE_THRESHOLD by default) for the action model, so served
boxes are the evaluated box source.

``--detector PATH`` (a user's own detector) accepts two kinds of ONNX file, told apart by their
signature, because the service may not import ``export`` (which needs the ``onnx`` package)
to rebuild a graph:

* a graph already in the contract above (e.g. made by ``avaserve export``), with its
  `DetectorSpec` in ``PATH.json`` if present (otherwise YOLOX preprocessing is assumed);
* a raw YOLOX export (``images (1, 3, H, W) -> output (B, A, 5 + C)``, the public YOLOX ONNX
  files): the grid decode (core/yolox.py), person scores (objectness x class) and NMS
  (core/boxes.py) run in numpy here.
  Only the person column is decoded and suppressed, which is cheap (a few thousand anchors).
  Whether the file already decodes boxes or applies sigmoids is read off two probe runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.boxes import nms
from core.defaults import DEFAULT_SCORE_THRESHOLD
from core.detector_io import LetterboxTransform, preprocess, unletterbox_boxes
from core.manifest import DETECTOR_INPUT, DETECTOR_OUTPUTS, BundleError, DetectorSpec
from core.yolox import YoloxLayout, decode_yolox, layout_from_probes, probe_images
from service.runtime import OnnxRuntime, Runtime, RuntimeLoadError
from service.types import Detections

__all__ = ["PersonDetector", "RawYolox", "load_user_detector"]

StrPath = str | PathLike[str]


@dataclass(frozen=True)
class RawYolox:
    """How to decode a raw YOLOX head output ``(B, A, 5 + C)`` (read off probe runs)."""

    output: str
    layout: YoloxLayout

    def rows(
        self, raw: np.ndarray, spec: DetectorSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> boxes (N, 4) canvas px, scores (N,), class_ids (N,), batch_index (N,)."""
        boxes, person = decode_yolox(
            raw, spec.input_size, self.layout, class_ids=(spec.person_class_id,)
        )  # (B, A, 4), (B, A, 1)
        scores = person[..., 0]  # (B, A)
        out_b, out_s, out_bi = [], [], []
        for b in range(boxes.shape[0]):
            keep = nms(
                boxes[b],
                scores[b],
                iou_threshold=spec.nms_iou,
                score_threshold=spec.nms_score_threshold,
                max_keep=spec.max_detections,
            )
            out_b.append(boxes[b, keep])
            out_s.append(scores[b, keep])
            out_bi.append(np.full(keep.size, b, np.int64))
        n = sum(len(s) for s in out_s)
        return (
            np.concatenate(out_b).reshape(n, 4),
            np.concatenate(out_s).reshape(n),
            np.full(n, spec.person_class_id, np.int64),
            np.concatenate(out_bi).reshape(n),
        )


class PersonDetector:
    """Runs a detector graph on keyframes; persons in frame pixels, one `Detections` per frame.

    score_threshold: persons kept for the action model (``manifest.detector.score_threshold``
        unless overridden); `detect` itself returns everything down to the graph's low floor.
    """

    def __init__(
        self,
        runtime: Runtime,
        spec: DetectorSpec,
        *,
        score_threshold: float | None = None,
        raw_yolox: RawYolox | None = None,
    ) -> None:
        self.runtime = runtime
        self.spec = spec
        self.score_threshold = float(
            spec.score_threshold if score_threshold is None else score_threshold
        )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        self.raw_yolox = raw_yolox
        self.input_name = runtime.input_names[0]
        batch = runtime.input_shapes.get(self.input_name, (None,))[0]
        # YOLOX's public exports have a static batch of 1: run those one image at a time.
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None

    @property
    def low_threshold(self) -> float:
        """Lowest score `detect` returns (the graph's NMS floor, at most score_threshold)."""
        return min(self.spec.nms_score_threshold, self.score_threshold)

    def prepare(self, frame: npt.NDArray[np.uint8]) -> tuple[np.ndarray, LetterboxTransform]:
        """RGB (h, w, 3) uint8 -> images (1, 3, H, W) and the frame -> canvas transform."""
        return preprocess(frame, self.spec)

    def detect_prepared(
        self, images: Sequence[np.ndarray], transforms: Sequence[LetterboxTransform]
    ) -> list[Detections]:
        """Batched run over prepared images (each (1, 3, H, W)); one `Detections` per image."""
        if not images:
            return []
        step = self.max_batch or len(images)
        out: list[Detections] = []
        for start in range(0, len(images), step):
            chunk = np.concatenate(images[start : start + step])  # (B, 3, H, W)
            boxes, scores, class_ids, batch_index = self._rows(chunk)
            for b in range(chunk.shape[0]):
                t = transforms[start + b]
                sel = (
                    (batch_index == b)
                    & (class_ids == self.spec.person_class_id)
                    & (scores >= self.low_threshold)
                )
                px = unletterbox_boxes(boxes[sel], t)
                # Boxes that clip to nothing (entirely in the padding) are not persons.
                ok = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
                out.append(Detections(px[ok], scores[sel][ok], class_ids[sel][ok]))
        return out

    def detect(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        prepared = [self.prepare(f) for f in frames]
        return self.detect_prepared([p[0] for p in prepared], [p[1] for p in prepared])

    def _rows(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        outs = self.runtime.run({self.input_name: images})
        if self.raw_yolox is not None:
            return self.raw_yolox.rows(outs[self.raw_yolox.output], self.spec)
        return (
            np.asarray(outs["boxes"], np.float32).reshape(-1, 4),
            np.asarray(outs["scores"], np.float32).reshape(-1),
            np.asarray(outs["class_ids"], np.int64).reshape(-1),
            np.asarray(outs["batch_index"], np.int64).reshape(-1),
        )


def _yolox_spec(h: int, w: int, file: str, score_threshold: float) -> DetectorSpec:
    # YOLOX's own preprocessing (its demo/ONNX exports): BGR, 0-255, top-left letterbox, pad 114.
    return DetectorSpec(
        format="yolox",
        file=file,
        input_height=h,
        input_width=w,
        channel_order="BGR",
        score_threshold=score_threshold,
        nms_score_threshold=min(0.1, score_threshold),
    )


def load_user_detector(
    path: StrPath,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
) -> PersonDetector:
    """``--detector PATH``: a contract graph (+ optional ``PATH.json`` spec) or a raw YOLOX file."""
    p = Path(path)
    if not p.is_file():
        raise BundleError(p.name, None, f"--detector {p}: file not found")
    runtime = OnnxRuntime(p, providers=providers, intra_op_threads=intra_op_threads)
    ins, outs = runtime.input_names, runtime.output_names
    shape = runtime.input_shapes[ins[0]] if ins else ()
    hw = shape[2:4] if len(shape) == 4 else ()
    if list(ins) == [DETECTOR_INPUT] and sorted(outs) == sorted(DETECTOR_OUTPUTS):
        spec_path = p.with_suffix(".json")
        if spec_path.is_file():
            raw = json.loads(spec_path.read_text(encoding="utf-8"))
            spec = DetectorSpec.model_validate({**raw, "score_threshold": score_threshold})
        elif len(hw) == 2 and all(isinstance(d, int) for d in hw):
            spec = _yolox_spec(int(hw[0]), int(hw[1]), p.name, score_threshold)  # type: ignore[arg-type]
        else:
            raise BundleError(
                p.name,
                None,
                f"--detector {p}: dynamic input size and no {spec_path.name} with its "
                "DetectorSpec; write one (see core/manifest.py DetectorSpec)",
            )
        return PersonDetector(runtime, spec, score_threshold=score_threshold)
    if len(ins) == 1 and len(outs) == 1 and len(hw) == 2 and all(isinstance(d, int) for d in hw):
        h, w = int(hw[0]), int(hw[1])  # type: ignore[arg-type]
        spec = _yolox_spec(h, w, p.name, score_threshold)
        layout = _probe_yolox(runtime, h, w)
        return PersonDetector(runtime, spec, score_threshold=score_threshold, raw_yolox=layout)
    raise RuntimeLoadError(
        f"--detector {p}: not a detector this service can run: inputs {list(ins)}, outputs "
        f"{list(outs)}. Give a YOLOX ONNX export (one (1,3,H,W) input, one (B,A,5+C) output) "
        f"or a graph with inputs [{DETECTOR_INPUT!r}] and outputs {list(DETECTOR_OUTPUTS)}"
    )


def _probe_yolox(runtime: Runtime, h: int, w: int) -> RawYolox:
    name, out = runtime.input_names[0], runtime.output_names[0]
    res = np.concatenate([runtime.run({name: x})[out] for x in probe_images(h, w)], axis=1)
    try:
        return RawYolox(output=out, layout=layout_from_probes(res))
    except ValueError as exc:
        raise RuntimeLoadError(str(exc)) from None

"""The model bundle's ``manifest.json``: schema, reader/writer and `validate_bundle` (torch-free).

A bundle is a directory::

    BUNDLE/
      manifest.json        this schema (`BundleManifest`)
      detector.onnx        images (B,3,H,W) -> boxes/scores/class_ids/batch_index after NMS
      backbone.onnx        (slow, fast, boxes (K,5)) -> (person (K,D), global (B,D))
      head.onnx            (person, global per person, bank (K,W,D'), mask (K,W)) -> probabilities
      bank_backbone.onnx   only when the bank is fed by a separate stage-1 model
      *.plan               optional TensorRT engines (device specific)

The manifest is the single source of every number the runtime needs (DESIGN.md: "a number
the service had to guess is a bug"). The service imports this module on a PyTorch-free
install, so it imports only pydantic, numpy and the standard library; ONNX Runtime is
imported inside `validate_bundle`/`describe_graph` (a service dependency, but not needed
to *read* a manifest). It never imports the ``onnx`` package: the service does not ship it.

Every validation error names the field, the value and the fix. `load_manifest` turns
pydantic's errors into one `BundleError(file, field, message)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.ava import LabelMap
from core.defaults import DEFAULT_SCORE_THRESHOLD
from core.sampling import Alignment, ClipSpec

__all__ = [
    "DETECTOR_INPUT",
    "DETECTOR_OUTPUTS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "BankSpec",
    "BundleCheck",
    "BundleError",
    "BundleManifest",
    "DetectorSpec",
    "EngineSpec",
    "GraphSpec",
    "ModelInfo",
    "ParityRecord",
    "Preprocessing",
    "Provenance",
    "QuantizationDrift",
    "QuantizationSpec",
    "RuntimeHints",
    "ShapeRange",
    "TensorRTEPOptions",
    "TensorSpec",
    "describe_graph",
    "load_manifest",
    "sha256_file",
    "tensorrt_ep_options",
    "validate_bundle",
    "write_manifest",
]

StrPath = str | PathLike[str]

MANIFEST_NAME = "manifest.json"
# Bump when a reader of the previous version would misread a new manifest. A reader refuses
# manifests newer than it knows (it cannot know what the new fields mean) with a clear error.
SCHEMA_VERSION = 1

# The graph roles the service knows. Other roles are allowed (they are carried and
# hash-checked) so that a newer export can add a graph without breaking older readers.
REQUIRED_GRAPHS = ("backbone", "head")

# The detector graph's uniform signature (both formats; see DetectorSpec and export/detector.py).
DETECTOR_INPUT = "images"
DETECTOR_OUTPUTS = ("boxes", "scores", "class_ids", "batch_index")

DType = Literal["float32", "float16", "int64", "int32", "uint8", "bool"]
# ONNX Runtime's type strings (NodeArg.type) for the dtypes above.
_ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class BundleError(ValueError):
    """A bundle the runtime must refuse: missing or corrupt file, or a manifest that is wrong.

    ``file`` is the bundle-relative file name (e.g. ``head.onnx`` or ``manifest.json``) and
    ``field`` the manifest field (dotted path, e.g. ``graphs.head.outputs``) the problem is
    about; either may be ``None`` when it does not apply.
    """

    def __init__(self, file: str | None, field: str | None, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        where = file if file is not None else "<bundle>"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


class _Strict(BaseModel):
    # extra="forbid": a misspelt key in a hand-edited manifest is an error, not a silently
    # ignored setting. frozen: one validated record crosses the boundary and stays valid.
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- model and preprocessing -----------------------------------------------------------------


class ModelInfo(_Strict):
    """What the action model predicts: its preset and the columns of its outputs."""

    preset: str = Field(
        description="Model preset name, e.g. 'slowfast_r50_ava' or 'slowfast_tiny'."
    )
    class_ids: tuple[int, ...] = Field(
        description="AVA action id of each output column, in order (column k = class_ids[k])."
    )
    class_names: tuple[str, ...] = Field(description="Display name of each column, same order.")
    pose_ids: tuple[int, ...] = Field(
        description="Ids scored by the pose softmax (exactly one pose per person); the rest are "
        "independent sigmoids. Must be a subset of class_ids."
    )
    evaluated_ids: tuple[int, ...] = Field(
        description="Ids frame-mAP is reported over (the ActivityNet 60, or all for a world)."
    )
    output_activation: Literal["pose_softmax_sigmoid", "sigmoid"] = Field(
        default="pose_softmax_sigmoid",
        description="How head.onnx turns logits into the probabilities it outputs: "
        "'pose_softmax_sigmoid' = one softmax over the pose_ids columns, a sigmoid per other "
        "column (heads trained by avaserve); 'sigmoid' = a sigmoid per column, pose included "
        "(heads imported from PySlowFast, pytorchvideo, MMAction2). Manifests written before "
        "the field: 'pose_softmax_sigmoid'.",
    )
    roi_temporal_pool: Literal["avg", "max"] = Field(
        default="avg",
        description="How backbone.onnx pools each pathway's time axis before RoIAlign (and for "
        "the global feature): 'avg' (PySlowFast, pytorchvideo, MMAction2's default) or 'max' "
        "(MMAction2 temporal_pool_mode='max'). The graph embodies it. Manifests written before "
        "the field: 'avg'.",
    )
    roi_sampling_ratio: int = Field(
        default=2,
        ge=0,
        description="RoIAlign bilinear samples per bin side that backbone.onnx computes; 0 = "
        "adaptive, ceil(box size / bins) per box (torchvision/mmcv sampling_ratio=0, every "
        "imported upstream head). The graph embodies it; recorded so a bundle says how it pools. "
        "Manifests written before the field: 2.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelInfo:
        if len(self.class_ids) != len(self.class_names):
            raise ValueError(
                f"model.class_names has {len(self.class_names)} entries but model.class_ids has "
                f"{len(self.class_ids)}; give one name per id, in the same order"
            )
        if not self.class_ids:
            raise ValueError("model.class_ids is empty; a model needs at least one class")
        if len(set(self.class_ids)) != len(self.class_ids):
            dup = sorted({i for i in self.class_ids if self.class_ids.count(i) > 1})
            raise ValueError(f"model.class_ids repeats {dup}; each id labels one column")
        for field, ids in (("pose_ids", self.pose_ids), ("evaluated_ids", self.evaluated_ids)):
            missing = sorted(set(ids) - set(self.class_ids))
            if missing:
                raise ValueError(
                    f"model.{field} contains {missing}, which are not in model.class_ids; "
                    f"remove them or add the classes"
                )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def label_map(self) -> LabelMap:
        return LabelMap(ids=self.class_ids, names=self.class_names)

    def pose_mask(self) -> tuple[bool, ...]:
        """Per output column: True for the pose classes (the softmax group under
        ``output_activation='pose_softmax_sigmoid'``)."""
        pose = set(self.pose_ids)
        return tuple(i in pose for i in self.class_ids)

    def softmax_mask(self) -> tuple[bool, ...]:
        """Per output column: True where head.onnx's probabilities come from one softmax
        (the pose columns, or none under ``output_activation='sigmoid'``)."""
        if self.output_activation == "sigmoid":
            return tuple(False for _ in self.class_ids)
        return self.pose_mask()


class Preprocessing(_Strict):
    """How frames become the backbone's clip tensors (shared with training through this record).

    A clip for keyframe time ``t`` is ``num_frames`` frames at ``target_fps``, spaced
    ``sampling_rate`` frames apart, placed around ``t`` by ``clip_alignment`` (see
    core/sampling.py); the slow pathway takes every ``alpha``-th of them. Pixels are RGB,
    divided by ``pixel_scale`` then normalised with ``mean``/``std`` per channel.
    """

    short_side: int = Field(
        gt=0, description="Frames are resized so the short side is this many pixels."
    )
    crop: int | None = Field(
        default=None,
        gt=0,
        description="Centre square crop size after resizing; None = full frame (AVA inference "
        "uses the full frame so that people at the edges keep their boxes).",
    )
    mean: tuple[float, float, float] = Field(
        description="Per-channel mean (RGB), after pixel_scale."
    )
    std: tuple[float, float, float] = Field(description="Per-channel std (RGB), after pixel_scale.")
    pixel_scale: float = Field(default=255.0, gt=0, description="Pixels are divided by this first.")
    channel_order: Literal["RGB"] = Field(
        default="RGB", description="Channel order of the clip tensors."
    )
    num_frames: int = Field(gt=0, description="Frames in the fast pathway clip (T_f).")
    alpha: int = Field(
        gt=0, description="Fast/slow frame-rate ratio; slow pathway has num_frames // alpha."
    )
    sampling_rate: int = Field(gt=0, description="Fast pathway stride, in frames at target_fps.")
    target_fps: float = Field(
        gt=0, description="Frame rate the sampling grid is defined at (AVA: 30)."
    )
    clip_alignment: Literal["center", "causal"] = Field(
        default="center",
        description="center: clip centred on the keyframe (training, files; predictions lag by "
        "half a clip). causal: clip ends at the keyframe (live streams).",
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not s > 0 for s in v):
            raise ValueError(
                f"preprocessing.std must be > 0 per channel, got {v}; a zero std divides by zero"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> Preprocessing:
        if self.num_frames % self.alpha:
            raise ValueError(
                f"preprocessing.num_frames={self.num_frames} is not a multiple of "
                f"alpha={self.alpha}; "
                f"the slow pathway takes num_frames // alpha frames, so pick num_frames = k * alpha"
            )
        if self.crop is not None and self.crop > self.short_side:
            raise ValueError(
                f"preprocessing.crop={self.crop} is larger than short_side={self.short_side}; "
                f"crop at most short_side or set crop to null"
            )
        return self

    @property
    def num_slow_frames(self) -> int:
        return self.num_frames // self.alpha

    def clip(self, alignment: Alignment | None = None) -> ClipSpec:
        """The bundle's clip sampling (`core.sampling.ClipSpec`); ``alignment`` overrides
        ``clip_alignment`` (a live stream samples causal clips from a centre-trained model)."""
        return ClipSpec(
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
            target_fps=self.target_fps,
            alignment=self.clip_alignment if alignment is None else alignment,
        )

    @property
    def clip_seconds(self) -> float:
        """Time span the fast pathway's samples cover."""
        return self.num_frames * self.sampling_rate / self.target_fps


# -- detector --------------------------------------------------------------------------------


class DetectorSpec(_Strict):
    """The person detector graph and everything needed to feed it and read it.

    Graph contract (both formats, see export/detector.py)::

        images       (B, 3, H, W) float32   preprocessed as described by the fields below
        boxes        (N, 4) float32         x1, y1, x2, y2 in detector-INPUT pixels
        scores       (N,)   float32         class confidence (YOLOX: objectness * class prob)
        class_ids    (N,)   int64           dataset class id (COCO person = 0)
        batch_index  (N,)   int64           which image of the batch the row belongs to

    Rows are after NMS, ordered by (image, class, descending score). The graph keeps rows
    above ``nms_score_threshold`` (low, so a ByteTrack-style tracker can use the low tier);
    the service keeps persons above ``score_threshold``. Map boxes back to frame pixels with
    core.detector_io.unletterbox_boxes.
    """

    format: Literal["avaserve", "yolox"] = Field(
        description="'yolox': a YOLOX ONNX model with decode+NMS appended; 'avaserve': the "
        "project's own detector exported with the same outputs."
    )
    file: str = Field(default="detector.onnx", description="Bundle-relative graph file.")
    input_height: int = Field(gt=0, description="H of the graph input.")
    input_width: int = Field(gt=0, description="W of the graph input.")
    resize: Literal["letterbox", "stretch"] = Field(
        default="letterbox",
        description="letterbox: keep aspect ratio, scale = min(H/h, W/w), pad the rest; "
        "stretch: resize to H x W ignoring aspect ratio.",
    )
    letterbox_anchor: Literal["top_left", "center"] = Field(
        default="top_left",
        description="Where the resized image sits in the padded canvas (YOLOX: top_left).",
    )
    pad_value: float = Field(
        default=114.0, description="Fill value of the padding, in input units before scaling."
    )
    channel_order: Literal["RGB", "BGR"] = Field(
        description="Channel order of `images` (YOLOX: BGR)."
    )
    pixel_scale: float = Field(
        default=1.0,
        gt=0,
        description="Pixels (0-255) are divided by this (YOLOX: 1, i.e. 0-255 kept).",
    )
    mean: tuple[float, float, float] | None = Field(
        default=None,
        description="Per-channel mean subtracted after pixel_scale; None = no normalisation.",
    )
    std: tuple[float, float, float] | None = Field(
        default=None, description="Per-channel std divided after mean; None = no normalisation."
    )
    score_threshold: float = Field(
        default=DEFAULT_SCORE_THRESHOLD,
        ge=0.0,
        le=1.0,
        description="Persons below this are dropped by the service (report A 0.8, B 0.85).",
    )
    nms_score_threshold: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Score floor baked into the graph's NMS."
    )
    nms_iou: float = Field(
        default=0.45, gt=0.0, le=1.0, description="IoU above which NMS suppresses a box."
    )
    max_detections: int = Field(
        default=100, gt=0, description="Per image and class, baked into NMS."
    )
    person_class_id: int = Field(default=0, ge=0, description="Class id of 'person' in class_ids.")
    class_ids: tuple[int, ...] = Field(
        default=(0,), description="The dataset classes the graph emits (person only by default)."
    )

    @model_validator(mode="after")
    def _check(self) -> DetectorSpec:
        if (self.mean is None) != (self.std is None):
            raise ValueError(
                f"detector.mean={self.mean} and detector.std={self.std}: give both or neither"
            )
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ValueError(f"detector.std must be > 0 per channel, got {self.std}")
        if self.person_class_id not in self.class_ids:
            raise ValueError(
                f"detector.person_class_id={self.person_class_id} is not in detector.class_ids="
                f"{list(self.class_ids)}; the graph would never emit persons. Add it to class_ids"
            )
        if self.nms_score_threshold > self.score_threshold:
            raise ValueError(
                f"detector.nms_score_threshold={self.nms_score_threshold} is above score_threshold="
                f"{self.score_threshold}; the graph would drop boxes the service wants. Lower it"
            )
        return self

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the graph input."""
        return (self.input_height, self.input_width)


# -- bank ------------------------------------------------------------------------------------


class BankSpec(_Strict):
    """The long-term feature bank (report A): person features from neighbouring seconds.

    Training reads ``[t - 30, t + 30]`` (61 s, ``window_seconds=61``); live streams read the
    causal ``[t - (window_seconds - 1), t]``. Up to ``persons_per_second`` features a second,
    so the head's bank input holds at most ``max_entries`` rows (305 for 61 s x 5).
    """

    enabled: bool = Field(description="False: the head has no bank input (bank window ignored).")
    window_seconds: int = Field(
        default=61, gt=0, description="Seconds in the window, inclusive of t."
    )
    persons_per_second: int = Field(
        default=5, gt=0, description="Features kept per second (top scores)."
    )
    feature_dim: int = Field(
        default=0, ge=0, description="D' of the bank features; 0 when disabled."
    )
    source: Literal["backbone", "bank_backbone"] = Field(
        default="backbone",
        description="Which graph's person features fill the bank: the main backbone, or a "
        "separate stage-1 model (report A) shipped as bank_backbone.onnx.",
    )
    layout: Literal["unordered", "slots"] = Field(
        default="unordered",
        description="unordered: the window's rows in any order, padded (Wu et al.'s LFB sees a "
        "set). slots: the time-aware LFB's slot-aligned layout (core.bank_layout): slot "
        "(s, j) is the j-th person of second t + slot_origin_s + s.",
    )
    slot_origin_s: int = Field(
        default=-30,
        le=0,
        description="slots layout: the first slot's second relative to the keyframe (-30 for "
        "training's [t-30, t+30]). Rows outside the trained seconds are left out.",
    )
    file_window: tuple[int, int] | None = Field(
        default=None,
        description="[lo, hi] seconds around the keyframe that a file's second pass reads "
        "(core.bank_layout.file_window: [-30, 30] for 61 s). Written by export; None (bundles "
        "before it): derived from window_seconds.",
    )
    live_window: tuple[int, int] | None = Field(
        default=None,
        description="[lo, hi] seconds a live stream reads, causal (core.bank_layout.live_window: "
        "[-60, 0] for 61 s). Written by export; None (bundles before it): derived.",
    )
    shared_window: bool | None = Field(
        default=None,
        description="True: the head takes a keyframe's window once, bank (1, W, D) for all K "
        "persons (its ops broadcast over persons); false: one copy per person. Export checks "
        "it on the head it wrote (core.bank_layout.head_shares_window); None (bundles before "
        "it): the service checks at load.",
    )

    @model_validator(mode="after")
    def _check(self) -> BankSpec:
        if self.enabled and self.feature_dim <= 0:
            raise ValueError(
                f"bank.feature_dim={self.feature_dim} but bank.enabled is true; set it to the "
                f"bank features' width (D')"
            )
        for name in ("file_window", "live_window"):
            win = getattr(self, name)
            if win is not None and not (
                win[0] <= 0 <= win[1] and win[1] - win[0] + 1 <= self.window_seconds
            ):
                raise ValueError(
                    f"bank.{name}={list(win)} must hold the keyframe (lo <= 0 <= hi) and span at "
                    f"most window_seconds={self.window_seconds} s"
                )
        if self.layout == "slots" and self.slot_origin_s < -(self.window_seconds - 1):
            raise ValueError(
                f"bank.slot_origin_s={self.slot_origin_s} lies before a "
                f"{self.window_seconds} s window's first second"
            )
        return self

    @property
    def max_entries(self) -> int:
        return self.window_seconds * self.persons_per_second


# -- graphs ----------------------------------------------------------------------------------

Dim = Annotated[int, Field(ge=0)] | str


class TensorSpec(_Strict):
    """One graph input or output. Dynamic dims are strings naming the axis (e.g. 'K', 'B')."""

    name: str = Field(min_length=1)
    dtype: DType
    shape: tuple[Dim, ...] = Field(description="Static sizes as ints, dynamic axes as names.")

    @property
    def rank(self) -> int:
        return len(self.shape)


class ShapeRange(_Strict):
    """min/opt/max shapes of one input: a TensorRT optimization profile entry."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @model_validator(mode="after")
    def _check(self) -> ShapeRange:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(
                f"shape range ranks differ: min={self.min}, opt={self.opt}, max={self.max}; "
                f"give each the input's full shape"
            )
        for a, b, c in zip(self.min, self.opt, self.max, strict=True):
            if not 0 <= a <= b <= c:
                raise ValueError(
                    f"shape range needs 0 <= min <= opt <= max per dim, got min={self.min}, "
                    f"opt={self.opt}, max={self.max}"
                )
        return self


_HEX = frozenset("0123456789abcdef")


class GraphSpec(_Strict):
    """One ONNX graph file of the bundle, its hash and its I/O signature."""

    file: str = Field(min_length=1, description="Bundle-relative file name, e.g. 'backbone.onnx'.")
    sha256: str = Field(description="Lower-case hex sha256 of the file.")
    opset: int | None = Field(default=None, description="Default-domain opset of the graph.")
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    shape_ranges: dict[str, ShapeRange] = Field(
        default_factory=dict,
        description="Per input name: min/opt/max shapes for TensorRT profiles (engines and the "
        "ONNX Runtime TensorRT EP). Every input with a dynamic dim needs one.",
    )
    rewrites: dict[str, int] = Field(
        default_factory=dict,
        description="Exact rewrites applied to the graph after the ONNX export, by kind: how "
        "many 3-D convs became 2-D ones (export/frame_convs.py; 'thin': few input channels). "
        "Empty for a plain export.",
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or not set(v) <= _HEX:
            raise ValueError(f"sha256 must be 64 lower-case hex digits, got {v!r}")
        return v

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        # A manifest is untrusted input to the service: never let it point outside the bundle.
        p = Path(v)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(
                f"file {v!r} must be a plain bundle-relative path (no '..', not absolute)"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> GraphSpec:
        names = [t.name for t in self.inputs]
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            seen = [t.name for t in specs]
            if len(set(seen)) != len(seen):
                raise ValueError(f"{kind} repeat a name: {seen}; tensor names must be unique")
        for name, rng in self.shape_ranges.items():
            if name not in names:
                raise ValueError(
                    f"shape_ranges has {name!r}, which is not an input ({names}); "
                    f"rename or remove it"
                )
            spec = next(t for t in self.inputs if t.name == name)
            if len(rng.min) != spec.rank:
                raise ValueError(
                    f"shape_ranges[{name!r}] has rank {len(rng.min)} but input {name!r} has shape "
                    f"{list(spec.shape)} (rank {spec.rank})"
                )
            for axis, dim in enumerate(spec.shape):
                if (
                    isinstance(dim, int)
                    and not rng.min[axis] == rng.opt[axis] == rng.max[axis] == dim
                ):
                    raise ValueError(
                        f"shape_ranges[{name!r}] varies axis {axis}, which input {name!r} fixes at "
                        f"{dim}; use {dim} for min, opt and max there"
                    )
        return self

    def dynamic_inputs(self) -> list[TensorSpec]:
        return [t for t in self.inputs if any(isinstance(d, str) for d in t.shape)]


class EngineSpec(_Strict):
    """A prebuilt TensorRT engine: valid only on the GPU and TensorRT version that built it."""

    graph: str = Field(description="Role of the ONNX graph it was built from (key of graphs).")
    file: str
    sha256: str
    precision: Literal["fp32", "fp16", "int8"]
    tensorrt_version: str
    device_name: str | None = Field(
        default=None, description="GPU it was built on, e.g. 'NVIDIA H100'."
    )


class TensorRTEPOptions(_Strict):
    """ONNX Runtime TensorRT execution provider settings (``trt_*`` provider options)."""

    fp16: bool = Field(default=True, description="trt_fp16_enable.")
    int8: bool = Field(default=False, description="trt_int8_enable (needs a calibration table).")
    engine_cache_enable: bool = Field(
        default=True, description="trt_engine_cache_enable: build once per GPU."
    )
    engine_cache_path: str = Field(
        default="trt_cache",
        description="trt_engine_cache_path; relative paths are resolved against the bundle dir.",
    )
    timing_cache_enable: bool = Field(default=True, description="trt_timing_cache_enable.")
    max_workspace_bytes: int = Field(default=2 << 30, gt=0, description="trt_max_workspace_size.")


class RuntimeHints(_Strict):
    """Optional runtime settings; the service may override them from its own settings."""

    ort_tensorrt: TensorRTEPOptions = Field(default_factory=TensorRTEPOptions)
    engines: tuple[EngineSpec, ...] = Field(default=(), description="Prebuilt TensorRT engines.")


class ParityRecord(_Strict):
    """The parity gate's measurement for one graph at export time (ONNX Runtime vs PyTorch)."""

    max_abs_diff: dict[str, float] = Field(description="Per output name.")
    tolerance: float
    samples: int = Field(ge=1)


class QuantizationDrift(_Strict):
    """One output of a quantised graph against its float32 graph, over the parity samples."""

    max_abs: float = Field(ge=0, description="Largest |int8 - float32| of any element.")
    min_cosine: float = Field(
        ge=-1, le=1, description="Smallest cosine similarity of a row (a person, a clip)."
    )


class QuantizationSpec(_Strict):
    """How the bundle's quantised graphs were made (``avaserve export --quantize int8``).

    The quantised graph replaces the float32 one under ``graphs`` (same I/O, so the service
    loads it as it loads any graph); ``parity`` still records the float32 graph's check
    against PyTorch, and ``drift`` the int8 graph's against that float32 graph.
    """

    mode: Literal["int8"]
    method: Literal["static"] = Field(
        default="static", description="Post-training static quantisation (calibrated ranges)."
    )
    format: Literal["QDQ", "QOperator"] = Field(
        description="ONNX Runtime's QuantFormat: Q/DQ node pairs, or QLinear* operators."
    )
    graphs: tuple[str, ...] = Field(min_length=1, description="Roles that were quantised.")
    per_channel: bool
    reduce_range: bool
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["int8"] = "int8"
    op_types: tuple[str, ...] = Field(description="Operator types that were quantised.")
    min_conv_in_channels: int = Field(
        default=0,
        ge=0,
        description="Convs with fewer input channels per group were left float32 (the RGB "
        "stems: slower as int8).",
    )
    calibration: str = Field(description="Where the calibration clips came from.")
    calibration_clips: int = Field(ge=1)
    calibration_method: Literal["MinMax"] = "MinMax"
    min_cosine: float = Field(ge=-1, le=1, description="The drift gate's tolerance.")
    drift: dict[str, dict[str, QuantizationDrift]] = Field(
        default_factory=dict, description="Per role, per output."
    )


class Provenance(_Strict):
    """Who wrote the bundle, with what. Informational; validation does not depend on it."""

    avaserve_version: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    torch_version: str | None = None
    onnx_version: str | None = None
    onnxruntime_version: str | None = None
    checkpoint: str | None = Field(default=None, description="Source checkpoint file name.")
    checkpoint_sha256: str | None = None


class BundleManifest(_Strict):
    """The whole manifest. Cross-field rules are checked here once, so readers can trust it."""

    schema_version: Literal[1] = Field(
        default=1, description="Manifest schema version (see SCHEMA_VERSION)."
    )
    model: ModelInfo
    preprocessing: Preprocessing
    keyframe_rate: float = Field(
        default=1.0, gt=0, description="Keyframes per second (AVA labels 1 Hz)."
    )
    detector: DetectorSpec | None = Field(
        default=None,
        description="None: the bundle ships no detector; the service needs --detector.",
    )
    bank: BankSpec
    graphs: dict[str, GraphSpec] = Field(
        description="Per role ('detector', 'backbone', 'head', 'bank_backbone', ...)."
    )
    runtime: RuntimeHints = Field(default_factory=RuntimeHints)
    parity: dict[str, ParityRecord] = Field(default_factory=dict, description="Per graph role.")
    provenance: Provenance
    quantization: QuantizationSpec | None = Field(
        default=None, description="Set when graphs were quantised (int8); None: all float32."
    )

    @model_validator(mode="after")
    def _check(self) -> BundleManifest:
        missing = [g for g in REQUIRED_GRAPHS if g not in self.graphs]
        if self.bank.enabled and self.bank.source == "bank_backbone":
            missing += [] if "bank_backbone" in self.graphs else ["bank_backbone"]
        if self.detector is not None and "detector" not in self.graphs:
            missing.append("detector")
        if missing:
            raise ValueError(
                f"graphs lacks {missing} (has {sorted(self.graphs)}); export them or fix "
                f"bank.source / detector"
            )
        if self.detector is not None and self.graphs["detector"].file != self.detector.file:
            raise ValueError(
                f"detector.file={self.detector.file!r} but graphs.detector.file="
                f"{self.graphs['detector'].file!r}; they must name the same file"
            )
        if self.detector is not None:
            det = self.graphs["detector"]
            ins, outs = [t.name for t in det.inputs], [t.name for t in det.outputs]
            if ins != [DETECTOR_INPUT] or sorted(outs) != sorted(DETECTOR_OUTPUTS):
                raise ValueError(
                    f"graphs.detector has inputs {ins} and outputs {outs}; the detector contract "
                    f"is [{DETECTOR_INPUT!r}] -> {list(DETECTOR_OUTPUTS)} (export/detector.py)"
                )
        files = [g.file for g in self.graphs.values()]
        if len(set(files)) != len(files):
            raise ValueError(f"graphs share a file: {files}; each role needs its own file")
        if self.quantization is not None:
            unknown = [g for g in self.quantization.graphs if g not in self.graphs]
            if unknown:
                raise ValueError(
                    f"quantization.graphs names {unknown}, which are not in graphs "
                    f"({sorted(self.graphs)})"
                )
        for engine in self.runtime.engines:
            if engine.graph not in self.graphs:
                raise ValueError(
                    f"runtime.engines has an engine for graph {engine.graph!r}, which is not in "
                    f"graphs ({sorted(self.graphs)})"
                )
        return self


# -- reading and writing ---------------------------------------------------------------------


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_manifest(bundle_dir: StrPath) -> BundleManifest:
    """Read and validate ``bundle_dir/manifest.json``; `BundleError` naming the field on failure."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            MANIFEST_NAME, None, f"not found in {Path(bundle_dir)}; is this a bundle dir?"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(
            MANIFEST_NAME, None, f"is not valid JSON ({e}); re-export the bundle"
        ) from None
    if not isinstance(raw, dict):
        raise BundleError(MANIFEST_NAME, None, "must hold a JSON object")
    version = raw.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise BundleError(
            MANIFEST_NAME,
            "schema_version",
            f"is {version}, newer than this avaserve reads ({SCHEMA_VERSION}); upgrade avaserve",
        )
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = _loc(err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        extra = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        value = err.get("input")
        # Whole records (model-level rules) already name their values in the message.
        got = "" if isinstance(value, dict | list) else f"; got {value!r}"
        raise BundleError(MANIFEST_NAME, field, f"{msg}{got}{extra}") from None


def write_manifest(bundle_dir: StrPath, manifest: BundleManifest) -> Path:
    """Write ``manifest.json`` (indented, stable key order) and return its path."""
    path = Path(bundle_dir) / MANIFEST_NAME
    text = manifest.model_dump_json(indent=2)
    # Round-trip before writing: a manifest this module cannot read back is never written.
    BundleManifest.model_validate_json(text)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def sha256_file(path: StrPath, *, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, streamed: the one file hash of the project (bundle files,
    checkpoints and imported weights of hundreds of MB alike)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- ONNX Runtime helpers --------------------------------------------------------------------


def _ort_session(path: Path, file: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a service dependency
        raise BundleError(
            file, None, "onnxruntime is not installed: pip install onnxruntime"
        ) from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: a failed load is reported through BundleError
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ORT raises several unrelated types (Fail, InvalidGraph, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(file, None, f"ONNX Runtime (CPU) cannot load it: {first}") from None


def _ort_tensor(arg: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ValueError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    # ORT gives ints for static dims, strings for named dynamic dims and None for unnamed ones.
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)  # type: ignore[arg-type]


def describe_graph(
    path: StrPath,
    *,
    shape_ranges: dict[str, ShapeRange] | None = None,
    file: str | None = None,
    opset: int | None = None,
) -> GraphSpec:
    """A `GraphSpec` for an ONNX file, read through ONNX Runtime (names, dtypes, dynamic axes).

    Used by export after writing a graph, so the manifest states what the file really has.
    """
    p = Path(path)
    name = file if file is not None else p.name
    sess = _ort_session(p, name)
    return GraphSpec(
        file=name,
        sha256=sha256_file(p),
        opset=opset,
        inputs=tuple(_ort_tensor(a) for a in sess.get_inputs()),
        outputs=tuple(_ort_tensor(a) for a in sess.get_outputs()),
        shape_ranges=dict(shape_ranges or {}),
    )


def tensorrt_ep_options(manifest: BundleManifest, role: str, bundle_dir: StrPath) -> dict[str, str]:
    """Provider options for ``("TensorrtExecutionProvider", options)`` for one graph.

    Profile shapes come from the graph's shape ranges, so the EP builds one engine covering
    the whole range instead of rebuilding whenever a new K or W arrives.
    """
    graph = manifest.graphs[role]
    o = manifest.runtime.ort_tensorrt
    cache = Path(o.engine_cache_path)
    if not cache.is_absolute():
        cache = Path(bundle_dir) / cache
    opts = {
        "trt_fp16_enable": str(o.fp16),
        "trt_int8_enable": str(o.int8),
        "trt_engine_cache_enable": str(o.engine_cache_enable),
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": str(o.timing_cache_enable),
        "trt_max_workspace_size": str(o.max_workspace_bytes),
    }
    if graph.shape_ranges:

        def fmt(which: str) -> str:
            return ",".join(
                f"{name}:{'x'.join(str(d) for d in getattr(r, which))}"
                for name, r in graph.shape_ranges.items()
            )

        opts["trt_profile_min_shapes"] = fmt("min")
        opts["trt_profile_opt_shapes"] = fmt("opt")
        opts["trt_profile_max_shapes"] = fmt("max")
    return opts


# -- validation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleCheck:
    """One passed check, for `avaserve bundle validate` to print."""

    file: str
    check: str
    detail: str = ""


def _compare_tensors(
    file: str, field: str, kind: str, expected: Sequence[TensorSpec], actual: Sequence[TensorSpec]
) -> None:
    got = {t.name: t for t in actual}
    want = {t.name: t for t in expected}
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if missing or extra:
        raise BundleError(
            file,
            field,
            f"{kind} names differ: manifest expects {list(want)}, graph has {list(got)} "
            f"(missing {missing}, unexpected {extra}); re-export the bundle so they agree",
        )
    for name, w in want.items():
        g = got[name]
        if w.dtype != g.dtype:
            raise BundleError(
                file, f"{field}.{name}.dtype", f"manifest says {w.dtype}, graph has {g.dtype}"
            )
        if w.rank != g.rank:
            raise BundleError(
                file,
                f"{field}.{name}.shape",
                f"manifest shape {list(w.shape)} (rank {w.rank}) but graph has {list(g.shape)} "
                f"(rank {g.rank})",
            )
        for axis, (wd, gd) in enumerate(zip(w.shape, g.shape, strict=True)):
            # Static in both: must agree. Dynamic in the manifest but fixed in the graph: the
            # runtime would feed other sizes and fail, so refuse. Fixed in the manifest but
            # dynamic in the graph is harmless (the graph accepts more) and allowed.
            if isinstance(wd, int) and isinstance(gd, int) and wd != gd:
                raise BundleError(
                    file,
                    f"{field}.{name}.shape",
                    f"axis {axis} is {wd} in the manifest, {gd} in the graph",
                )
            if isinstance(wd, str) and isinstance(gd, int):
                raise BundleError(
                    file,
                    f"{field}.{name}.shape",
                    f"axis {axis} is dynamic ({wd!r}) in the manifest but fixed at {gd} in the "
                    f"graph; "
                    f"export with that axis dynamic",
                )


def validate_bundle(bundle_dir: StrPath, *, load_graphs: bool = True) -> list[BundleCheck]:
    """Check a bundle before serving it; return the passed checks or raise `BundleError`.

    Checks, in order: the manifest parses; every graph and engine file exists and matches its
    sha256; with ``load_graphs``, every graph loads in ONNX Runtime (CPU) and its input/output
    names, dtypes, ranks and static dims match the manifest. Raises on the first failure:
    a bundle is either servable or not, and the first problem is the one to fix.
    """
    root = Path(bundle_dir)
    manifest = load_manifest(root)
    checks = [BundleCheck(MANIFEST_NAME, "schema", f"version {manifest.schema_version}")]

    def hashed(file: str, field: str, sha: str) -> Path:
        path = root / file
        if not path.is_file():
            raise BundleError(file, field, f"listed in the manifest but missing from {root}")
        actual = sha256_file(path)
        if actual != sha:
            raise BundleError(
                file,
                f"{field}.sha256",
                f"sha256 mismatch: manifest {sha[:12]}..., file {actual[:12]}...; the file is "
                f"corrupt or was replaced, re-copy or re-export the bundle",
            )
        checks.append(BundleCheck(file, "sha256", actual[:12]))
        return path

    paths = {
        role: hashed(g.file, f"graphs.{role}", g.sha256) for role, g in manifest.graphs.items()
    }
    for i, engine in enumerate(manifest.runtime.engines):
        hashed(engine.file, f"runtime.engines[{i}]", engine.sha256)

    if load_graphs:
        for role, graph in manifest.graphs.items():
            sess = _ort_session(paths[role], graph.file)
            for kind, expected, args in (
                ("inputs", graph.inputs, sess.get_inputs()),
                ("outputs", graph.outputs, sess.get_outputs()),
            ):
                try:
                    actual = [_ort_tensor(a) for a in args]
                except ValueError as e:
                    raise BundleError(graph.file, f"graphs.{role}.{kind}", str(e)) from None
                _compare_tensors(graph.file, f"graphs.{role}.{kind}", kind, expected, actual)
            checks.append(
                BundleCheck(
                    graph.file,
                    "onnxruntime",
                    f"loads; {len(graph.inputs)} inputs, {len(graph.outputs)} outputs match",
                )
            )
    return checks

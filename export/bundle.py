"""``avaserve export``: a checkpoint (+ a detector) -> a model bundle directory.

What `build_bundle` does, in order (DESIGN.md, issue 5)::

    ActionModel -> backbone.onnx  (slow, fast, boxes (K,5)) -> (person (K,D), global (B,D))
                -> head.onnx      (person, global_per_person, bank (K,W,D'), mask (K,W))
                                  -> action (K,C) probabilities [, scene (K,C)]
    stage-1 model (if the checkpoint carries one) -> bank_backbone.onnx (bank features, report A)
    --detector yolox:PATH | onnx:PATH             -> detector.onnx (export/detector.py contract)
    each graph: opset 17, IR 8, onnxslim when importable, PARITY GATE (ONNX Runtime vs the
    reference on clips decoded from a real video) before and after slimming
    manifest.json (core/manifest.py) -> validate_bundle -> move into place
    [--tensorrt fp16|int8 engines] [--triton DIR repository]

Everything is written into a temporary directory beside ``out`` and renamed into place only
when every graph passed the gate and the finished bundle validated, so a failed export never
leaves a bundle behind (nor replaces a good one).

Inputs of the graphs are dynamic along batch ``B``, boxes ``K``, bank window ``W`` and the
clip's spatial size ``H``/``W`` (the short side is fixed by the manifest, the long side follows
the video's aspect ratio). The manifest's ``shape_ranges`` give TensorRT its profile.

The steps live by topic: `export.checkpoint_load` turns a checkpoint into a `LoadedModel`,
`export.parity` makes the gate's clips, samples and references and runs the gate, and
`export.writing` holds the work-directory dance; this module composes them into
`build_bundle`. Their public names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from core.bank_layout import file_window, head_shares_window, live_window, slot_offsets
from core.defaults import DEFAULT_SCORE_THRESHOLD
from core.detector_io import SPEC_METADATA_KEY, spec_from_onnx_metadata
from core.manifest import (
    BankSpec,
    BundleCheck,
    BundleManifest,
    DetectorSpec,
    EngineSpec,
    GraphSpec,
    ModelInfo,
    ParityRecord,
    Preprocessing,
    Provenance,
    RuntimeHints,
    ShapeRange,
    TensorRTEPOptions,
    describe_graph,
    validate_bundle,
    write_manifest,
)
from export import frame_convs, parity
from export.checkpoint_load import (
    CheckpointError,
    LoadedModel,
    load_action_model,
    load_checkpoint_models,
    random_init_model,
)
from export.parity import ParityClip, parity_clips
from export.writing import ExportError, move_into_place, prepare_out, versions

if TYPE_CHECKING:
    from models.action_model import ActionModel

__all__ = [
    "BundleResult",
    "CheckpointError",
    "DetectorSource",
    "ExportError",
    "ExportLimits",
    "LoadedModel",
    "ParityClip",
    "build_bundle",
    "describe_bundle",
    "load_action_model",
    "load_checkpoint_models",
    "parity_clips",
    "parse_detector",
    "random_init_model",
]

log = logging.getLogger(__name__)

StrPath = str | PathLike[str]
Array = NDArray[Any]
Precision = Literal["fp16", "int8"]

DEFAULT_OPSET = 17
# opset 17 needs IR >= 8. onnx 1.23 stamps IR 14 on models it builds, which ONNX Runtime
# 1.31 cannot read (it reads <= 13); 8 is what opset 17 needs and every ORT >= 1.11 reads.
IR_VERSION = 8


def _bank_layout(model: Any, window_seconds: int, persons: int) -> dict[str, Any]:
    """Manifest layout fields: a time-aware LFB needs its windows slot-aligned."""
    lfb = model.lfb
    if lfb is None or lfb.num_slots is None:
        return {}
    offsets = [float(x) for x in lfb.slot_offsets.tolist()]
    origin = int(offsets[0])
    if offsets != slot_offsets(origin, window_seconds, persons):
        raise ExportError(
            f"the LFB's {len(offsets)} slots (from {origin} s) are not the layout of a "
            f"{window_seconds} s x {persons}/s window; export with the training window"
        )
    return {"layout": "slots", "slot_origin_s": origin}


# -- detector argument -----------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSource:
    """``yolox:PATH`` (a YOLOX head export; decode + NMS get appended) or ``onnx:PATH`` (a graph
    already following the detector contract, with its `DetectorSpec` in ``PATH`` + ``.json``)."""

    kind: Literal["yolox", "onnx"]
    path: Path

    @property
    def spec_path(self) -> Path:
        return self.path.with_suffix(".json")


def parse_detector(text: str) -> DetectorSource:
    kind, sep, path = text.partition(":")
    if not sep or kind not in ("yolox", "onnx") or not path:
        raise ExportError(
            f"--detector {text!r}: expected yolox:PATH (a YOLOX ONNX model) or onnx:PATH (a "
            f"detector graph with the avaserve contract and a PATH.json DetectorSpec)"
        )
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"--detector {text!r}: file {p} not found")
    return DetectorSource(kind, p)  # type: ignore[arg-type]


# -- graph export ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportLimits:
    """Sizes the manifest's shape ranges (TensorRT profiles) promise the runtime.

    ``max_clips``: clips per backbone call (B). ``max_persons``: persons per clip; K of the
    backbone is at most ``max_clips * max_persons``. ``max_head_persons``: persons per head
    call (batched across streams). Spatial: the short side is the preset's; the long side may
    reach ``max_aspect`` times it (2.0 covers 16:9 and 2:1 video, landscape or portrait).
    """

    max_clips: int = 8
    opt_clips: int = 2
    max_persons: int = 16
    opt_persons: int = 4
    max_head_persons: int = 128
    opt_head_persons: int = 16
    max_aspect: float = 2.0


def _shares_window(work: Path, graph: GraphSpec, model: ActionModel) -> bool:
    """Whether the exported head takes one window for all persons (manifest ``shared_window``),
    tried on the graph in ONNX Runtime as `core.bank_layout.head_shares_window` describes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(work / graph.file), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = {t.name: t.shape for t in graph.inputs}
    mask = next((t for t in graph.inputs if t.name == "mask"), None)
    mask_dtype = np.bool_ if mask is None or mask.dtype == "bool" else np.dtype(mask.dtype)
    bank = inputs.get("bank")
    if model.lfb is not None:  # the bank's width, as the service takes it (manifest first)
        bank_dim = model.lfb.dim_bank
    else:
        bank_dim = bank[-1] if bank is not None and isinstance(bank[-1], int) else 1

    def run(feed: Mapping[str, Array]) -> dict[str, Array]:
        return dict(zip(names, sess.run(None, dict(feed)), strict=True))

    w_range = graph.shape_ranges.get("bank")
    window = w_range.opt[1] if w_range is not None else None
    return head_shares_window(run, inputs, bank_dim, mask_dtype, window)


def _fix_ir(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    if model.ir_version != IR_VERSION:
        model.ir_version = IR_VERSION
        onnx.save(model, str(path))


def _slim(path: Path, dst: Path) -> bool:
    """onnxslim ``path`` into ``dst``; False when onnxslim is absent or fails."""
    try:
        import onnxslim
    except ImportError:
        return False
    import onnx

    try:
        model = onnxslim.slim(str(path))
    except Exception as e:  # onnxslim raises whatever its passes raise
        log.warning("onnxslim failed on %s (%s); keeping the unslimmed graph", path.name, e)
        return False
    if model is None:
        return False
    model.ir_version = IR_VERSION
    onnx.save(model, str(dst))
    return True


def _range(shape: Sequence[int | str], dims: Mapping[str, tuple[int, int, int]]) -> ShapeRange:
    lo, opt, hi = [], [], []
    for d in shape:
        if isinstance(d, int):
            lo.append(d)
            opt.append(d)
            hi.append(d)
        else:
            a, b, c = dims[d]
            lo.append(a)
            opt.append(b)
            hi.append(c)
    return ShapeRange(min=tuple(lo), opt=tuple(opt), max=tuple(hi))


def _with_ranges(graph: GraphSpec, dims: Mapping[str, tuple[int, int, int]]) -> GraphSpec:
    ranges = {
        t.name: _range(t.shape, dims)
        for t in graph.inputs
        if any(isinstance(d, str) for d in t.shape)
    }
    missing = {d for t in graph.inputs for d in t.shape if isinstance(d, str) and d not in dims}
    if missing:
        raise ExportError(f"{graph.file}: no shape range for dynamic axes {sorted(missing)}")
    return GraphSpec.model_validate({**graph.model_dump(), "shape_ranges": ranges})


@dataclass(frozen=True)
class _Exported:
    role: str
    spec: GraphSpec
    parity: ParityRecord | None
    slimmed: bool


def _export_and_gate(
    role: str,
    file: str,
    export: Callable[[Path], object],
    reference: parity.MappedReference | None,
    samples: Sequence[Mapping[str, Array]],
    *,
    work: Path,
    dims: Mapping[str, tuple[int, int, int]],
    opset: int,
    atol: float,
    rtol: float,
    slim: bool,
    exact: Sequence[str] = (),
    conv_rewrites: Iterable[str] = frame_convs.DEFAULT_KINDS,
) -> _Exported:
    path = work / file
    export(path)
    _fix_ir(path)
    # 3-D convs ONNX Runtime's CPU provider runs slowly become exact 2-D ones (checked by the
    # gate below like the rest of the graph).
    rewrites = frame_convs.rewrite_file(path, kinds=conv_rewrites).describe()
    record = None
    reference = parity.CachedReference(reference) if reference is not None else None
    if reference is not None:
        record = parity.gate(
            path, reference, samples, graph=role, atol=atol, rtol=rtol, exact=exact
        )
    slimmed = False
    if slim:
        tmp = work / f".{file}.slim"
        if _slim(path, tmp):
            slim_record = (
                parity.gate(tmp, reference, samples, graph=role, atol=atol, rtol=rtol, exact=exact)
                if reference is not None
                else None
            )
            tmp.replace(path)
            record, slimmed = slim_record, True
    spec = _with_ranges(describe_graph(path, opset=opset), dims)
    if rewrites:
        spec = GraphSpec.model_validate({**spec.model_dump(), "rewrites": rewrites})
    return _Exported(role, spec, record, slimmed)


# -- detector --------------------------------------------------------------------------------


def _detector(
    source: DetectorSource,
    work: Path,
    clips: Sequence[parity.ParityClip],
    *,
    opset: int,
    score_threshold: float,
    atol: float,
    max_clips: int,
) -> tuple[DetectorSpec, _Exported]:
    from export.detector import build_yolox_detector, check_detector_signature

    dst = work / "detector.onnx"
    if source.kind == "yolox":
        spec, graph = build_yolox_detector(
            source.path, dst, score_threshold=score_threshold, opset=opset
        )
        _fix_ir(dst)
        record = parity.gate(
            dst,
            parity.yolox_reference(source.path, spec),
            parity.detector_samples(clips, spec),
            graph="detector",
            atol=atol,
            rtol=0.0,
            exact=("class_ids", "batch_index"),
        )
    else:
        check_detector_signature(source.path)
        try:
            if source.spec_path.is_file():
                spec = DetectorSpec.model_validate_json(
                    source.spec_path.read_text(encoding="utf-8")
                )
            else:
                found = spec_from_onnx_metadata(source.path)
                if found is None:
                    raise ExportError(
                        f"--detector onnx:{source.path}: its DetectorSpec (preprocessing, "
                        f"thresholds) must be in the graph's metadata ({SPEC_METADATA_KEY!r}, as "
                        f"avaserve train-detector writes it) or beside it as {source.spec_path}"
                    )
                spec = found
        except ValueError as e:
            raise ExportError(f"{source.path}: not a valid DetectorSpec: {e}") from None
        spec = spec.model_copy(update={"file": dst.name})
        shutil.copyfile(source.path, dst)
        _fix_ir(dst)
        record = None  # no reference to compare with: the file is copied as is
    graph = describe_graph(dst, opset=opset)
    dims = {d: (1, 1, max_clips) for t in graph.inputs for d in t.shape if isinstance(d, str)}
    spec_g = _with_ranges(graph, dims)
    return spec, _Exported("detector", spec_g, record, False)


# -- the bundle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleResult:
    path: Path
    manifest: BundleManifest
    checks: list[BundleCheck]
    parity_source: str
    slimmed: dict[str, bool]


def build_bundle(
    loaded: LoadedModel,
    out: StrPath,
    *,
    detector: DetectorSource | None = None,
    parity_video: StrPath | None = None,
    data_dir: StrPath | None = None,
    parity_keyframes: int = 3,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    rtol: float = 0.0,
    slim: bool = True,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    limits: ExportLimits = ExportLimits(),
    tensorrt: Precision | None = None,
    triton_dir: StrPath | None = None,
    force: bool = False,
    quantize: Literal["int8"] | None = None,
    calibration_keyframes: int = 8,
    quantize_options: Any = None,
    conv_rewrites: Iterable[str] = frame_convs.DEFAULT_KINDS,
) -> BundleResult:
    """Export ``loaded`` into the bundle directory ``out`` (see the module docstring).

    Raises `export.parity.ParityError` (graph, output, diff) or `ExportError`; in both cases
    nothing is written at ``out``.
    """
    import torch

    from avaserve import __version__
    from models.onnx_utils import (
        FEATURES_DYNAMIC_AXES,
        FEATURES_INPUTS,
        FEATURES_OUTPUTS,
        HEAD_DYNAMIC_AXES,
        HEAD_INPUTS,
        FeaturesGraph,
        HeadGraph,
        export_onnx,
    )

    if opset < 17:
        raise ExportError(f"--opset {opset}: the bundle needs opset >= 17 (LayerNormalization)")
    out_p = Path(out)
    prepare_out(out_p, force)
    if tensorrt is not None:
        from export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before minutes of export work, not after
    model, info = loaded.model.eval(), loaded.info
    clips, parity_source = parity.parity_clips(
        info, video=parity_video, data_dir=data_dir, count=parity_keyframes
    )
    log.info("parity clips: %s", parity_source)

    # Dynamic axes: batch, boxes, bank window, and the clip's spatial size (aspect ratio).
    feat_axes = {k: dict(v) for k, v in FEATURES_DYNAMIC_AXES.items()}
    for name in ("slow", "fast"):
        feat_axes[name].update({3: "height", 4: "width"})
    s = info.short_side
    long_opt, long_max = int(round(s * 16 / 9)), int(math.ceil(s * limits.max_aspect))
    feat_dims = {
        "B": (1, limits.opt_clips, limits.max_clips),
        # K >= 1 in the profile: a keyframe without persons needs no backbone call.
        "K": (1, limits.opt_clips * limits.opt_persons, limits.max_clips * limits.max_persons),
        "height": (s, s, long_max),
        "width": (s, long_opt, long_max),
    }
    max_w = loaded.bank_window_seconds * loaded.bank_persons_per_second
    head_dims = {
        "K": (1, limits.opt_head_persons, limits.max_head_persons),
        "KB": (1, limits.opt_head_persons, limits.max_head_persons),
        "W": (1, max_w, max_w),
    }
    slots = model.lfb.num_slots if model.lfb is not None else None
    if slots is not None:  # a time-aware LFB reads exactly its W slots
        head_dims["W"] = (slots, slots, slots)
    feat_samples = parity.features_samples(clips)
    c0 = feat_samples[0]
    example = tuple(torch.from_numpy(c0[n]) for n in FEATURES_INPUTS)

    out_p.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_p.name}.tmp-", dir=out_p.parent))
    try:
        common: dict[str, Any] = dict(
            work=work, opset=opset, atol=atol, rtol=rtol, slim=slim, conv_rewrites=conv_rewrites
        )

        def export_features(m: ActionModel) -> Callable[[Path], object]:
            def run(p: Path) -> Path:
                return export_onnx(
                    FeaturesGraph(m),
                    example,
                    p,
                    input_names=FEATURES_INPUTS,
                    output_names=FEATURES_OUTPUTS,
                    dynamic_axes=feat_axes,
                    opset=opset,
                )

            return run

        graphs: dict[str, _Exported] = {}
        feat_ref = parity.CachedReference(parity.features_reference(model))
        bank_model = loaded.bank_model
        bank_ref = (
            parity.CachedReference(parity.features_reference(bank_model))
            if bank_model is not None
            else feat_ref
        )
        graphs["backbone"] = _export_and_gate(
            "backbone",
            "backbone.onnx",
            export_features(model),
            feat_ref,
            feat_samples,
            dims=feat_dims,
            **common,
        )
        if bank_model is not None:
            graphs["bank_backbone"] = _export_and_gate(
                "bank_backbone",
                "bank_backbone.onnx",
                export_features(bank_model.eval()),
                bank_ref,
                feat_samples,
                dims=feat_dims,
                **common,
            )

        # Head inputs from real features of the same clips (K = persons of each clip).
        per_clip = []
        for smp in feat_samples[: len(clips)]:
            f = feat_ref(smp)
            per_clip.append((f["person"], f["global"], smp["boxes"]))
        pool = np.concatenate([bank_ref(smp)["person"] for smp in feat_samples[: len(clips)]])
        dim_bank = model.lfb.dim_bank if model.lfb is not None else model.person_dim
        head_samples = parity.head_samples(per_clip, pool, dim_bank, slots)
        head = HeadGraph(model, probabilities=True)
        h0 = head_samples[0]
        head_example = tuple(torch.from_numpy(h0[n]) for n in HEAD_INPUTS)
        head_axes = {
            k: v for k, v in HEAD_DYNAMIC_AXES.items() if k in HEAD_INPUTS or k in head.output_names
        }

        def export_head(p: Path) -> Path:
            return export_onnx(
                head,
                head_example,
                p,
                input_names=HEAD_INPUTS,
                output_names=head.output_names,
                dynamic_axes=head_axes,
                opset=opset,
            )

        graphs["head"] = _export_and_gate(
            "head",
            "head.onnx",
            export_head,
            parity.head_reference(model, head.output_names),
            head_samples,
            dims=head_dims,
            **common,
        )

        det_spec = None
        if detector is not None:
            det_spec, graphs["detector"] = _detector(
                detector,
                work,
                clips,
                opset=opset,
                score_threshold=score_threshold,
                atol=atol,
                max_clips=limits.max_clips,
            )

        tools = versions()
        manifest = BundleManifest(
            model=ModelInfo(
                preset=info.name,
                class_ids=loaded.class_ids,
                class_names=loaded.class_names,
                pose_ids=loaded.pose_ids,
                evaluated_ids=loaded.evaluated_ids,
                output_activation=model.output_activation,
                roi_sampling_ratio=model.roi_head.sampling_ratio,
                roi_temporal_pool=model.roi_head.temporal_pool,
            ),
            preprocessing=Preprocessing(
                short_side=info.short_side,
                crop=None,
                mean=info.mean,
                std=info.std,
                pixel_scale=255.0,
                num_frames=info.num_frames,
                alpha=info.alpha,
                sampling_rate=info.sampling_rate,
                target_fps=info.target_fps,
                clip_alignment=info.alignment,
            ),
            keyframe_rate=1.0,
            detector=det_spec,
            bank=BankSpec(
                enabled=model.lfb is not None,
                window_seconds=loaded.bank_window_seconds,
                persons_per_second=loaded.bank_persons_per_second,
                feature_dim=model.lfb.dim_bank if model.lfb is not None else 0,
                source="bank_backbone" if bank_model is not None else "backbone",
                **_bank_layout(model, loaded.bank_window_seconds, loaded.bank_persons_per_second),
                file_window=file_window(loaded.bank_window_seconds),
                live_window=live_window(loaded.bank_window_seconds),
                shared_window=_shares_window(work, graphs["head"].spec, model),
            ),
            graphs={role: g.spec for role, g in graphs.items()},
            runtime=RuntimeHints(
                ort_tensorrt=TensorRTEPOptions(
                    fp16=tensorrt in ("fp16", "int8"), int8=tensorrt == "int8"
                )
            ),
            parity={role: g.parity for role, g in graphs.items() if g.parity is not None},
            provenance=Provenance(
                avaserve_version=__version__,
                checkpoint=loaded.provenance,
                checkpoint_sha256=loaded.checkpoint_sha256,
                torch_version=tools["torch_version"],
                onnx_version=tools["onnx_version"],
                onnxruntime_version=tools["onnxruntime_version"],
            ),
        )
        if quantize is not None:
            # int8 backbone (export/quantize.py): calibrated on more clips from the same source
            # as the parity gate, gated on its drift from the float32 graph just checked.
            from export.quantize import QuantizeOptions, calibration_feeds, quantize_bundle_dir

            calib, gate, calib_source = calibration_feeds(
                manifest,
                video=Path(parity_video) if parity_video is not None else None,
                data_dir=Path(data_dir) if data_dir is not None else None,
                count=max(calibration_keyframes, 1),
            )
            manifest = quantize_bundle_dir(
                work,
                manifest,
                calib,
                gate,
                calibration_source=calib_source,
                options=quantize_options or QuantizeOptions(),
                conv_rewrites=conv_rewrites,
            )
        if tensorrt is not None:
            engines = _build_engines(
                manifest, work, tensorrt, {"backbone": feat_samples, "head": head_samples}
            )
            raw = manifest.model_dump()
            raw["runtime"]["engines"] = [e.model_dump() for e in engines]
            manifest = BundleManifest.model_validate(raw)
        write_manifest(work, manifest)
        validate_bundle(work)  # the bundle as the service will see it, before it is visible
        move_into_place(work, out_p)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    checks = validate_bundle(out_p)
    if triton_dir is not None:
        from export.triton import TritonOptions, write_triton_repository

        write_triton_repository(
            out_p,
            triton_dir,
            manifest=manifest,
            options=TritonOptions(use_engines=bool(manifest.runtime.engines)),
        )
    return BundleResult(
        out_p, manifest, checks, parity_source, {r: g.slimmed for r, g in graphs.items()}
    )


def _build_engines(
    manifest: BundleManifest,
    work: Path,
    precision: Precision,
    samples: Mapping[str, Sequence[Mapping[str, Array]]],
) -> list[EngineSpec]:
    """TensorRT engines for the ONNX graphs (not exercised here: needs TensorRT + CUDA)."""
    from export.tensorrt import assemble_calibration_batches, build_engine, profile_shapes

    engines = []
    for role, graph in manifest.graphs.items():
        # The detector's NMS and box outputs are not worth quantising: fp16 for it.
        prec: Precision = "fp16" if role == "detector" else precision
        batches = None
        if prec == "int8":
            profile = profile_shapes(graph, role=role)
            names = {p.input for p in profile}
            feed = samples["head" if role == "head" else "backbone"]
            usable = [
                {k: v for k, v in s.items() if k in names}
                for s in feed
                if all(np.asarray(v).shape[0] > 0 for v in s.values())
            ]
            batches = assemble_calibration_batches(usable, batch_size=1, profile=profile)
        engines.append(
            build_engine(
                work / graph.file,
                work / f"{Path(graph.file).stem}.{prec}.plan",
                graph=graph,
                role=role,
                precision=prec,
                calibration_batches=batches,
                calibration_dir=work / "calibration",
            )
        )
    return engines


def describe_bundle(manifest: BundleManifest) -> dict[str, Any]:
    """A flat summary (for `avaserve bundle info`)."""
    return dataclasses.asdict(_Summary.of(manifest))


@dataclass(frozen=True)
class _Summary:
    preset: str
    classes: int
    pose_classes: int
    evaluated_classes: int
    head: str
    clip: str
    detector: str
    bank: str
    graphs: dict[str, str]
    parity: dict[str, str]
    provenance: str

    @classmethod
    def of(cls, m: BundleManifest) -> _Summary:
        p = m.preprocessing
        d = m.detector
        b = m.bank
        return cls(
            preset=m.model.preset,
            classes=m.model.num_classes,
            pose_classes=len(m.model.pose_ids),
            evaluated_classes=len(m.model.evaluated_ids),
            head=(
                f"{m.model.output_activation} probabilities, RoIAlign sampling "
                f"{m.model.roi_sampling_ratio or 'adaptive'}, temporal "
                f"{m.model.roi_temporal_pool} pool"
            ),
            clip=(
                f"{p.num_frames} fast / {p.num_slow_frames} slow frames every {p.sampling_rate} "
                f"at {p.target_fps:g} fps ({p.clip_seconds:.2f} s, {p.clip_alignment}), short "
                f"side {p.short_side}"
            ),
            detector="none"
            if d is None
            else (
                f"{d.format} {d.input_width}x{d.input_height}, score >= {d.score_threshold}, "
                f"NMS IoU {d.nms_iou}"
            ),
            bank="off"
            if not b.enabled
            else (
                f"{b.window_seconds} s x {b.persons_per_second}/s, {b.feature_dim}-d, from "
                f"{b.source}"
            ),
            graphs={
                r: f"{g.file}  in: {', '.join(f'{t.name}{list(t.shape)}' for t in g.inputs)}  "
                f"out: {', '.join(f'{t.name}{list(t.shape)}' for t in g.outputs)}"
                for r, g in m.graphs.items()
            },
            parity={
                r: f"max {max(rec.max_abs_diff.values(), default=0.0):.2e} <= {rec.tolerance:g} "
                f"({rec.samples} samples)"
                for r, rec in m.parity.items()
            },
            provenance=(
                f"{m.provenance.checkpoint} (avaserve {m.provenance.avaserve_version}, torch "
                f"{m.provenance.torch_version}, onnx {m.provenance.onnx_version}, created "
                f"{m.provenance.created:%Y-%m-%d %H:%M} UTC)"
            ),
        )

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

Checkpoints are read with `models.checkpoints.load_checkpoint` (the one format, written by
training and by ``avaserve import-checkpoint``): the model is built from the preset and every
option the checkpoint carries, and its state dict is loaded strictly. A training checkpoint's
config gives the bank window and persons per second. The stage-1 bank model comes from the
checkpoint's ``bank_model`` or from its own file (``bank_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from core.ava import EVALUATED_IDS, POSE_IDS, LabelMap
from core.bank_layout import slot_offsets
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
    sha256_file,
    validate_bundle,
    write_manifest,
)
from core.preset_info import PresetInfo

if TYPE_CHECKING:
    from models.action_model import ActionModel
    from models.checkpoints import Checkpoint

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
DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "video"
DEFAULT_VIDEO_FILE = DEFAULT_VIDEO / "basketball_2people.mp4"
# Boxes used on a video without annotations: normalised xyxy, two people-sized regions and a
# small one near the border (RoIAlign's edge handling is where exporters tend to diverge).
FIXED_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.10, 0.20, 0.45, 0.95),
    (0.55, 0.15, 0.90, 0.90),
    (0.00, 0.00, 0.12, 0.30),
)


class ExportError(RuntimeError):
    """The export cannot go on; the message names what is wrong and what to do."""


class CheckpointError(ExportError):
    """A checkpoint that cannot be turned into an ActionModel."""


# -- models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """An ActionModel ready to export, with what the manifest needs to say about it.

    ``bank_model``: report A's stage-1 model whose person features fill the bank, when the
    checkpoint carries one (then exported as bank_backbone.onnx); None = the bank holds the
    main backbone's own person features.
    """

    model: ActionModel
    info: PresetInfo
    class_ids: tuple[int, ...]
    pose_ids: tuple[int, ...]
    evaluated_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    provenance: str  # checkpoint file name, or "random-init ... UNTRAINED"
    checkpoint_sha256: str | None = None
    bank_model: ActionModel | None = None
    bank_window_seconds: int = 61
    bank_persons_per_second: int = 5
    trained: bool = True


def _class_facts(
    class_ids: Sequence[int],
    *,
    pose_ids: Sequence[int] | None = None,
    evaluated_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    ids = tuple(int(c) for c in class_ids)
    pose = tuple(i for i in (pose_ids if pose_ids is not None else POSE_IDS) if i in set(ids))
    if evaluated_ids is not None:
        evaluated = tuple(int(i) for i in evaluated_ids)
    elif set(ids) == set(range(1, 81)):
        evaluated = tuple(EVALUATED_IDS)  # the ActivityNet 60
    else:
        evaluated = ids  # a world or a custom label set: every class is scored
    names = tuple(class_names) if class_names is not None else LabelMap.from_ids(ids).names
    return pose, evaluated, names


def random_init_model(
    preset: str,
    *,
    seed: int = 0,
    use_lfb: bool = True,
    use_global: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """A randomly initialised preset (development bundles only: labelled UNTRAINED)."""
    import torch

    from models.presets import PRESETS

    if preset not in PRESETS:
        raise ExportError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    torch.manual_seed(seed)
    kw = {"use_lfb": use_lfb, "use_global": use_global, **dict(overrides or {})}
    model = PRESETS[preset](**kw).eval()
    info = model.preset_info
    assert info is not None
    pose, evaluated, names = _class_facts(model.class_ids)
    return LoadedModel(
        model=model,
        info=info,
        class_ids=model.class_ids,
        pose_ids=pose,
        evaluated_ids=evaluated,
        class_names=names,
        provenance=f"random-init:{preset}:seed={seed} (UNTRAINED; development bundle only)",
        trained=False,
    )


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


def _build(checkpoint: Checkpoint, where: str) -> ActionModel:
    from models.checkpoints import build_model

    try:
        return build_model(checkpoint)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def load_checkpoint_models(path: StrPath, *, bank_checkpoint: StrPath | None = None) -> LoadedModel:
    """Read a checkpoint (`models.checkpoints`: the model is built from the options it
    carries) into a `LoadedModel`.

    ``bank_checkpoint``: report A's stage-1 checkpoint whose person features fill the bank
    (exported as bank_backbone.onnx); overrides a ``bank_model`` inside ``path``.
    """
    from models.checkpoints import load_checkpoint

    p = Path(path)
    try:
        checkpoint = load_checkpoint(p)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = _build(checkpoint, str(p))
    config = (checkpoint.training or {}).get("config") or {}
    assert isinstance(config, Mapping)

    bank_model = None
    if checkpoint.bank_model is not None:
        where = f"{p} [bank_model]"
        bank_model = _build(checkpoint.bank_model, where)
        if model.lfb is not None and bank_model.person_dim != model.lfb.dim_bank:
            raise CheckpointError(
                f"{where}: the stage-1 model's features are {bank_model.person_dim}-d but the "
                f"LFB reads {model.lfb.dim_bank}-d bank features"
            )
    if bank_checkpoint is not None:
        bank_model = load_checkpoint_models(bank_checkpoint).model
        if model.lfb is None:
            raise CheckpointError(f"--bank-checkpoint given but {p} has no feature bank (LFB)")
        if bank_model.person_dim != model.lfb.dim_bank:
            raise CheckpointError(
                f"{bank_checkpoint}: its person features are {bank_model.person_dim}-d but the "
                f"LFB of {p} reads {model.lfb.dim_bank}-d bank features"
            )
    if model.lfb is not None and bank_model is None and config.get("train_backbone", False):
        log.warning(
            "%s fine-tuned its backbone in stage 2 but carries no stage-1 model: the bank will "
            "hold stage-2 features, not the stage-1 features the LFB was trained on. Pass "
            "--bank-checkpoint STAGE1 for report A's setup",
            p.name,
        )
    info = model.preset_info
    assert info is not None
    pose, evaluated, names = _class_facts(
        model.class_ids, pose_ids=checkpoint.preset_overrides.get("pose_ids")
    )
    half = int(config.get("bank_window", 30))
    return LoadedModel(
        model=model,
        info=info,
        class_ids=model.class_ids,
        pose_ids=pose,
        evaluated_ids=evaluated,
        class_names=names,
        provenance=p.name,
        checkpoint_sha256=sha256_file(p),
        bank_model=bank_model,
        bank_window_seconds=2 * half + 1,
        bank_persons_per_second=int(config.get("bank_persons_per_second", 5)),
    )


def load_action_model(ckpt_path: StrPath) -> tuple[ActionModel, PresetInfo, tuple[int, ...]]:
    """A training checkpoint -> (ActionModel in eval mode, its PresetInfo, class ids)."""
    loaded = load_checkpoint_models(ckpt_path)
    return loaded.model, loaded.info, loaded.class_ids


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


# -- parity clips ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityClip:
    """One preprocessed clip with its boxes: what the gate feeds the graphs.

    slow (3, T_s, H, W), fast (3, T_f, H, W) float32; boxes (N, 4) xyxy in clip pixels;
    keyframe (h, w, 3) uint8 RGB at source resolution (for the detector).
    """

    slow: Array
    fast: Array
    boxes: Array
    keyframe: Array
    label: str


def _keyframe_index(info: PresetInfo) -> int:
    from core.sampling import clip_offsets

    offsets = clip_offsets(info.num_frames, info.sampling_rate, info.alignment)
    return int(np.argmin(np.abs(offsets)))


def _to_clip(frames: Array, boxes_norm: Array, info: PresetInfo, label: str) -> ParityClip:
    from core.clips import boxes_to_pixels, pack_pathways, preprocess_clip

    clip = preprocess_clip(frames, short_side=info.short_side, mean=info.mean, std=info.std)
    slow, fast = pack_pathways(clip, info.alpha)  # (3, T_s, H, W), (3, T_f, H, W)
    h, w = clip.shape[2:]
    return ParityClip(
        slow, fast, boxes_to_pixels(boxes_norm, w, h), frames[_keyframe_index(info)], label
    )


def _video_duration(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return float(container.duration) / 1e6
    return 0.0


def parity_clips(
    info: PresetInfo,
    *,
    video: StrPath | None = None,
    data_dir: StrPath | None = None,
    count: int = 3,
    seed: int = 0,
) -> tuple[list[ParityClip], str]:
    """Real clips for the gate, and a description of where they came from.

    Preference: ``video`` (fixed boxes), else a val video of ``data_dir`` with its ground-truth
    boxes, else the shared basketball video (fixed boxes), else synthetic noise (warned).
    Clips go through core/clips.py with the preset's numbers, as training and the service do.
    """
    from core.clips import ClipSpec, iter_keyframe_clips

    spec = ClipSpec.from_preset(info)
    fixed = np.asarray(FIXED_BOXES, np.float32)
    if video is None and data_dir is not None:
        from core.ava_data import read_dataset_info, read_keyframes
        from core.clips import find_video

        root = Path(data_dir)
        ds = read_dataset_info(root)
        ann = root / "annotations" / "val.csv"
        if not ann.is_file():
            raise ExportError(f"--data {root}: {ann} not found (need val annotations for parity)")
        keyframes = read_keyframes(ann, unknown_classes="skip")
        if not keyframes:
            raise ExportError(f"--data {root}: {ann} has no keyframes")
        vid = keyframes[0].video_id
        chosen = [k for k in keyframes if k.video_id == vid and len(k.boxes)]
        step = max(1, len(chosen) // count)
        chosen = chosen[::step][:count]
        path = find_video(root / "videos", vid)
        times = [k.timestamp - ds.time_offset for k in chosen]
        by_time = dict(zip(times, chosen, strict=True))
        clips = [
            _to_clip(frames, by_time[t].boxes, info, f"{vid}@{t:g}s")
            for t, frames in iter_keyframe_clips(path, times, spec)
        ]
        return clips, f"{path} (dataset val video {vid}, ground-truth boxes)"
    if video is None and DEFAULT_VIDEO_FILE.is_file():
        video = DEFAULT_VIDEO_FILE
    if video is not None:
        path = Path(video)
        if not path.is_file():
            raise ExportError(f"--parity-video {path}: file not found")
        duration = _video_duration(path)
        if duration <= 0:
            raise ExportError(f"--parity-video {path}: cannot read its duration")
        # Keyframes spread over the video, at whole seconds as the service ticks.
        times = sorted(
            {float(max(0, round(duration * (i + 1) / (count + 1)))) for i in range(count)}
        )
        clips = [
            _to_clip(frames, fixed, info, f"{path.name}@{t:g}s")
            for t, frames in iter_keyframe_clips(path, times, spec)
        ]
        return clips, f"{path} (keyframes {times} s, fixed boxes)"
    log.warning(
        "NO REAL VIDEO FOR THE PARITY GATE: using synthetic noise clips. Pass --parity-video "
        "or --data; noise exercises the arithmetic but not realistic activations."
    )
    rng = np.random.default_rng(seed)
    h, w = info.short_side, int(round(info.short_side * 4 / 3))
    clips = [
        _to_clip(
            rng.integers(0, 256, (info.num_frames, h, w, 3), dtype=np.uint8),
            fixed,
            info,
            f"noise{i}",
        )
        for i in range(count)
    ]
    return clips, "SYNTHETIC NOISE (no video available)"


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


Reference = Callable[[Mapping[str, Array]], Mapping[str, Array]]


class _Cached:
    """A reference that computes each sample once (the gate runs before and after slimming).

    Keyed by the identity of the input arrays, which the samples keep alive.
    """

    def __init__(self, inner: Reference) -> None:
        self.inner = inner
        self._cache: dict[tuple[tuple[str, int], ...], Mapping[str, Array]] = {}
        self._keep: list[Mapping[str, Array]] = []

    def __call__(self, feed: Mapping[str, Array]) -> Mapping[str, Array]:
        key = tuple(sorted((k, id(v)) for k, v in feed.items()))
        if key not in self._cache:
            self._keep.append(dict(feed))
            self._cache[key] = self.inner(feed)
        return self._cache[key]


@dataclass
class _MagnitudeReference:
    """Wraps a reference to remember each output's largest |value| (for --parity-rtol)."""

    inner: Reference
    scale: dict[str, float] = field(default_factory=dict)

    def __call__(self, feed: Mapping[str, Array]) -> Mapping[str, Array]:
        out = self.inner(feed)
        for k, v in out.items():
            m = float(np.abs(v).max()) if np.asarray(v).size else 0.0
            if np.issubdtype(np.asarray(v).dtype, np.floating) and np.isfinite(m):
                self.scale[k] = max(self.scale.get(k, 0.0), m)
        return out


def _gate(
    path: Path,
    reference: Reference,
    samples: Sequence[Mapping[str, Array]],
    *,
    graph: str,
    atol: float,
    rtol: float,
    exact: Sequence[str] = (),
) -> ParityRecord:
    """Run the parity gate; ParityError naming graph/output/diff on failure.

    Passes when ``max|onnx - ref| <= atol + rtol * max|ref|`` per output (rtol 0 by default:
    the issue's plain 1e-4 absolute gate); outputs in ``exact`` (integer ids) must match exactly.
    """
    from export.parity import ParityError, check_parity

    ref = _MagnitudeReference(reference)
    report = check_parity(path, ref, samples, graph=graph, tolerance=atol, raise_on_failure=False)
    tolerances: dict[str, float] = {}
    for name, o in report.outputs.items():
        tol = 0.0 if name in exact else atol + rtol * ref.scale.get(name, 0.0)
        tolerances[name] = tol
        if not o.max_abs_diff <= tol:
            extra = f"{o.detail}; " if o.detail else ""
            scale = ref.scale.get(name)
            raise ParityError(
                graph,
                name,
                o.max_abs_diff,
                tol,
                f"{extra}file {path.name}, {report.samples} samples"
                + (f", reference max |value| {scale:.3g}" if scale is not None else ""),
            )
    log.info(
        "parity %s (%s): %s",
        graph,
        "slimmed" if path.name.endswith(".slim") else path.name,
        ", ".join(
            f"{k}={o.max_abs_diff:.2e} (max|ref| {ref.scale.get(k, 0.0):.3g})"
            for k, o in report.outputs.items()
        ),
    )
    return ParityRecord(
        max_abs_diff={k: o.max_abs_diff for k, o in report.outputs.items()},
        tolerance=max(tolerances.values(), default=atol),
        samples=max(report.samples, 1),
    )


def _features_reference(model: ActionModel) -> Reference:
    import torch

    def run(feed: Mapping[str, Array]) -> dict[str, Array]:
        with torch.no_grad():
            person, glob = model.features(
                *(
                    torch.from_numpy(np.ascontiguousarray(feed[n]))
                    for n in ("slow", "fast", "boxes")
                )
            )
        return {"person": person.numpy(), "global": glob.numpy()}

    return run


def _head_reference(model: ActionModel, output_names: Sequence[str]) -> Reference:
    import torch

    from models.onnx_utils import HeadGraph

    head = HeadGraph(model, probabilities=True).eval()
    dim_bank = model.lfb.dim_bank if model.lfb is not None else 1

    def run(feed: Mapping[str, Array]) -> dict[str, Array]:
        person = torch.from_numpy(np.ascontiguousarray(feed["person"]))
        k = person.shape[0]
        # Inputs the exporter pruned (no global branch / no LFB) are ignored by the model.
        gpp = feed.get("global_per_person")
        bank = feed.get("bank")
        mask = feed.get("mask")
        args = (
            person,
            torch.from_numpy(gpp) if gpp is not None else torch.zeros_like(person),
            torch.from_numpy(bank) if bank is not None else torch.zeros(k, 1, dim_bank),
            torch.from_numpy(mask) if mask is not None else torch.zeros(k, 1),
        )
        with torch.no_grad():
            outs = head(*args)
        return {n: o.numpy() for n, o in zip(output_names, outs, strict=True)}

    return run


def _features_samples(clips: Sequence[ParityClip]) -> list[dict[str, Array]]:
    """One sample per clip (B=1), one batched sample (B=2) and one with no boxes (K=0)."""
    samples = []
    for c in clips:
        boxes = np.concatenate([np.zeros((len(c.boxes), 1), np.float32), c.boxes], axis=1)
        samples.append({"slow": c.slow[None], "fast": c.fast[None], "boxes": boxes})
    if len(clips) >= 2 and clips[0].slow.shape == clips[1].slow.shape:
        a, b = clips[0], clips[1]
        boxes = np.concatenate(
            [
                np.concatenate([np.zeros((len(a.boxes), 1), np.float32), a.boxes], axis=1),
                np.concatenate([np.ones((len(b.boxes), 1), np.float32), b.boxes], axis=1),
            ]
        )
        samples.append(
            {
                "slow": np.stack([a.slow, b.slow]),
                "fast": np.stack([a.fast, b.fast]),
                "boxes": boxes,
            }
        )
    c = clips[0]
    samples.append(
        {"slow": c.slow[None], "fast": c.fast[None], "boxes": np.zeros((0, 5), np.float32)}
    )
    return samples


def _head_samples(
    person_feats: Sequence[tuple[Array, Array, Array]],
    bank_pool: Array,
    dim_bank: int,
    slots: int | None = None,
) -> list[dict[str, Array]]:
    """Head inputs from real features: (person (K,D), global (B,D), boxes (K,5)) per clip.

    The bank window is the pooled person features of all parity clips (what neighbouring
    seconds would hold), with the tail masked off for every other person so that partial
    windows are covered; plus one sample with an empty (fully masked) window. ``slots``: a
    time-aware head's fixed W; the pool is repeated or cut to fill it.
    """
    samples = []
    w = max(1, len(bank_pool))
    pool = bank_pool if len(bank_pool) else np.zeros((1, dim_bank), np.float32)
    if slots is not None:
        pool = np.resize(pool, (slots, pool.shape[1]))
        w = slots
    for person, glob, boxes in person_feats:
        k = len(person)
        gpp = glob[boxes[:, 0].astype(np.int64)] if k else np.zeros_like(person)
        bank = np.ascontiguousarray(np.broadcast_to(pool[None], (k, w, pool.shape[1])))
        mask = np.ones((k, w), np.float32)
        mask[1::2, w // 2 + 1 :] = 0.0
        samples.append(
            {
                "person": person,
                "global_per_person": gpp.astype(np.float32),
                "bank": bank.astype(np.float32),
                "mask": mask,
            }
        )
    person, glob, boxes = person_feats[0]
    k = len(person)
    samples.append(
        {
            "person": person,
            "global_per_person": glob[boxes[:, 0].astype(np.int64)].astype(np.float32),
            "bank": np.zeros((k, slots or 1, pool.shape[1]), np.float32),
            "mask": np.zeros((k, slots or 1), np.float32),
        }
    )
    return samples


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
    reference: Reference | None,
    samples: Sequence[Mapping[str, Array]],
    *,
    work: Path,
    dims: Mapping[str, tuple[int, int, int]],
    opset: int,
    atol: float,
    rtol: float,
    slim: bool,
    exact: Sequence[str] = (),
) -> _Exported:
    path = work / file
    export(path)
    _fix_ir(path)
    record = None
    reference = _Cached(reference) if reference is not None else None
    if reference is not None:
        record = _gate(path, reference, samples, graph=role, atol=atol, rtol=rtol, exact=exact)
    slimmed = False
    if slim:
        tmp = work / f".{file}.slim"
        if _slim(path, tmp):
            slim_record = (
                _gate(tmp, reference, samples, graph=role, atol=atol, rtol=rtol, exact=exact)
                if reference is not None
                else None
            )
            tmp.replace(path)
            record, slimmed = slim_record, True
    spec = _with_ranges(describe_graph(path, opset=opset), dims)
    return _Exported(role, spec, record, slimmed)


# -- detector --------------------------------------------------------------------------------


def _detector(
    source: DetectorSource,
    work: Path,
    clips: Sequence[ParityClip],
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
        record = _gate(
            dst,
            _yolox_reference(source.path, spec),
            _detector_samples(clips, spec),
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


def _yolox_reference(src: Path, spec: DetectorSpec) -> Reference:
    """The source YOLOX graph in ONNX Runtime + the numpy decode/NMS of export/detector.py."""
    import onnx
    import onnxruntime as ort

    from export.detector import probe_yolox_layout, yolox_postprocess_numpy

    layout = probe_yolox_layout(onnx.load(str(src)), spec.input_size)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(feed: Mapping[str, Array]) -> dict[str, Array]:
        raw = sess.run(None, {name: feed["images"]})[0]
        return dict(yolox_postprocess_numpy(raw, spec, layout))

    return run


def _detector_samples(clips: Sequence[ParityClip], spec: DetectorSpec) -> list[dict[str, Array]]:
    from core.detector_io import preprocess

    return [{"images": preprocess(np.ascontiguousarray(c.keyframe), spec)[0]} for c in clips]


# -- the bundle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleResult:
    path: Path
    manifest: BundleManifest
    checks: list[BundleCheck]
    parity_source: str
    slimmed: dict[str, bool]


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for mod, key in (("torch", "torch_version"), ("onnx", "onnx_version")):
        try:
            out[key] = str(__import__(mod).__version__)
        except ImportError:
            out[key] = None
    import onnxruntime

    out["onnxruntime_version"] = str(onnxruntime.__version__)
    return out


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"--out {out} exists and is not empty; pass --force to replace it")


def _move_into_place(work: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    score_threshold: float = 0.8,
    limits: ExportLimits = ExportLimits(),
    tensorrt: Precision | None = None,
    triton_dir: StrPath | None = None,
    force: bool = False,
    quantize: Literal["int8"] | None = None,
    calibration_keyframes: int = 8,
    quantize_options: Any = None,
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
    _prepare_out(out_p, force)
    if tensorrt is not None:
        from export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before minutes of export work, not after
    model, info = loaded.model.eval(), loaded.info
    clips, parity_source = parity_clips(
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
    feat_samples = _features_samples(clips)
    c0 = feat_samples[0]
    example = tuple(torch.from_numpy(c0[n]) for n in FEATURES_INPUTS)

    out_p.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_p.name}.tmp-", dir=out_p.parent))
    try:
        common: dict[str, Any] = dict(work=work, opset=opset, atol=atol, rtol=rtol, slim=slim)

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
        feat_ref = _Cached(_features_reference(model))
        bank_model = loaded.bank_model
        bank_ref = _Cached(_features_reference(bank_model)) if bank_model is not None else feat_ref
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
        head_samples = _head_samples(per_clip, pool, dim_bank, slots)
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
            _head_reference(model, head.output_names),
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

        versions = _versions()
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
                torch_version=versions["torch_version"],
                onnx_version=versions["onnx_version"],
                onnxruntime_version=versions["onnxruntime_version"],
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
        _move_into_place(work, out_p)
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

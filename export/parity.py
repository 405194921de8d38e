"""The parity gate: an exported graph must compute what its reference computes.

Export runs every graph in ONNX Runtime next to its reference (usually the PyTorch module
it came from) on real inputs and refuses to write a bundle when any output differs by more
than the tolerance (1e-4 fp32 by default, DESIGN.md). The gate is generic: a reference is
any callable taking the graph's named inputs as numpy arrays and returning the outputs,
either as a name -> array mapping or as a sequence in the graph's output order.
`torch_reference` adapts an ``nn.Module``.

Usage (the export command)::

    report = check_parity("backbone.onnx", torch_reference(model.features, ["slow", "fast",
                          "boxes"]), samples, graph="backbone")
    manifest.parity["backbone"] = report.record()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from core.manifest import DetectorSpec, ParityRecord
from core.preset_info import PresetInfo
from export.writing import ExportError

if TYPE_CHECKING:
    from models.action_model import ActionModel

__all__ = [
    "DEFAULT_TOLERANCE",
    "CachedReference",
    "MappedReference",
    "ParityClip",
    "OutputParity",
    "ParityError",
    "ParityReport",
    "check_parity",
    "detector_samples",
    "features_reference",
    "features_samples",
    "gate",
    "head_reference",
    "head_samples",
    "max_abs_diff",
    "parity_clips",
    "torch_reference",
    "yolox_reference",
]

log = logging.getLogger(__name__)

StrPath = str | PathLike[str]
Inputs = Mapping[str, NDArray[Any]]
Outputs = Mapping[str, NDArray[Any]] | Sequence[NDArray[Any]]
Reference = Callable[[Inputs], Outputs]

DEFAULT_TOLERANCE = 1e-4  # fp32; fp16 engines need their own, looser, gate
Array = NDArray[Any]
DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "video"
DEFAULT_VIDEO_FILE = DEFAULT_VIDEO / "basketball_2people.mp4"
# Boxes used on a video without annotations: normalised xyxy, two people-sized regions and a
# small one near the border (RoIAlign's edge handling is where exporters tend to diverge).
FIXED_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.10, 0.20, 0.45, 0.95),
    (0.55, 0.15, 0.90, 0.90),
    (0.00, 0.00, 0.12, 0.30),
)


class ParityError(RuntimeError):
    """An exported graph diverged from its reference: names the graph, output and difference."""

    def __init__(
        self, graph: str, output: str, diff: float, tolerance: float, detail: str = ""
    ) -> None:
        self.graph = graph
        self.output = output
        self.diff = diff
        self.tolerance = tolerance
        msg = (
            f"parity gate failed for graph {graph!r}, output {output!r}: max abs diff "
            f"{diff:.3g} > tolerance {tolerance:.3g}"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg + "; the bundle was not written")


@dataclass(frozen=True)
class OutputParity:
    output: str
    max_abs_diff: float
    tolerance: float
    shape: tuple[int, ...]
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass
class ParityReport:
    """Per-output worst difference over all samples."""

    graph: str
    samples: int = 0
    outputs: dict[str, OutputParity] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs.values())

    def worst(self) -> OutputParity:
        return max(self.outputs.values(), key=lambda o: o.max_abs_diff / o.tolerance)

    def record(self) -> ParityRecord:
        """The manifest's record of this measurement."""
        tol = max((o.tolerance for o in self.outputs.values()), default=DEFAULT_TOLERANCE)
        return ParityRecord(
            max_abs_diff={k: o.max_abs_diff for k, o in self.outputs.items()},
            tolerance=tol,
            samples=max(self.samples, 1),
        )

    def summary(self) -> str:
        parts = [f"{o.output}={o.max_abs_diff:.2e}" for o in self.outputs.values()]
        return f"{self.graph}: {'ok' if self.passed else 'FAILED'} ({', '.join(parts)})"


def max_abs_diff(actual: NDArray[Any], expected: NDArray[Any]) -> tuple[float, str]:
    """Largest absolute difference and a note; ``inf`` for a shape or NaN-pattern mismatch."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    if a.shape != e.shape:
        return float("inf"), f"shape {a.shape} vs reference {e.shape}"
    if a.size == 0:
        return 0.0, ""
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_a, nan_e = np.isnan(a64), np.isnan(e64)
    if (nan_a != nan_e).any():
        return float(
            "inf"
        ), f"NaN in {int(nan_a.sum())} ONNX vs {int(nan_e.sum())} reference values"
    both_inf = np.isinf(a64) & np.isinf(e64) & (np.sign(a64) == np.sign(e64))
    with np.errstate(invalid="ignore"):  # inf - inf where both agree; masked just below
        diff = np.abs(np.where(nan_a | both_inf, 0.0, a64 - e64))
    return float(diff.max()), ""


def _as_mapping(outputs: Outputs, names: Sequence[str], graph: str) -> dict[str, NDArray[Any]]:
    if isinstance(outputs, Mapping):
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ParityError(graph, missing[0], float("inf"), 0.0, "reference did not return it")
        return {n: np.asarray(outputs[n]) for n in names}
    seq = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if len(seq) != len(names):
        raise ParityError(
            graph,
            names[0] if names else "?",
            float("inf"),
            0.0,
            f"reference returned {len(seq)} outputs, graph has {len(names)}: {list(names)}",
        )
    return {n: np.asarray(v) for n, v in zip(names, seq, strict=True)}


def check_parity(
    onnx_model: StrPath | bytes | Any,
    reference: Reference,
    samples: Iterable[Inputs],
    *,
    graph: str,
    tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    raise_on_failure: bool = True,
) -> ParityReport:
    """Run ``onnx_model`` (path, bytes or an ``InferenceSession``) and ``reference`` on each sample.

    ``tolerance`` is one number or per output name (e.g. exact 0 for integer outputs).
    Raises `ParityError` for the worst failing output unless ``raise_on_failure`` is False.
    """
    import onnxruntime as ort

    if isinstance(onnx_model, ort.InferenceSession):
        sess = onnx_model
    else:
        src = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        sess = ort.InferenceSession(src, providers=list(providers))
    names = [o.name for o in sess.get_outputs()]
    in_names = {i.name for i in sess.get_inputs()}

    def tol(name: str) -> float:
        return (
            tolerance.get(name, DEFAULT_TOLERANCE) if isinstance(tolerance, Mapping) else tolerance
        )

    report = ParityReport(graph=graph)
    worst: dict[str, tuple[float, str, tuple[int, ...]]] = {}
    for sample in samples:
        feed = {k: np.asarray(v) for k, v in sample.items() if k in in_names}
        if set(feed) != in_names:
            raise ValueError(
                f"parity sample for {graph!r} lacks inputs {sorted(in_names - set(feed))}"
            )
        got = dict(zip(names, sess.run(names, feed), strict=True))
        want = _as_mapping(reference(feed), names, graph)
        for name in names:
            diff, note = max_abs_diff(got[name], want[name])
            if name not in worst or diff > worst[name][0]:
                worst[name] = (diff, note, tuple(got[name].shape))
        report.samples += 1
    if report.samples == 0:
        raise ValueError(f"parity gate for {graph!r} got no samples; pass at least one input")
    report.outputs = {
        n: OutputParity(n, d, tol(n), shape, note) for n, (d, note, shape) in worst.items()
    }
    if raise_on_failure and not report.passed:
        w = report.worst()
        raise ParityError(graph, w.output, w.max_abs_diff, w.tolerance, w.detail)
    return report


def torch_reference(
    module: Callable[..., Any], input_names: Sequence[str], *, device: str = "cpu"
) -> Reference:
    """Adapt a PyTorch callable (module or bound method) to a parity reference.

    Inputs are passed positionally in ``input_names`` order under ``torch.no_grad()``; a
    tensor, tuple/list of tensors, or dict of tensors comes back as numpy.
    """
    import torch

    def run(feed: Inputs) -> Outputs:
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(device) for n in input_names]
        with torch.no_grad():
            out = module(*args)
        if isinstance(out, torch.Tensor):
            return [out.detach().cpu().numpy()]
        if isinstance(out, Mapping):
            return {k: v.detach().cpu().numpy() for k, v in out.items()}
        return [v.detach().cpu().numpy() for v in out]

    return run


# -- parity clips: real inputs for the gate ---------------------------------------------------


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
    from core.clips import iter_keyframe_clips

    spec = info.clip
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


# -- references, samples and the gate ------------------------------------------------------


MappedReference = Callable[[Mapping[str, Array]], Mapping[str, Array]]


class CachedReference:
    """A reference that computes each sample once (the gate runs before and after slimming).

    Keyed by the identity of the input arrays, which the samples keep alive.
    """

    def __init__(self, inner: MappedReference) -> None:
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

    inner: MappedReference
    scale: dict[str, float] = field(default_factory=dict)

    def __call__(self, feed: Mapping[str, Array]) -> Mapping[str, Array]:
        out = self.inner(feed)
        for k, v in out.items():
            m = float(np.abs(v).max()) if np.asarray(v).size else 0.0
            if np.issubdtype(np.asarray(v).dtype, np.floating) and np.isfinite(m):
                self.scale[k] = max(self.scale.get(k, 0.0), m)
        return out


def gate(
    path: Path,
    reference: MappedReference,
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


def features_reference(model: ActionModel) -> MappedReference:
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


def head_reference(model: ActionModel, output_names: Sequence[str]) -> MappedReference:
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


def features_samples(clips: Sequence[ParityClip]) -> list[dict[str, Array]]:
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


def head_samples(
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


def yolox_reference(src: Path, spec: DetectorSpec) -> MappedReference:
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


def detector_samples(clips: Sequence[ParityClip], spec: DetectorSpec) -> list[dict[str, Array]]:
    from core.detector_io import preprocess

    return [{"images": preprocess(np.ascontiguousarray(c.keyframe), spec)[0]} for c in clips]

"""int8 quantisation of the backbone graph (``avaserve export --quantize int8``).

Static post-training quantisation with ONNX Runtime's own tool (``quantize_static``):

* **QOperator format** (QLinearConv nodes): on the R50 backbone, 2 threads, side by side in
  one process, it ran as fast as or faster than QDQ (Q/DQ pairs that ONNX Runtime fuses into
  the same kernels; 44 of its 110 convs stayed unfused here) and needs no fusion pass. QDQ
  stays selectable (`QuantizeOptions.quant_format`); TensorRT builds neither from this graph
  (use ``--tensorrt int8`` on a float32 export).
* **Calibration** on real clips: the clips the parity gate already reads (a dataset's val
  video with its ground-truth boxes, or a video with fixed boxes), more of them than the
  gate checks (``--calibration-keyframes``). MinMax ranges over those activations.
* **Per-channel** int8 weights (one scale per output channel of each conv), uint8
  activations: the u8 x s8 dot product that VNNI (avx512_vnni / avx_vnni) runs natively.
  ``reduce_range`` (7-bit weights) is for CPUs without VNNI, where the 16-bit accumulation
  of 8x8 products can saturate; on a VNNI CPU it only costs accuracy (off by default).
* **Ops**: Conv and Relu (Relu folds into the QLinearConv's output range). Residual Adds,
  RoIAlign and pooling stay float32 (adding Add crashed ONNX Runtime 1.32's calibrator on
  the R50 graph), and so do convs with fewer than 16 input channels: the RGB stems ran 4x
  slower as QLinearConv than as float32 (profiled per node on the R50 backbone).

The **drift gate**: the int8 graph is compared with the float32 graph it came from on the
parity samples (which are not all calibration samples: the gate also feeds a two-clip batch),
per output: max abs difference and the smallest per-row cosine similarity. The export fails
when a cosine is below ``min_cosine``. Both figures go into the manifest
(``quantization.drift``), next to the settings used.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from export import frame_convs

__all__ = [
    "DEFAULT_MIN_COSINE",
    "QuantizationError",
    "QuantizeOptions",
    "drift",
    "quantize_graph",
]

log = logging.getLogger(__name__)

Array = np.ndarray
DEFAULT_MIN_COSINE = 0.98
# Ops worth int8 in a SlowFast backbone; the rest stays float32 (see the module docstring).
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "Relu")


class QuantizationError(RuntimeError):
    """Quantisation failed or its drift exceeds the tolerance; the message names the output."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantise. Defaults are the fastest measured on the project's CPU (module
    docstring; bench/results/int8_vs_fp32.json has the resulting speed and drift)."""

    quant_format: str = "QOperator"  # or "QDQ"
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "QUInt8"  # or "QInt8"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    min_cosine: float = DEFAULT_MIN_COSINE
    # Convs with fewer input channels per group stay float32: the stems (3 RGB channels, a
    # 5x7x7 kernel on the fast pathway) run 4x SLOWER as QLinearConv than as float (measured
    # per node on the R50 backbone: 3.1 s vs 0.73 s of a 5.9 s float32 run).
    min_conv_in_channels: int = frame_convs.THIN_MAX_IN_CHANNELS

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.quant_format,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "activation_type": "uint8" if self.activation_type == "QUInt8" else "int8",
            "weight_type": "int8",
            "op_types": list(self.op_types),
            "min_conv_in_channels": self.min_conv_in_channels,
        }


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """An ``onnxruntime.quantization.CalibrationDataReader`` over prepared feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, Array]], names: Sequence[str]) -> None:
        self._feeds = [{n: np.ascontiguousarray(f[n]) for n in names} for f in feeds]
        self._it: Iterator[dict[str, Array]] = iter(self._feeds)

    def get_next(self) -> dict[str, Array] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_graph(
    src: Path,
    dst: Path,
    calibration: Sequence[Mapping[str, Array]],
    options: QuantizeOptions = QuantizeOptions(),
) -> Path:
    """Write the int8 version of the float32 graph ``src`` to ``dst``, calibrated on the feeds
    ``calibration`` (each a full input dict). Raises `QuantizationError`."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration:
        raise QuantizationError(f"{src.name}: no calibration clips (need at least one)")
    try:
        fmt = QuantFormat[options.quant_format]
        act = QuantType[options.activation_type]
    except KeyError as e:
        raise QuantizationError(f"unknown quantisation setting {e.args[0]!r}") from None
    names = [i.name for i in ort.InferenceSession(str(src)).get_inputs()]
    reader = _Reader(calibration, names)
    present = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    ops = [o for o in options.op_types if o in present]
    if not ops:
        raise QuantizationError(
            f"{src.name}: none of the ops to quantise {list(options.op_types)} is in the graph"
        )
    with tempfile.TemporaryDirectory(prefix="avaserve-quant-") as tmp:
        # The calibrator writes its augmented graph next to a path it is given: keep it out of
        # the bundle's work directory. Shape inference first (the quantiser needs every
        # tensor's type; an unsimplified torch export lacks some).
        pre = Path(tmp) / "pre.onnx"
        _pre_process(src, pre)
        exclude = _thin_convs(onnx.load(str(pre)), options.min_conv_in_channels)
        try:
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=fmt,
                op_types_to_quantize=ops,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude,
                extra_options={"ActivationSymmetric": act == QuantType.QInt8},
                calibration_cache_path=Path(tmp) / "cache",
            )
        except Exception as e:  # the quantiser raises many types; name the graph
            raise QuantizationError(f"{src.name}: quantize_static failed: {e}") from None
    return dst


def _thin_convs(model: Any, min_in_channels: int) -> list[str]:
    """Names of the Conv nodes whose weight has fewer than ``min_in_channels`` input channels
    per group (they stay float32; `QuantizeOptions.min_conv_in_channels`)."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dims = weights.get(node.input[1])
        if dims is not None and len(dims) >= 2 and dims[1] < min_in_channels:
            out.append(node.name)
    return out


def _pre_process(src: Path, dst: Path) -> None:
    """ONNX Runtime's recommended pre-processing: symbolic shape inference and the basic graph
    optimisations (constant folding); plain ONNX shape inference where the symbolic one fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return
    except Exception as e:  # noqa: BLE001 - fall back to the simpler inference
        log.info("%s: symbolic shape inference failed (%s); using ONNX's", src.name, e)
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001
        raise QuantizationError(
            f"{src.name}: shape inference before quantisation failed: {e}"
        ) from None


@dataclass(frozen=True)
class OutputDrift:
    max_abs: float
    min_cosine: float  # smallest cosine similarity between a row of int8 and of float32

    def as_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "min_cosine": self.min_cosine}


def _cosines(a: Array, b: Array) -> Array:
    a2 = a.reshape(len(a), -1).astype(np.float64) if a.ndim > 1 else a[None].astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64) if b.ndim > 1 else b[None].astype(np.float64)
    na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.sum(a2 * b2, axis=1) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


def drift(
    fp32: Path,
    int8: Path,
    samples: Sequence[Mapping[str, Array]],
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
    graph: str = "backbone",
) -> dict[str, OutputDrift]:
    """int8 vs float32 on ``samples`` per output; `QuantizationError` when a row's cosine
    similarity is below ``min_cosine``."""
    import onnxruntime as ort

    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    names = [i.name for i in ref.get_inputs()]
    outs = [o.name for o in ref.get_outputs()]
    max_abs = dict.fromkeys(outs, 0.0)
    cos = dict.fromkeys(outs, 1.0)
    for s in samples:
        feed = {n: np.ascontiguousarray(s[n]) for n in names}
        a = dict(zip(outs, ref.run(outs, feed), strict=True))
        b = dict(zip(outs, q.run(outs, feed), strict=True))
        for n in outs:
            if a[n].size == 0:
                continue
            max_abs[n] = max(max_abs[n], float(np.max(np.abs(a[n] - b[n]))))
            cos[n] = min(cos[n], float(np.min(_cosines(a[n], b[n]))))
    result = {n: OutputDrift(max_abs[n], cos[n]) for n in outs}
    for n, d in result.items():
        log.info(
            "int8 drift %s.%s: max abs %.3g, min cosine %.5f", graph, n, d.max_abs, d.min_cosine
        )
        if not d.min_cosine >= min_cosine:
            raise QuantizationError(
                f"int8 {graph} output {n!r}: cosine similarity to float32 {d.min_cosine:.4f} "
                f"is below the tolerance {min_cosine} (max abs diff {d.max_abs:.3g}); calibrate "
                f"on more clips (--calibration-keyframes) or export without --quantize"
            )
    return result


# -- bundles ---------------------------------------------------------------------------------


def quantize_bundle_dir(
    work: Path,
    manifest: Any,
    calibration: Sequence[Mapping[str, Array]],
    gate_samples: Sequence[Mapping[str, Array]],
    *,
    calibration_source: str,
    options: QuantizeOptions = QuantizeOptions(),
    roles: Sequence[str] = ("backbone",),
    conv_rewrites: Iterable[str] = frame_convs.DEFAULT_KINDS,
) -> Any:
    """Quantise ``roles`` of the bundle being written in ``work`` (its float32 graphs are
    replaced) and return the updated `BundleManifest` (not yet written).

    ``calibration``: one feed per calibration clip; ``gate_samples``: the parity samples the
    drift gate runs. Raises `QuantizationError`.
    """
    from core.manifest import (
        BundleManifest,
        QuantizationDrift,
        QuantizationSpec,
        describe_graph,
    )

    raw = manifest.model_dump()
    drifts: dict[str, dict[str, QuantizationDrift]] = {}
    for role in roles:
        graph = manifest.graphs[role]
        src = work / graph.file
        dst = work / f"{Path(graph.file).stem}.int8.onnx"
        # A bundle exported before the conv rewrites gets them now (a no-op on a newer one),
        # so its int8 graph keeps the stems' fast 2-D float kernels too.
        done = frame_convs.rewrite_checked(src, gate_samples, graph=role, kinds=conv_rewrites)
        rewrites = done.added_to(graph.rewrites)
        quantize_graph(src, dst, calibration, options)
        found = drift(src, dst, gate_samples, min_cosine=options.min_cosine, graph=role)
        drifts[role] = {n: QuantizationDrift(**d.as_dict()) for n, d in found.items()}
        described = describe_graph(dst, opset=graph.opset)
        src.unlink()
        raw["graphs"][role] = {
            **graph.model_dump(),
            "file": dst.name,
            "sha256": described.sha256,
            "inputs": [t.model_dump() for t in described.inputs],
            "outputs": [t.model_dump() for t in described.outputs],
            "rewrites": rewrites,
        }
    desc = options.describe()
    raw["quantization"] = QuantizationSpec(
        mode="int8",
        format=desc["format"],
        graphs=tuple(roles),
        per_channel=desc["per_channel"],
        reduce_range=desc["reduce_range"],
        activation_type=desc["activation_type"],
        op_types=tuple(desc["op_types"]),
        min_conv_in_channels=desc["min_conv_in_channels"],
        calibration=calibration_source,
        calibration_clips=len(calibration),
        min_cosine=options.min_cosine,
        drift=drifts,
    ).model_dump()
    return BundleManifest.model_validate(raw)


def preset_info_of(manifest: Any) -> Any:
    """The clip numbers of a bundle as a `PresetInfo` (to read calibration clips for it)."""
    from core.preset_info import PresetInfo

    p = manifest.preprocessing
    return PresetInfo(
        name=manifest.model.preset,
        num_frames=p.num_frames,
        alpha=p.alpha,
        sampling_rate=p.sampling_rate,
        short_side=p.short_side,
        target_fps=p.target_fps,
        mean=tuple(p.mean),
        std=tuple(p.std),
        alignment=p.clip_alignment,
    )


def calibration_feeds(
    manifest: Any,
    *,
    video: Path | None = None,
    data_dir: Path | None = None,
    count: int = 8,
) -> tuple[list[dict[str, Array]], list[dict[str, Array]], str]:
    """(calibration feeds, drift-gate samples, source) for a bundle's backbone, from the clips
    the parity gate reads (export/bundle.py `parity_clips`): ``count`` clips calibrate; the gate
    runs the parity gate's usual samples on the first three."""
    from export.parity import features_samples, parity_clips

    info = preset_info_of(manifest)
    clips, source = parity_clips(info, video=video, data_dir=data_dir, count=count)
    feeds = features_samples(clips)
    calib = [f for f in feeds[: len(clips)] if len(f["boxes"])]
    gate = features_samples(clips[:3])
    return calib, gate, source


def quantize_bundle(
    src: Path,
    dst: Path,
    *,
    video: Path | None = None,
    data_dir: Path | None = None,
    calibration_keyframes: int = 8,
    options: QuantizeOptions = QuantizeOptions(),
    force: bool = False,
    conv_rewrites: Iterable[str] = frame_convs.DEFAULT_KINDS,
) -> Any:
    """An int8 copy of the float32 bundle ``src`` at ``dst`` (`avaserve bundle quantize`):
    the same graphs but the backbone, calibrated on ``calibration_keyframes`` clips of
    ``video`` or of ``data_dir``'s val video. Returns the new manifest."""
    from core.manifest import load_manifest
    from export.writing import ExportError, derive_bundle

    manifest = load_manifest(src)
    if manifest.quantization is not None:
        raise ExportError(f"{src}: already quantised ({manifest.quantization.mode})")

    def change(work: Path) -> Any:
        calib, gate, source = calibration_feeds(
            manifest, video=video, data_dir=data_dir, count=calibration_keyframes
        )
        return quantize_bundle_dir(
            work,
            manifest,
            calib,
            gate,
            calibration_source=source,
            options=options,
            conv_rewrites=conv_rewrites,
        )

    return derive_bundle(Path(src), Path(dst), force, change)

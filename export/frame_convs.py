"""Exact rewrites of the 3-D convolutions that ONNX Runtime's CPU provider runs slowly.

ONNX Runtime's fastest CPU convolutions (its NCHWc kernels, including one for a first layer on
few input channels) exist for 2-D convolutions only; a 5-D ``Conv`` takes a generic im2col
path, which is worst on **thin** convs, those with few input channels. A SlowFast backbone's
stems are the extreme case (the fast stem is a 5x7x7 kernel on 3 RGB channels over 32 frames:
a quarter of the R50 int8 backbone's time), and a tiny model's 8-channel fast pathway is thin
throughout.

How a 5-D conv becomes 2-D (`rewrite`):

* a kernel of temporal size 1 (``1 x kh x kw``, temporal stride 1, no temporal padding) is the
  same 2-D convolution applied to every frame: ``(N, C, T, H, W)`` becomes ``(N*T, C, H, W)``
  (Transpose + Reshape), runs as a 2-D ``Conv`` and goes back;
* a ``kt x kh x kw`` kernel with ``kt > 1`` (odd, temporal stride 1, ``kt // 2`` zero frames of
  padding each side, as every SlowFast stem and temporal conv has) gives at frame ``t``
  ``sum over dt of conv2d(x[t + dt - kt//2], W[:, :, dt])``. One 2-D ``Conv`` computes every
  ``conv2d(x[s], W[:, :, dt])`` at once (``kt * Cout`` output channels, every frame), the result
  is zero-padded by ``kt // 2`` frames each side (the original's zero frames contribute
  nothing), and ``kt`` shifted slices are summed. The bias is added once, after the sum.

Which convs are rewritten is a measured choice, by kind (`plan`, `DEFAULT_KINDS`): ``thin``
ones (fewer than `THIN_MAX_IN_CHANNELS` input channels per group, spatial kernel) by default;
``frame`` (every other ``1 x kh x kw`` conv) only on request, since on the project's 2-core CPU
its transposes cost more than the faster kernels saved (R50, 2 threads: int8 1.04 s against
0.81 s with thin only; `docs/internals.md`). Every dynamic axis stays dynamic (shapes are read
at run time with ``Shape``), and the export's parity gate checks the rewritten graph like any
other.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_KINDS",
    "FrameConvReport",
    "parse_kinds",
    "plan",
    "rewrite",
    "rewrite_checked",
    "rewrite_file",
]

# The rewrites applied by default at export (module docstring).
DEFAULT_KINDS: frozenset[str] = frozenset({"thin"})
# A conv with fewer input channels than this (per group) and a spatial kernel is "thin". The
# int8 quantiser keeps the same convs float32 (export/quantize.py, `min_conv_in_channels`).
THIN_MAX_IN_CHANNELS = 16
_KINDS = ("frame", "thin")


def parse_kinds(text: str) -> frozenset[str]:
    """``"thin"``, ``"thin,frame"``, ``"none"`` ... as a set of kinds; ValueError names the
    choices."""
    words = {w.strip() for w in text.split(",") if w.strip()}
    if words == {"none"}:
        return frozenset()
    unknown = words - set(_KINDS)
    if unknown or not words:
        raise ValueError(f"{text!r}: give a comma-separated list of {list(_KINDS)}, or 'none'")
    return frozenset(words)


@dataclass
class FrameConvReport:
    """What `rewrite` changed: convs rewritten per kind."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> dict[str, int]:
        """Convs rewritten per kind, kinds with none left out (the manifest's ``rewrites``)."""
        return {k: n for k, n in self.counts.items() if n}

    def added_to(self, earlier: dict[str, int]) -> dict[str, int]:
        """A graph's ``rewrites`` record after this pass, given its ``earlier`` one."""
        out = dict(earlier)
        for kind, n in self.describe().items():
            out[kind] = out.get(kind, 0) + n
        return out


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def plan(node: Any, weight_shape: tuple[int, ...]) -> str | None:
    """The rewrite that applies to the Conv ``node`` with a weight of ``weight_shape``, or None:
    ``"thin"`` for a conv on few input channels (fewer than `THIN_MAX_IN_CHANNELS` per group:
    the RGB stems) with a spatial kernel, ``"frame"`` for any other ``1 x kh x kw`` conv."""
    if node.op_type != "Conv" or len(weight_shape) != 5:
        return None
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    cin, (kt, kh, kw) = weight_shape[1], weight_shape[2:]
    strides = list(a.get("strides", [1, 1, 1]))
    dilations = list(a.get("dilations", [1, 1, 1]))
    pads = list(a.get("pads", [0] * 6))
    if strides[0] != 1 or dilations[0] != 1:
        return None
    thin = cin < THIN_MAX_IN_CHANNELS and kh * kw > 1
    if kt == 1 and pads[0] == 0 and pads[3] == 0:
        return "thin" if thin else "frame"
    if thin and kt % 2 == 1 and pads[0] == pads[3] == kt // 2 and int(a.get("group", 1)) == 1:
        return "thin"
    return None


class _Builder:
    """Appends nodes and constants with names unique to one rewritten Conv."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}/{what}_{self._n}"

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Iterable[str], out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = out or self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs)
        )
        return out

    def dims(self, shape: str, start: int, end: int) -> str:
        return self.op("Slice", [shape, self.const([start]), self.const([end]), self.const([0])])


def _frames_2d(b: _Builder, x: str) -> tuple[str, str]:
    """``(N, C, T, H, W)`` -> ``(N*T, C, H, W)``; also returns the 5-D transposed shape."""
    xt = b.op("Transpose", [x], perm=[0, 2, 1, 3, 4])  # (N, T, C, H, W)
    shape = b.op("Shape", [xt])
    x4 = b.op("Reshape", [xt, b.op("Concat", [b.const([-1]), b.dims(shape, 2, 5)], axis=0)])
    return x4, shape


def _conv2d_attrs(a: dict[str, Any]) -> dict[str, Any]:
    pads = list(a.get("pads", [0] * 6))
    out = {
        "strides": list(a.get("strides", [1, 1, 1]))[1:],
        "dilations": list(a.get("dilations", [1, 1, 1]))[1:],
        "pads": [pads[1], pads[2], pads[4], pads[5]],
        "group": int(a.get("group", 1)),
    }
    return out


def _per_frame_conv(node: Any, w: np.ndarray, bias: str | None) -> _Builder:
    """A ``1 x kh x kw`` conv as one 2-D conv over every frame (module docstring)."""
    b = _Builder(node.name or node.output[0])
    x4, shape = _frames_2d(b, node.input[0])
    w2 = b.const(w[:, :, 0], dtype=w.dtype)
    y4 = b.op("Conv", [x4, w2] + ([bias] if bias else []), **_conv2d_attrs(_attrs(node)))
    y_shape = b.op("Shape", [y4])
    nt = b.dims(shape, 0, 2)
    y5 = b.op("Reshape", [y4, b.op("Concat", [nt, b.dims(y_shape, 1, 4)], axis=0)])
    b.op("Transpose", [y5], out=node.output[0], perm=[0, 2, 1, 3, 4])
    return b


def _shifted_sum_conv(node: Any, w: np.ndarray, bias: str | None) -> _Builder:
    """A ``kt x kh x kw`` conv as one 2-D conv with ``kt * Cout`` outputs whose time-shifted
    slices are summed (module docstring)."""
    b = _Builder(node.name or node.output[0])
    cout, _, kt = w.shape[:3]
    half = kt // 2
    x4, shape = _frames_2d(b, node.input[0])
    # Output channel dt * Cout + co holds conv2d(frame, W[co, :, dt]).
    wa = np.ascontiguousarray(np.moveaxis(w, 2, 0).reshape(kt * cout, *w.shape[1:2], *w.shape[3:]))
    ya = b.op("Conv", [x4, b.const(wa, dtype=w.dtype)], **_conv2d_attrs(_attrs(node)))
    ya_shape = b.op("Shape", [ya])
    nt = b.dims(shape, 0, 2)
    y6 = b.op(  # (N, T, kt, Cout, Ho, Wo)
        "Reshape",
        [ya, b.op("Concat", [nt, b.const([kt, cout]), b.dims(ya_shape, 2, 4)], axis=0)],
    )
    pads = [0, half, 0, 0, 0, 0, 0, half, 0, 0, 0, 0]
    yp = b.op("Pad", [y6, b.const(pads)])  # zero frames before and after
    terms = []
    for dt in range(kt):
        # out[t] += ya[t + dt - half, dt] = padded[t + dt, dt]; padded has T + 2*half frames.
        end = dt - 2 * half  # negative: counts from the (dynamic) end
        ends = [end if end < 0 else np.iinfo(np.int64).max, dt + 1]
        terms.append(
            b.op("Slice", [yp, b.const([dt, dt]), b.const(ends), b.const([1, 2])])
        )  # (N, T, 1, Cout, Ho, Wo)
    total = b.op("Sum", terms)
    y5 = b.op("Squeeze", [total, b.const([2])])  # (N, T, Cout, Ho, Wo)
    if bias is None:
        b.op("Transpose", [y5], out=node.output[0], perm=[0, 2, 1, 3, 4])
    else:
        yt = b.op("Transpose", [y5], perm=[0, 2, 1, 3, 4])
        shaped = b.op("Reshape", [bias, b.const([1, cout, 1, 1, 1])])
        b.op("Add", [yt, shaped], out=node.output[0])
    return b


def rewrite(model: Any, kinds: Iterable[str] = DEFAULT_KINDS) -> FrameConvReport:
    """Rewrite, in place, the Conv nodes of ``model`` (an ``onnx.ModelProto``) whose `plan` is
    one of ``kinds``. Convs whose weight is not a graph initializer are left alone."""
    from onnx import numpy_helper

    kinds = set(kinds)
    unknown = kinds - set(_KINDS)
    if unknown:
        raise ValueError(f"unknown rewrite kinds {sorted(unknown)}; choose from {list(_KINDS)}")
    report = FrameConvReport()
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    new_nodes: list[Any] = []
    for node in graph.node:
        w_init = weights.get(node.input[1]) if node.op_type == "Conv" else None
        kind = plan(node, tuple(w_init.dims)) if w_init is not None else None
        if w_init is None or kind not in kinds:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(w_init)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        temporal = w.shape[2] > 1
        builder = (_shifted_sum_conv if temporal else _per_frame_conv)(node, w, bias)
        new_nodes.extend(builder.nodes)
        graph.initializer.extend(builder.inits)
        report.counts[kind] = report.counts.get(kind, 0) + 1
    if report.count:
        used = {i for n in new_nodes for i in n.input}
        kept = [t for t in graph.initializer if t.name in used or t.name not in weights]
        del graph.node[:]
        graph.node.extend(new_nodes)
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return report


def rewrite_file(
    src: Path, dst: Path | None = None, kinds: Iterable[str] = DEFAULT_KINDS
) -> FrameConvReport:
    """`rewrite` the ONNX file ``src`` into ``dst`` (default: in place). Nothing is written when
    no conv qualifies. The file's IR version is kept."""
    import onnx

    model = onnx.load(str(src))
    report = rewrite(model, kinds)
    if report.count:
        onnx.save(model, str(dst or src))
    elif dst is not None and Path(dst) != Path(src):
        shutil.copyfile(src, dst)
    return report


def rewrite_checked(
    path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    graph: str,
    kinds: Iterable[str] = DEFAULT_KINDS,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> FrameConvReport:
    """`rewrite_file` ``path`` in place, but only after ONNX Runtime ran the rewritten graph on
    ``samples`` within ``atol + rtol * max|original|`` of the original (per output; the parity
    gate's rule). Raises `export.parity.ParityError` naming the output and leaves ``path`` as
    it was."""
    import tempfile

    from export.parity import gate

    with tempfile.TemporaryDirectory(prefix="avaserve-rewrite-") as tmp:
        candidate = Path(tmp) / path.name
        report = rewrite_file(path, candidate, kinds)
        if not report.count:
            return report
        original = _OrtGraph(path)
        gate(candidate, original, samples, graph=graph, atol=atol, rtol=rtol)
        shutil.copyfile(candidate, path)
    return report


class _OrtGraph:
    """An ONNX file as a parity reference: feed -> outputs by name (CPU, float32)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = self.session.run(self.outputs, {n: feed[n] for n in self.inputs})
        return dict(zip(self.outputs, got, strict=True))

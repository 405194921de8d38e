"""A Triton Inference Server model repository from a bundle (``avaserve export --triton DIR``).

Layout written::

    DIR/<role>/config.pbtxt
    DIR/<role>/1/model.onnx     (platform onnxruntime_onnx)  or  1/model.plan (tensorrt_plan)

Batching choice. Triton's own batching (``max_batch_size > 0``) assumes every input and
output has the same leading batch axis that it can concatenate requests along and split
responses by. That holds only for a graph whose inputs and outputs all start with the same
dynamic axis: e.g. a head whose tensors all start with the person axis ``K`` (not
avaserve's own exports, whose bank has its own axis ``KB`` so that one window can serve
all persons of a keyframe). It does not
hold for the backbone (clips are ``(B, ...)`` but boxes and person features are ``(K, ...)``,
global features ``(B, ...)``) nor for the detector (``images (B, ...)`` -> ``boxes (N, 4)``):
concatenating two requests' boxes would need their batch-index column rewritten, which
Triton cannot do. Those graphs get ``max_batch_size: 0`` with the full shape and ``-1``
for dynamic axes, and no ``dynamic_batching`` block (Triton turns dynamic batching off at
``max_batch_size: 0``); the avaserve batchers form those batches client-side instead.
Where Triton batching does apply, ``max_batch_size`` is the top of the manifest's shape
range for that axis and the preferred sizes are the range's opt and max.

The config text is written by hand (no tritonclient at export time); the tests parse every
file with Triton's own ``model_config.proto`` schema.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal

from core.manifest import BundleManifest, GraphSpec, TensorSpec, load_manifest

__all__ = [
    "TritonError",
    "TritonOptions",
    "model_config_text",
    "triton_batch_axis",
    "write_triton_repository",
]

StrPath = str | PathLike[str]

_TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


class TritonError(ValueError):
    """A repository that cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class TritonOptions:
    """Knobs of the generated configs.

    ``max_queue_delay_us``: how long Triton holds a request hoping to fill a preferred
    batch; it adds up to that much latency per call, in exchange for larger batches.
    ``instance_count``: model copies per device; more overlap copies and compute at the
    cost of memory. ``use_engines``: serve the manifest's TensorRT engines
    (``tensorrt_plan``) where a graph has one, ONNX Runtime otherwise.
    ``ort_tensorrt``: let Triton's ONNX Runtime backend use its TensorRT accelerator.
    """

    instance_kind: Literal["KIND_GPU", "KIND_CPU"] = "KIND_GPU"
    instance_count: int = 1
    max_queue_delay_us: int = 2000
    use_engines: bool = False
    ort_tensorrt: bool = False


def triton_batch_axis(graph: GraphSpec) -> str | None:
    """The dynamic axis name shared as axis 0 by every input and output, if there is one."""
    tensors = [*graph.inputs, *graph.outputs]
    first = {t.shape[0] if t.shape else None for t in tensors}
    if len(first) == 1:
        (axis,) = first
        if isinstance(axis, str) and axis != "?":
            return axis
    return None


def _dims(shape: tuple[int | str, ...]) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + " ]"


def _tensor_block(t: TensorSpec, *, drop_batch: bool) -> str:
    shape = t.shape[1:] if drop_batch else t.shape
    if not shape:
        # A per-item scalar under Triton batching: Triton writes it as dims [ 1 ] + reshape.
        return (
            f'  {{\n    name: "{t.name}"\n    data_type: {_TRITON_DTYPES[t.dtype]}\n'
            f"    dims: [ 1 ]\n    reshape: {{ shape: [ ] }}\n  }}"
        )
    return (
        f'  {{\n    name: "{t.name}"\n    data_type: {_TRITON_DTYPES[t.dtype]}\n'
        f"    dims: {_dims(shape)}\n  }}"
    )


def model_config_text(
    name: str,
    graph: GraphSpec,
    *,
    platform: Literal["onnxruntime_onnx", "tensorrt_plan"],
    options: TritonOptions = TritonOptions(),
    precision: str = "fp16",
) -> str:
    """``config.pbtxt`` for one graph (see the module docstring for the batching rule)."""
    axis = triton_batch_axis(graph)
    max_batch = 0
    preferred: list[int] = []
    if axis is not None:
        ranges = [graph.shape_ranges.get(t.name) for t in graph.inputs]
        if all(r is not None for r in ranges):
            max_batch = min(r.max[0] for r in ranges if r is not None)
            opt = min(r.opt[0] for r in ranges if r is not None)
            preferred = sorted({s for s in (opt, max_batch) if 1 <= s <= max_batch})
    batched = max_batch > 0
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(_tensor_block(t, drop_batch=batched) for t in graph.inputs),
        "]",
        "output [",
        ",\n".join(_tensor_block(t, drop_batch=batched) for t in graph.outputs),
        "]",
        "instance_group [",
        f"  {{\n    count: {options.instance_count}\n    kind: {options.instance_kind}\n  }}",
        "]",
    ]
    if batched:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred)} ]",
            f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
            "}",
        ]
    if (
        platform == "onnxruntime_onnx"
        and options.ort_tensorrt
        and options.instance_kind == "KIND_GPU"
    ):
        mode = "FP16" if precision in ("fp16", "int8") else "FP32"
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            '        name: "tensorrt"',
            f'        parameters {{ key: "precision_mode" value: "{mode}" }}',
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    bundle_dir: StrPath,
    out_dir: StrPath,
    *,
    manifest: BundleManifest | None = None,
    roles: tuple[str, ...] | None = None,
    options: TritonOptions = TritonOptions(),
    prefix: str = "",
) -> list[Path]:
    """Write one Triton model per bundle graph; return the ``config.pbtxt`` paths.

    ``roles`` limits which graphs are written (default: all); model names are
    ``prefix + role``. Existing model directories of the same names are replaced.
    """
    bundle = Path(bundle_dir)
    manifest = manifest or load_manifest(bundle)
    out = Path(out_dir)
    engines = {e.graph: e for e in manifest.runtime.engines}
    wanted = roles or tuple(manifest.graphs)
    unknown = [r for r in wanted if r not in manifest.graphs]
    if unknown:
        raise TritonError(
            f"roles {unknown} are not graphs of this bundle ({sorted(manifest.graphs)})"
        )
    if options.instance_count < 1:
        raise TritonError(f"instance_count must be >= 1, got {options.instance_count}")
    written = []
    for role in wanted:
        graph = manifest.graphs[role]
        name = prefix + role
        model_dir = out / name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        engine = engines.get(role) if options.use_engines else None
        if engine is not None:
            shutil.copyfile(bundle / engine.file, model_dir / "1" / "model.plan")
            text = model_config_text(
                name, graph, platform="tensorrt_plan", options=options, precision=engine.precision
            )
        else:
            shutil.copyfile(bundle / graph.file, model_dir / "1" / "model.onnx")
            precision = "fp16" if manifest.runtime.ort_tensorrt.fp16 else "fp32"
            text = model_config_text(
                name, graph, platform="onnxruntime_onnx", options=options, precision=precision
            )
        cfg = model_dir / "config.pbtxt"
        cfg.write_text(text, encoding="utf-8")
        written.append(cfg)
    return written

"""TensorRT engines from the bundle's ONNX graphs (``avaserve export --tensorrt fp16|int8``).

Written against the TensorRT >= 10 Python API: ``Builder`` -> network (``create_network(0)``;
explicit batch is the only mode in 10) -> ``OnnxParser`` -> ``BuilderConfig`` with a
workspace limit, FP16/INT8 flags, one optimization profile per graph whose min/opt/max come
from the manifest's ``shape_ranges``, and for INT8 an ``IInt8EntropyCalibrator2`` fed
batches assembled from sample clips -> ``build_serialized_network``.

TensorRT and CUDA do not exist on the development machines. Everything that can run
without them is a pure function here (`profile_shapes`, `assemble_calibration_batches`,
`CalibrationCache`) and is unit-tested; the parts that touch ``tensorrt`` import it through
`require_tensorrt`, which fails with one clear `TensorRTUnavailable` message. NOT exercised
here: `build_engine` and `make_int8_calibrator` against a real TensorRT (see docs).

INT8 note: TensorRT 10.1+ deprecates implicit (calibrator) quantization in favour of
explicit Q/DQ graphs; the calibrator path still works in 10.x and needs no graph changes,
which is why it is used here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from core.manifest import EngineSpec, GraphSpec, sha256_file

__all__ = [
    "CalibrationCache",
    "ProfileShapes",
    "TensorRTBuildError",
    "TensorRTUnavailable",
    "assemble_calibration_batches",
    "build_engine",
    "concat_collate",
    "make_int8_calibrator",
    "profile_shapes",
    "require_tensorrt",
]

StrPath = str | PathLike[str]
Precision = Literal["fp32", "fp16", "int8"]
Batch = dict[str, NDArray[Any]]

_INSTALL_HINT = (
    "TensorRT is not installed: pip install 'avaserve[gpu]' on a machine with an NVIDIA GPU "
    "and a matching CUDA driver (TensorRT >= 10), then re-run the export. Without TensorRT, "
    "serve the ONNX graphs with ONNX Runtime (CPU/CUDA, or its TensorRT execution provider, "
    "whose options the manifest records)."
)


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` failed; the message says how to get it (raised without a chain)."""


class TensorRTBuildError(RuntimeError):
    """TensorRT refused the graph or the build; the message carries the parser/builder errors."""


def require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise `TensorRTUnavailable`."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTUnavailable(f"{_INSTALL_HINT} (import error: {e})") from None
    major = int(str(getattr(tensorrt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        raise TensorRTUnavailable(
            f"TensorRT {tensorrt.__version__} is too old; avaserve needs >= 10. {_INSTALL_HINT}"
        )
    return tensorrt


# -- profiles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileShapes:
    """One input of an optimization profile."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(graph: GraphSpec, *, role: str = "graph") -> list[ProfileShapes]:
    """Profile entries for every input of ``graph``, from the manifest's shape ranges.

    Static inputs get min = opt = max = their shape. A dynamic input without a range is an
    error: TensorRT would have to guess the range, and the service's batch/box/window
    limits must be the ones the engine was built for.
    """
    out = []
    for t in graph.inputs:
        rng = graph.shape_ranges.get(t.name)
        if rng is None:
            if any(isinstance(d, str) for d in t.shape):
                raise TensorRTBuildError(
                    f"graphs.{role}.shape_ranges has no entry for dynamic input {t.name!r} "
                    f"(shape {list(t.shape)}); add min/opt/max to the manifest at export"
                )
            static = tuple(int(d) for d in t.shape)
            out.append(ProfileShapes(t.name, static, static, static))
        else:
            out.append(ProfileShapes(t.name, rng.min, rng.opt, rng.max))
    return out


# -- calibration data ------------------------------------------------------------------------


def concat_collate(items: Sequence[Mapping[str, NDArray[Any]]]) -> Batch:
    """Stack samples along axis 0 (inputs whose first axis is the batch)."""
    names = list(items[0])
    return {n: np.ascontiguousarray(np.concatenate([it[n] for it in items], axis=0)) for n in names}


def assemble_calibration_batches(
    samples: Iterable[Mapping[str, NDArray[Any]]],
    *,
    batch_size: int,
    profile: Sequence[ProfileShapes],
    collate: Callable[[Sequence[Mapping[str, NDArray[Any]]]], Batch] = concat_collate,
    max_batches: int | None = None,
    keep_partial: bool = True,
) -> list[Batch]:
    """Group calibration samples into batches TensorRT can take.

    ``samples`` are per-clip input dicts (e.g. from sample clips through the preprocessing).
    ``collate`` merges ``batch_size`` of them (the backbone's ``boxes`` need their batch
    index column offset, so the export passes its own). Every batch is checked against
    the profile so calibration never feeds a shape the engine cannot run; a batch is cast
    to float32/int64 contiguous arrays as TensorRT bindings expect.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ranges = {p.input: p for p in profile}
    batches: list[Batch] = []
    pending: list[Mapping[str, NDArray[Any]]] = []

    def flush() -> None:
        batch = collate(pending)
        for name, p in ranges.items():
            if name not in batch:
                raise ValueError(f"calibration batch lacks input {name!r}")
            shape = batch[name].shape
            ok = len(shape) == len(p.min) and all(
                lo <= s <= hi for s, lo, hi in zip(shape, p.min, p.max, strict=True)
            )
            if not ok:
                raise ValueError(
                    f"calibration batch input {name!r} has shape {shape}, outside the profile "
                    f"min {p.min} .. max {p.max}; lower batch_size or widen the shape range"
                )
        batches.append(
            {
                k: np.ascontiguousarray(v, dtype=np.float32 if v.dtype.kind == "f" else v.dtype)
                for k, v in batch.items()
            }
        )
        pending.clear()

    for sample in samples:
        pending.append(sample)
        if len(pending) == batch_size:
            flush()
            if max_batches is not None and len(batches) >= max_batches:
                return batches
    if pending and keep_partial:
        flush()
    if not batches:
        raise ValueError("no calibration samples: pass at least one clip")
    return batches


@dataclass(frozen=True)
class CalibrationCache:
    """INT8 calibration table on disk, keyed by the graph's sha256.

    The key stops a table computed for another graph (or an older export) from being
    silently reused: a changed graph gets a new file and is recalibrated.
    """

    directory: Path
    graph_sha256: str

    @property
    def path(self) -> Path:
        return self.directory / f"calib-{self.graph_sha256[:16]}.cache"

    def read(self) -> bytes | None:
        return self.path.read_bytes() if self.path.is_file() else None

    def write(self, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(bytes(data))
        tmp.replace(self.path)


# -- TensorRT (needs the real library and a GPU) ---------------------------------------------


def make_int8_calibrator(
    trt: Any,
    batches: Sequence[Batch],
    cache: CalibrationCache,
    *,
    input_order: Sequence[str],
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` (device copies via torch.cuda).

    TensorRT 10 calls ``get_batch(names) -> list[int] | None`` with device pointers in
    ``names`` order, ``get_batch_size()``, and the two cache hooks.
    """
    try:
        import torch
    except ImportError:
        raise TensorRTUnavailable(
            "INT8 calibration copies batches to the GPU with torch.cuda: install the CUDA build "
            "of torch (pip install 'avaserve[export]')"
        ) from None
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("INT8 calibration needs a CUDA GPU; torch.cuda sees none")

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = list(batches)
            self._next = 0
            self._device: dict[str, Any] = {}  # keep tensors alive while TensorRT reads them

        def get_batch_size(self) -> int:
            first = self._batches[0][input_order[0]]
            return int(first.shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next >= len(self._batches):
                return None
            batch = self._batches[self._next]
            self._next += 1
            self._device = {n: torch.from_numpy(batch[n]).cuda() for n in names}
            return [int(self._device[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache.write(bytes(data))

    return _Calibrator()


def build_engine(
    onnx_path: StrPath,
    engine_path: StrPath,
    *,
    graph: GraphSpec,
    role: str,
    precision: Precision = "fp16",
    calibration_batches: Sequence[Batch] | None = None,
    calibration_dir: StrPath | None = None,
    workspace_bytes: int = 2 << 30,
) -> EngineSpec:
    """Build and write a serialized TensorRT engine for one bundle graph; return its record."""
    trt = require_tensorrt()
    profile_entries = profile_shapes(graph, role=role)
    if precision == "int8" and not calibration_batches:
        raise TensorRTBuildError(
            f"--tensorrt int8 for {role!r} needs calibration batches (sample clips); none given"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for p in profile_entries:
        profile.set_shape(p.input, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        # INT8 keeps FP16 on too, so layers TensorRT cannot quantize fall back to fp16.
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        assert calibration_batches is not None
        cache = CalibrationCache(
            Path(calibration_dir) if calibration_dir else Path(engine_path).parent,
            sha256_file(onnx_path),
        )
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_int8_calibrator(
            trt, calibration_batches, cache, input_order=[p.input for p in profile_entries]
        )
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(
            f"TensorRT failed to build {role!r} ({precision}); see the TensorRT log above"
        )
    data = bytes(serialized)
    Path(engine_path).write_bytes(data)
    device = None
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return EngineSpec(
        graph=role,
        file=Path(engine_path).name,
        sha256=hashlib.sha256(data).hexdigest(),
        precision=precision,
        tensorrt_version=str(trt.__version__),
        device_name=device,
    )

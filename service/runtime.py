"""Model runtimes behind one small interface (DESIGN.md: "Runtimes sit behind one small interface").

::

    Runtime.run({input name: array}) -> {output name: array}
    Runtime.input_names / output_names / input_shapes

* `OnnxRuntime`: ONNX Runtime with an ordered provider list (TensorRT EP, CUDA EP, CPU).
  Providers this onnxruntime build does not have are skipped with a logged warning, so the
  same settings run on a GPU node and on a laptop. Thread counts are explicit: the service
  runs three graphs plus decoding on a few cores, and ORT's default (one thread per core per
  session) oversubscribes them.
* `TensorRTRuntime`: a prebuilt ``*.plan`` engine through the ``tensorrt`` Python package and
  ``cuda-python``. Both are imported only when an engine is opened, so this module imports
  on any machine; without them the error says what to install.
* `create_runtime(bundle_dir, manifest, role, settings)`: the factory the engine uses.

The service never imports torch (tests/test_layering.py): bundles hold ONNX graphs or
TensorRT engines only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from core.manifest import BundleError, BundleManifest, tensorrt_ep_options

__all__ = [
    "PROVIDER_ALIASES",
    "OnnxRuntime",
    "Runtime",
    "RuntimeLoadError",
    "RuntimeSettings",
    "TensorRTRuntime",
    "create_runtime",
]

log = logging.getLogger(__name__)

StrPath = str | PathLike[str]
Arrays = dict[str, np.ndarray]

# Short names accepted in settings / on the command line.
PROVIDER_ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class RuntimeLoadError(RuntimeError):
    """A graph that cannot be opened or run on the requested runtime; the message says why."""


@runtime_checkable
class Runtime(Protocol):
    """One loaded graph. ``run`` is thread-safe for one caller at a time (a batcher's worker)."""

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    @property
    def input_shapes(self) -> dict[str, tuple[int | str | None, ...]]: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> Arrays: ...


@dataclass(frozen=True)
class RuntimeSettings:
    """How to run a bundle's graphs. Config stops at the edge: the CLI/app builds this once.

    providers: ONNX Runtime providers in preference order (aliases ``tensorrt``, ``cuda``,
        ``cpu`` or full names). Unavailable ones are skipped with a warning; CPU is always
        appended last so a graph always loads.
    intra_op_threads: threads inside one operator (a conv). 0 = ORT default (all cores).
        None = chosen per graph from the model's cost by the engine (`service.threads`).
    role_threads: per graph role (``backbone``, ``detector``, ...), overrides
        ``intra_op_threads``; the engine fills it from its `service.threads.ThreadPolicy`.
    inter_op_threads: threads running independent operators in parallel; 1 is right for
        these sequential CNN graphs.
    engine: "onnx" (ONNX Runtime) or "tensorrt" (the bundle's prebuilt ``*.plan`` engines).
    graph_optimization: ONNX Runtime's graph optimisation level: ``all`` (its default: every
        fusion plus the layout transformations, NCHWc for float convs and NHWC for int8 ones),
        ``extended`` or ``basic``. Measured on the R50 backbone, float32 and int8, side by
        side by bench/bench_speed.py (d) (bench/results/int8_vs_fp32.json, ``opt_levels``).
    spin_wait: let ORT's worker threads spin between operators (its default). Off here: the
        three graphs and the decoder run concurrently on few cores, and spinning threads burn
        the cycles the other graphs need (measured: end-to-end throughput drops sharply on a
        2-core machine with spinning on). Turn on for one graph per dedicated core set.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    engine: Literal["onnx", "tensorrt"] = "onnx"
    spin_wait: bool = False
    graph_optimization: Literal["all", "extended", "basic"] = "all"
    role_threads: dict[str, int] = field(default_factory=dict)
    extra_provider_options: dict[str, dict[str, str]] = field(default_factory=dict)


def _provider_name(name: str) -> str:
    return PROVIDER_ALIASES.get(name.lower(), name)


class OnnxRuntime:
    """An ONNX graph in an ``onnxruntime.InferenceSession``.

    ``provider_options`` maps a provider's full name to its options (e.g. the manifest's
    TensorRT EP profile shapes from `core.manifest.tensorrt_ep_options`).
    """

    def __init__(
        self,
        path: StrPath,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        provider_options: Mapping[str, Mapping[str, str]] | None = None,
        spin_wait: bool = False,
        graph_optimization: str = "all",
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        available = set(ort.get_available_providers())
        chosen: list[str] = []
        for p in (_provider_name(p) for p in providers):
            if p in chosen:
                continue
            if p not in available:
                log.warning(
                    "%s: execution provider %s is not available in this onnxruntime build "
                    "(has %s); falling back",
                    self.path.name,
                    p,
                    sorted(available),
                )
                continue
            chosen.append(p)
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(intra_op_threads))
        opts.inter_op_num_threads = max(0, int(inter_op_threads))
        opts.log_severity_level = 3
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }
        if graph_optimization not in levels:
            raise RuntimeLoadError(
                f"graph_optimization {graph_optimization!r}: choose one of {sorted(levels)}"
            )
        opts.graph_optimization_level = levels[graph_optimization]
        spin = "1" if spin_wait else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        popts = dict(provider_options or {})
        provider_args: list[Any] = [(p, dict(popts.get(p, {}))) for p in chosen]
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=provider_args
            )
        except Exception as e:  # ORT raises several unrelated exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeLoadError(
                f"{self.path.name}: ONNX Runtime cannot load it: {first}"
            ) from None
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self._inputs = tuple(a.name for a in self.session.get_inputs())
        self._outputs = tuple(a.name for a in self.session.get_outputs())
        self._shapes = {a.name: tuple(a.shape) for a in self.session.get_inputs()}

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def input_shapes(self) -> dict[str, tuple[int | str | None, ...]]:
        return dict(self._shapes)

    def run(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise RuntimeLoadError(f"{self.path.name}: inputs {missing} not given")
        feed = {n: inputs[n] for n in self._inputs}
        outs = self.session.run(list(self._outputs), feed)
        return dict(zip(self._outputs, outs, strict=True))


class TensorRTRuntime:
    """A prebuilt TensorRT engine (``*.plan``), run with explicit device buffers.

    Needs the ``tensorrt`` and ``cuda-python`` packages and a GPU matching the one the engine
    was built on (engines are device- and version-specific; the manifest records both).
    Dynamic shapes: each call sets the input shapes on the execution context, which must fall
    inside the engine's optimization profile (the manifest's ``shape_ranges``).
    """

    def __init__(self, path: StrPath) -> None:
        try:
            import tensorrt as trt  # noqa: F401
            from cuda import cudart  # noqa: F401
        except ImportError as e:
            raise RuntimeLoadError(
                f"{Path(path).name}: native TensorRT engines need the 'tensorrt' and "
                f"'cuda-python' packages and an NVIDIA GPU ({e.name} is missing); install "
                "avaserve[gpu], or use --engine onnx with providers tensorrt,cuda,cpu"
            ) from None
        self.path = Path(path)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise RuntimeLoadError(
                f"{self.path.name}: TensorRT could not deserialize the engine (built for another "
                "GPU or TensorRT version?); rebuild it with `avaserve export --tensorrt`"
            )
        self._trt = trt
        self._cudart = cudart
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._inputs = tuple(n for n in names if engine.get_tensor_mode(n) == mode)
        self._outputs = tuple(n for n in names if engine.get_tensor_mode(n) != mode)
        err, self._stream = cudart.cudaStreamCreate()

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def input_shapes(self) -> dict[str, tuple[int | str | None, ...]]:
        return {
            n: tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(n))
            for n in self._inputs
        }

    def run(self, inputs: Mapping[str, np.ndarray]) -> Arrays:  # pragma: no cover - needs a GPU
        trt, cudart, ctx = self._trt, self._cudart, self._context
        kind = cudart.cudaMemcpyKind
        allocations: list[int] = []
        try:
            for name in self._inputs:
                host = np.ascontiguousarray(inputs[name])
                ctx.set_input_shape(name, host.shape)
                _, ptr = cudart.cudaMalloc(max(1, host.nbytes))
                allocations.append(ptr)
                cudart.cudaMemcpyAsync(
                    ptr, host.ctypes.data, host.nbytes, kind.cudaMemcpyHostToDevice, self._stream
                )
                ctx.set_tensor_address(name, ptr)
            hosts: dict[str, np.ndarray] = {}
            for name in self._outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                dtype = trt.nptype(self._engine.get_tensor_dtype(name))
                hosts[name] = np.empty(shape, dtype=dtype)
                _, ptr = cudart.cudaMalloc(max(1, hosts[name].nbytes))
                allocations.append(ptr)
                ctx.set_tensor_address(name, ptr)
            ctx.execute_async_v3(self._stream)
            for name, ptr in zip(self._outputs, allocations[len(self._inputs) :], strict=True):
                h = hosts[name]
                cudart.cudaMemcpyAsync(
                    h.ctypes.data, ptr, h.nbytes, kind.cudaMemcpyDeviceToHost, self._stream
                )
            cudart.cudaStreamSynchronize(self._stream)
            return hosts
        finally:
            for ptr in allocations:
                cudart.cudaFree(ptr)


def create_runtime(
    bundle_dir: StrPath,
    manifest: BundleManifest,
    role: str,
    settings: RuntimeSettings | None = None,
    *,
    path: StrPath | None = None,
) -> Runtime:
    """Open graph ``role`` (``detector``, ``backbone``, ``head``, ``bank_backbone``) of a bundle.

    ``path`` overrides the file (the ``--detector PATH`` case). With ``engine="tensorrt"`` the
    manifest's engine for that role is used; TensorRT EP options (profile shapes, cache,
    fp16) come from the manifest's runtime hints.
    """
    settings = settings or RuntimeSettings()
    root = Path(bundle_dir)
    if path is None and role not in manifest.graphs:
        raise BundleError(
            None, f"graphs.{role}", f"the bundle has no {role!r} graph ({sorted(manifest.graphs)})"
        )
    if settings.engine == "tensorrt" and path is None:
        engines = [e for e in manifest.runtime.engines if e.graph == role]
        if not engines:
            raise BundleError(
                None,
                "runtime.engines",
                f"no TensorRT engine for {role!r}; export with --tensorrt or use engine onnx",
            )
        return TensorRTRuntime(root / engines[0].file)
    file = Path(path) if path is not None else root / manifest.graphs[role].file
    providers = tuple(_provider_name(p) for p in settings.providers)
    options: dict[str, dict[str, str]] = {
        k: dict(v) for k, v in settings.extra_provider_options.items()
    }
    if "TensorrtExecutionProvider" in providers and path is None:
        options.setdefault("TensorrtExecutionProvider", tensorrt_ep_options(manifest, role, root))
    threads = settings.role_threads.get(role, settings.intra_op_threads)
    return OnnxRuntime(
        file,
        providers=providers,
        intra_op_threads=0 if threads is None else threads,
        inter_op_threads=settings.inter_op_threads,
        provider_options=options,
        spin_wait=settings.spin_wait,
        graph_optimization=settings.graph_optimization,
    )

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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.manifest import ParityRecord

__all__ = [
    "DEFAULT_TOLERANCE",
    "OutputParity",
    "ParityError",
    "ParityReport",
    "check_parity",
    "max_abs_diff",
    "torch_reference",
]

StrPath = str | PathLike[str]
Inputs = Mapping[str, NDArray[Any]]
Outputs = Mapping[str, NDArray[Any]] | Sequence[NDArray[Any]]
Reference = Callable[[Inputs], Outputs]

DEFAULT_TOLERANCE = 1e-4  # fp32; fp16 engines need their own, looser, gate


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

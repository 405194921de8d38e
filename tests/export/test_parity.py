"""export/parity.py: the gate passes equal graphs and names graph, output and diff otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.parity import ParityError, check_parity, max_abs_diff, torch_reference

W = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)


@pytest.fixture
def linear_onnx(tmp_path: Path) -> Path:
    """y = x @ W, z = relu(y): two outputs."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "lin",
        [helper.make_tensor_value_info("x", f, ["K", 4])],
        [
            helper.make_tensor_value_info("y", f, ["K", 3]),
            helper.make_tensor_value_info("z", f, ["K", 3]),
        ],
        [numpy_helper.from_array(W, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "lin.onnx"))
    return tmp_path / "lin.onnx"


def _samples(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(size=(k, 4)).astype(np.float32)} for k in (1, 5, 0)[:n]]


class Lin(torch.nn.Module):
    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.from_numpy(W.copy()))
        self.bias = bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x @ self.w
        return y, torch.relu(y) + self.bias


def test_torch_module_passes(linear_onnx: Path) -> None:
    report = check_parity(linear_onnx, torch_reference(Lin(), ["x"]), _samples(), graph="lin")
    assert report.passed and report.samples == 3
    assert set(report.outputs) == {"y", "z"}
    assert report.worst().max_abs_diff < 1e-5
    record = report.record()
    assert record.samples == 3 and record.tolerance == 1e-4


def test_divergence_names_graph_output_and_diff(linear_onnx: Path) -> None:
    with pytest.raises(ParityError) as info:
        check_parity(linear_onnx, torch_reference(Lin(bias=3e-4), ["x"]), _samples(), graph="head")
    err = info.value
    assert (err.graph, err.output) == ("head", "z")
    assert err.diff == pytest.approx(3e-4, rel=1e-2)
    assert "graph 'head', output 'z'" in str(err) and "not written" in str(err)


def test_report_without_raising_and_per_output_tolerance(linear_onnx: Path) -> None:
    ref = torch_reference(Lin(bias=3e-4), ["x"])
    report = check_parity(linear_onnx, ref, _samples(), graph="g", raise_on_failure=False)
    assert not report.passed and report.outputs["y"].passed
    ok = check_parity(linear_onnx, ref, _samples(), graph="g", tolerance={"y": 1e-4, "z": 1e-3})
    assert ok.passed


def test_mapping_reference_and_shape_mismatch(linear_onnx: Path) -> None:
    def numpy_ref(feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        y = feed["x"] @ W
        return {"y": y, "z": np.maximum(y, 0)}

    assert check_parity(linear_onnx, numpy_ref, _samples(), graph="g").passed

    def wrong_shape(feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        y = feed["x"] @ W
        return {"y": y[:, :2], "z": np.maximum(y, 0)}

    with pytest.raises(ParityError, match=r"output 'y'.*shape"):
        check_parity(linear_onnx, wrong_shape, _samples(), graph="g")


def test_wrong_output_count_and_no_samples(linear_onnx: Path) -> None:
    with pytest.raises(ParityError, match="returned 1 outputs"):
        check_parity(linear_onnx, lambda feed: [feed["x"] @ W], _samples(), graph="g")
    with pytest.raises(ValueError, match="no samples"):
        check_parity(linear_onnx, torch_reference(Lin(), ["x"]), [], graph="g")


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [
        ([1.0, 2.0], [1.0, 2.5], 0.5),
        ([np.nan, 1.0], [np.nan, 1.0], 0.0),
        ([np.nan, 1.0], [0.0, 1.0], float("inf")),
        ([np.inf], [np.inf], 0.0),
        ([1.0], [[1.0]], float("inf")),
        ([], [], 0.0),
    ],
)
def test_max_abs_diff(a: list[float], b: list[float], diff: float) -> None:
    assert max_abs_diff(np.asarray(a), np.asarray(b))[0] == diff

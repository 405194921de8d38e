"""Runtimes: ONNX Runtime with provider fallback and thread settings, guarded TensorRT, factory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tiny_bundle as tb

from core.manifest import BundleError, load_manifest
from service.runtime import (
    OnnxRuntime,
    Runtime,
    RuntimeLoadError,
    RuntimeSettings,
    TensorRTRuntime,
    create_runtime,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_bundle(tmp_path_factory.mktemp("bundle"))


def test_onnx_runtime_runs_head(bundle: Path) -> None:
    rt = OnnxRuntime(bundle / "head.onnx", intra_op_threads=1)
    assert isinstance(rt, Runtime)
    assert rt.input_names == ("person", "global_per_person", "bank", "mask")
    assert rt.output_names == ("action", "scene")
    k, w = 3, 7
    out = rt.run(
        {
            "person": np.zeros((k, tb.D), np.float32),
            "global_per_person": np.zeros((k, tb.D), np.float32),
            "bank": np.ones((k, w, tb.D), np.float32),
            "mask": np.ones((k, w), np.float32),
        }
    )
    assert out["action"].shape == (k, len(tb.CLASS_IDS))
    assert ((out["action"] >= 0) & (out["action"] <= 1)).all()


def test_unavailable_providers_fall_back_to_cpu(
    bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        rt = OnnxRuntime(bundle / "head.onnx", providers=("tensorrt", "cuda", "cpu"))
    # This machine has no GPU build of onnxruntime: both GPU providers are skipped, loudly.
    import onnxruntime as ort

    for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        if name not in ort.get_available_providers():
            assert any(name in r.getMessage() for r in caplog.records)
    assert rt.providers[-1] == "CPUExecutionProvider"


def test_missing_input_and_bad_file(bundle: Path, tmp_path: Path) -> None:
    rt = OnnxRuntime(bundle / "head.onnx")
    with pytest.raises(RuntimeLoadError, match="not given"):
        rt.run({"person": np.zeros((1, tb.D), np.float32)})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(RuntimeLoadError, match="cannot load"):
        OnnxRuntime(bad)


def test_tensorrt_runtime_needs_tensorrt(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeLoadError, match="tensorrt"):
        TensorRTRuntime(tmp_path / "x.plan")


def test_factory(bundle: Path) -> None:
    m = load_manifest(bundle)
    for role in ("detector", "backbone", "head"):
        rt = create_runtime(bundle, m, role, RuntimeSettings(intra_op_threads=1))
        assert rt.input_names
    with pytest.raises(BundleError, match="bank_backbone"):
        create_runtime(bundle, m, "bank_backbone")
    with pytest.raises(BundleError, match="no TensorRT engine"):
        create_runtime(bundle, m, "head", RuntimeSettings(engine="tensorrt"))

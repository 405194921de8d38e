"""export/tensorrt.py without a GPU: clean failure, profiles, calibration batches and cache.

The real TensorRT build cannot run here. A stand-in ``tensorrt`` module records the calls
`build_engine` makes, to pin the sequence and the profile values it passes; it proves
nothing about the real library beyond the names used (checked against the TensorRT 10 docs).
"""

from __future__ import annotations

import sys
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.manifest import GraphSpec, ShapeRange, TensorSpec
from export.tensorrt import (
    CalibrationCache,
    ProfileShapes,
    TensorRTBuildError,
    TensorRTUnavailable,
    assemble_calibration_batches,
    build_engine,
    profile_shapes,
    require_tensorrt,
)

SHA = "ab" * 32


def _graph(ranges: bool = True) -> GraphSpec:
    return GraphSpec(
        file="backbone.onnx",
        sha256=SHA,
        inputs=(
            TensorSpec(name="slow", dtype="float32", shape=("B", 3, 8, 16, 16)),
            TensorSpec(name="boxes", dtype="float32", shape=("K", 5)),
            TensorSpec(name="scale", dtype="float32", shape=(1,)),
        ),
        outputs=(TensorSpec(name="person", dtype="float32", shape=("K", 32)),),
        shape_ranges=(
            {
                "slow": ShapeRange(
                    min=(1, 3, 8, 16, 16), opt=(4, 3, 8, 16, 16), max=(8, 3, 8, 16, 16)
                ),
                "boxes": ShapeRange(min=(1, 5), opt=(16, 5), max=(128, 5)),
            }
            if ranges
            else {}
        ),
    )


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import now raises ImportError


def test_missing_tensorrt_fails_cleanly(no_tensorrt: None, tmp_path: Path) -> None:
    with pytest.raises(TensorRTUnavailable) as info:
        build_engine(tmp_path / "x.onnx", tmp_path / "x.plan", graph=_graph(), role="backbone")
    msg = str(info.value)
    assert msg.startswith("TensorRT is not installed: pip install 'avaserve[gpu]'")
    assert "NVIDIA GPU" in msg
    # One exception, no "During handling of the above exception" chain for the CLI to print.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    text = "".join(traceback.format_exception_only(info.value))
    assert text.count("\n") == 1


def test_real_environment_has_no_tensorrt() -> None:
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(TensorRTUnavailable):
            require_tensorrt()
    else:  # pragma: no cover - a GPU machine
        pytest.skip("tensorrt is installed here")


def test_profile_shapes_from_manifest() -> None:
    shapes = profile_shapes(_graph())
    assert shapes == [
        ProfileShapes("slow", (1, 3, 8, 16, 16), (4, 3, 8, 16, 16), (8, 3, 8, 16, 16)),
        ProfileShapes("boxes", (1, 5), (16, 5), (128, 5)),
        ProfileShapes("scale", (1,), (1,), (1,)),
    ]
    with pytest.raises(
        TensorRTBuildError,
        match=r"graphs.backbone.shape_ranges has no entry for dynamic input 'slow'",
    ):
        profile_shapes(_graph(ranges=False), role="backbone")


def _clip(k: int) -> dict[str, np.ndarray]:
    return {
        "slow": np.zeros((1, 3, 8, 16, 16), np.float64),
        "boxes": np.zeros((k, 5), np.float32),
        "scale": np.ones((1,), np.float32),
    }


def _collate(items: Any) -> dict[str, np.ndarray]:
    # The backbone's own rule: stack clips, concatenate boxes with the batch index offset.
    boxes = []
    for i, it in enumerate(items):
        b = it["boxes"].copy()
        b[:, 0] = i
        boxes.append(b)
    return {
        "slow": np.concatenate([it["slow"] for it in items]),
        "boxes": np.concatenate(boxes),
        "scale": items[0]["scale"],
    }


@pytest.mark.parametrize(
    ("n", "batch", "keep_partial", "max_batches", "sizes", "error"),
    [
        (10, 4, True, None, [4, 4, 2], None),
        (10, 4, False, None, [4, 4], None),
        (10, 4, True, 2, [4, 4], None),
        (3, 8, True, None, None, "outside the profile"),  # 3 clips x 50 boxes > 128
        (0, 4, True, None, None, "no calibration samples"),
        (4, 0, True, None, None, "batch_size must be >= 1"),
    ],
)
def test_assemble_calibration_batches(
    n: int,
    batch: int,
    keep_partial: bool,
    max_batches: int | None,
    sizes: list[int] | None,
    error: str | None,
) -> None:
    profile = profile_shapes(_graph())
    k = 50 if error == "outside the profile" else 2  # 3 clips x 50 boxes = 150 > max 128
    samples = (_clip(k) for _ in range(n))
    if error:
        with pytest.raises(ValueError, match=error):
            assemble_calibration_batches(
                samples,
                batch_size=batch,
                profile=profile,
                collate=_collate,
                keep_partial=keep_partial,
            )
        return
    batches = assemble_calibration_batches(
        samples,
        batch_size=batch,
        profile=profile,
        collate=_collate,
        keep_partial=keep_partial,
        max_batches=max_batches,
    )
    assert [b["slow"].shape[0] for b in batches] == sizes
    assert all(b["slow"].dtype == np.float32 and b["slow"].flags.c_contiguous for b in batches)
    assert batches[0]["boxes"][:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_calibration_cache_is_keyed_by_graph(tmp_path: Path) -> None:
    a = CalibrationCache(tmp_path / "calib", "a" * 64)
    b = CalibrationCache(tmp_path / "calib", "b" * 64)
    assert a.read() is None
    a.write(b"TRT-table")
    assert a.read() == b"TRT-table" and b.read() is None
    assert a.path.name == "calib-aaaaaaaaaaaaaaaa.cache"


# -- a stand-in tensorrt module that records calls -------------------------------------------


def _fake_tensorrt(calls: list[tuple[Any, ...]], parse_ok: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            calls.append(("Logger", level))

    class Profile:
        def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
            calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, p: Profile) -> None:
            calls.append(("add_optimization_profile",))

        def set_flag(self, flag: str) -> None:
            calls.append(("set_flag", flag))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> object:
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: object, config: Config) -> bytes:
            calls.append(("build_serialized_network",))
            return b"PLAN"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: object, logger: Logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, i: int) -> str:
            return "Unsupported op FancyOp"

    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.Builder = Builder  # type: ignore[attr-defined]
    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")  # type: ignore[attr-defined]
    return trt


def test_build_engine_call_sequence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls))
    engine = build_engine(
        tmp_path / "b.onnx",
        tmp_path / "backbone.plan",
        graph=_graph(),
        role="backbone",
        precision="fp16",
    )
    assert (tmp_path / "backbone.plan").read_bytes() == b"PLAN"
    assert (
        engine.precision == "fp16"
        and engine.tensorrt_version == "10.3.0"
        and engine.file == "backbone.plan"
    )
    names = [c[0] for c in calls]
    assert (
        names.index("parse_from_file")
        < names.index("set_shape")
        < names.index("build_serialized_network")
    )
    assert ("create_network", 0) in calls and ("set_flag", "FP16") in calls
    assert ("set_shape", "boxes", (1, 5), (16, 5), (128, 5)) in calls


def test_build_engine_reports_parser_errors_and_int8_needs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt([], parse_ok=False))
    with pytest.raises(TensorRTBuildError, match="Unsupported op FancyOp"):
        build_engine(tmp_path / "b.onnx", tmp_path / "b.plan", graph=_graph(), role="backbone")
    with pytest.raises(TensorRTBuildError, match="needs calibration batches"):
        build_engine(
            tmp_path / "b.onnx",
            tmp_path / "b.plan",
            graph=_graph(),
            role="backbone",
            precision="int8",
        )
    # With batches, INT8 goes on to the calibrator, which needs CUDA: a clean error here.
    (tmp_path / "b.onnx").write_bytes(b"graph")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt([]))
    batches = assemble_calibration_batches(
        [_clip(2)], batch_size=1, profile=profile_shapes(_graph()), collate=_collate
    )
    with pytest.raises(TensorRTUnavailable, match="needs a CUDA GPU"):
        build_engine(
            tmp_path / "b.onnx",
            tmp_path / "b.plan",
            graph=_graph(),
            role="backbone",
            precision="int8",
            calibration_batches=batches,
        )

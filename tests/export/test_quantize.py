"""export/quantize.py: int8 backbones (`export --quantize int8`, `bundle quantize`), their
drift gate, the manifest record, and that the service runs them like any graph (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from core.manifest import BundleError, load_manifest, validate_bundle
from export.bundle import build_bundle, random_init_model
from export.quantize import QuantizationError, QuantizeOptions, calibration_feeds, quantize_bundle
from service.runtime import RuntimeSettings, create_runtime

SMALL = {"short_side": 64}


@pytest.fixture(scope="module")
def video(assets: Path) -> Path:
    return assets / "video" / "basketball_2people.mp4"


def _tiny_bundle(out: Path, video: Path, **options: Any) -> Path:
    """The tiny test model's bundle, built with export options ``options`` on top."""
    build_bundle(
        random_init_model("slowfast_tiny", overrides=SMALL),
        out,
        parity_video=video,
        parity_keyframes=2,
        slim=False,
        **options,
    )
    return out


@pytest.fixture(scope="module")
def fp32_bundle(video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bundle(tmp_path_factory.mktemp("q") / "fp32", video)


@pytest.fixture(scope="module")
def int8_bundle(video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "int8"
    return _tiny_bundle(out, video, quantize="int8", calibration_keyframes=3)


def test_export_quantize_int8_records_settings_and_drift(int8_bundle: Path) -> None:
    m = load_manifest(int8_bundle)
    q = m.quantization
    assert q is not None and q.mode == "int8" and q.graphs == ("backbone",)
    assert q.calibration_clips == 3 and "basketball_2people.mp4" in q.calibration
    assert q.per_channel and q.format == "QOperator" and "Conv" in q.op_types
    drift = q.drift["backbone"]
    assert set(drift) == {"person", "global"}
    for d in drift.values():
        assert q.min_cosine <= d.min_cosine <= 1.0 and d.max_abs > 0  # int8 is not float32
    # The int8 graph replaces the float32 one; the float32 parity record stays.
    assert m.graphs["backbone"].file == "backbone.int8.onnx"
    assert not (int8_bundle / "backbone.onnx").exists()
    assert m.parity["backbone"].max_abs_diff["person"] < 1e-4
    ops = {n.op_type for n in onnx.load(str(int8_bundle / "backbone.int8.onnx")).graph.node}
    assert "QLinearConv" in ops
    assert validate_bundle(int8_bundle)


def test_service_runs_the_int8_backbone_close_to_float32(
    fp32_bundle: Path, int8_bundle: Path, video: Path
) -> None:
    """Same seed, same weights: the int8 graph loads through the ordinary runtime factory and
    its features point the same way as the float32 ones (cosine), but are not identical."""
    mq, mf = load_manifest(int8_bundle), load_manifest(fp32_bundle)
    _, gate, _ = calibration_feeds(mf, video=video, count=2)
    rq = create_runtime(int8_bundle, mq, "backbone", RuntimeSettings(intra_op_threads=1))
    rf = create_runtime(fp32_bundle, mf, "backbone", RuntimeSettings(intra_op_threads=1))
    a, b = rf.run(gate[0])["person"], rq.run(gate[0])["person"]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert a.shape == b.shape and np.all(cos > 0.98) and not np.array_equal(a, b)


def test_drift_gate_refuses_and_writes_nothing(
    fp32_bundle: Path, video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "strict"
    with pytest.raises(QuantizationError, match="cosine similarity to float32 .* below"):
        quantize_bundle(
            fp32_bundle, out, video=video, calibration_keyframes=2,
            options=QuantizeOptions(min_cosine=1.0),
        )  # fmt: skip
    assert not out.exists()
    assert not list(tmp_path.glob(".strict*"))  # the work directory is gone too


def test_bundle_quantize_cli_and_bad_mode(fp32_bundle: Path, video: Path, tmp_path: Path) -> None:
    from avaserve.cli import app

    runner = CliRunner()
    out = tmp_path / "cli_int8"
    r = runner.invoke(
        app,
        ["bundle", "quantize", str(fp32_bundle), "--out", str(out), "--video", str(video),
         "--calibration-keyframes", "2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "int8 backbone vs float32: person max abs" in r.output
    assert load_manifest(out).quantization is not None
    again = runner.invoke(app, ["bundle", "quantize", str(out), "--out", str(tmp_path / "x")])
    assert again.exit_code == 1 and "already quantised" in again.output
    bad = runner.invoke(app, ["export", "--preset", "slowfast_tiny", "--random-init",
                              "--out", str(tmp_path / "b"), "--quantize", "int4"])  # fmt: skip
    assert bad.exit_code == 2 and "--quantize 'int4'" in bad.output
    both = runner.invoke(app, ["export", "--preset", "slowfast_tiny", "--random-init",
                               "--out", str(tmp_path / "b"), "--quantize", "int8",
                               "--tensorrt", "fp16"])  # fmt: skip
    assert both.exit_code == 2 and "TensorRT does not build" in both.output


def test_manifest_quantization_must_name_existing_graphs(int8_bundle: Path, tmp_path: Path) -> None:
    raw = json.loads((int8_bundle / "manifest.json").read_text())
    raw["quantization"]["graphs"] = ["backbone", "nonesuch"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="quantization.graphs names \\['nonesuch'\\]"):
        load_manifest(tmp_path)

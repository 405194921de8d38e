"""``avaserve export`` and ``avaserve bundle validate|info`` through the real command line."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import onnx
import pytest
from google.protobuf import text_format
from typer.testing import CliRunner

from avaserve.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _model_config_pb2() -> ModuleType:
    """Triton's ModelConfig schema as shipped by tritonclient (as in test_triton.py)."""
    pytest.importorskip("tritonclient")
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):
        import tritonclient

        path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@pytest.fixture(scope="module")
def exported(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("cli")
    out, triton = root / "bundle", root / "triton"
    result = runner.invoke(
        app,
        [
            "export",
            "--preset",
            "slowfast_tiny",
            "--random-init",
            "--detector",
            f"yolox:{assets / 'detector' / 'yolox_nano.onnx'}",
            "--parity-video",
            str(assets / "video" / "basketball_2people.mp4"),
            "--parity-keyframes",
            "1",
            "--no-slim",
            "--out",
            str(out),
            "--triton",
            str(triton),
        ],
    )
    assert result.exit_code == 0, result.output
    return out, triton, result.output


def test_export_prints_parity_and_validates(exported: tuple[Path, Path, str]) -> None:
    out, _, output = exported
    assert "parity backbone: person" in output and "parity head: action" in output
    assert "parity detector: boxes" in output
    assert "validated" in output
    result = runner.invoke(app, ["bundle", "validate", str(out)])
    assert result.exit_code == 0, result.output
    for line in ("manifest.json", "backbone.onnx", "head.onnx", "detector.onnx", "is valid"):
        assert line in result.output


def test_bundle_info(exported: tuple[Path, Path, str]) -> None:
    result = runner.invoke(app, ["bundle", "info", str(exported[0])])
    assert result.exit_code == 0, result.output
    assert "slowfast_tiny" in result.output and "UNTRAINED" in result.output
    assert "61 s x 5/s" in result.output


def test_triton_configs_parse(exported: tuple[Path, Path, str]) -> None:
    _, triton, _ = exported
    pb2 = _model_config_pb2()
    configs = sorted(triton.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["backbone", "detector", "head"]
    for path in configs:
        config = pb2.ModelConfig()
        text_format.Parse(path.read_text(), config)
        assert config.platform == "onnxruntime_onnx"
        assert (path.parent / "1" / "model.onnx").is_file()
    head = pb2.ModelConfig()
    text_format.Parse((triton / "head" / "config.pbtxt").read_text(), head)
    # The bank has its own leading axis (KB: one window may serve K persons), so the
    # head's tensors do not share one batch axis and avaserve batches it client-side.
    assert head.max_batch_size == 0
    assert [list(i.dims)[0] for i in head.input] == [-1, -1, -1, -1]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_flipped_byte_is_refused(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    b = _copy(exported[0], tmp_path / "b")
    data = bytearray((b / "head.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "head.onnx").write_bytes(bytes(data))
    result = runner.invoke(app, ["bundle", "validate", str(b)])
    assert result.exit_code == 1
    assert "head.onnx" in result.output and "graphs.head.sha256" in result.output


def test_renamed_output_is_refused(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    b = _copy(exported[0], tmp_path / "b")
    # A re-exported head whose output got another name, with a matching hash in the manifest:
    # only the I/O check can catch it.
    model = onnx.load(str(b / "head.onnx"))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["action_probs" if o == old else o for o in node.output]
    model.graph.output[0].name = "action_probs"
    onnx.save(model, str(b / "head.onnx"))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["graphs"]["head"]["sha256"] = hashlib.sha256(
        (b / "head.onnx").read_bytes()
    ).hexdigest()
    (b / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["bundle", "validate", str(b)])
    assert result.exit_code == 1
    assert "head.onnx" in result.output and "graphs.head.outputs" in result.output
    assert "action_probs" in result.output


def test_corrupt_manifest_is_refused(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    b = _copy(exported[0], tmp_path / "b")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["preprocessing"]["alpha"] = 3  # 16 frames are not a multiple of 3
    (b / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["bundle", "validate", str(b)])
    assert result.exit_code == 1
    assert "manifest.json" in result.output and "preprocessing" in result.output


def test_tensorrt_fails_cleanly_without_tensorrt(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    out = tmp_path / "b"
    result = runner.invoke(
        app,
        [
            "export",
            "--preset",
            "slowfast_tiny",
            "--random-init",
            "--tensorrt",
            "fp16",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TensorRT is not installed" in errors[0]
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--preset", "slowfast_tiny"], "--random-init"),
        (["--preset", "slowfast_tiny", "--random-init", "--checkpoint", "x.pt"], "exactly one"),
        (["--preset", "slowfast_tiny", "--random-init", "--tensorrt", "fp8"], "fp16 or int8"),
    ],
)
def test_usage_errors(args: list[str], match: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", *args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and match in result.output


def test_refuses_to_overwrite_without_force(exported: tuple[Path, Path, str]) -> None:
    result = runner.invoke(
        app, ["export", "--preset", "slowfast_tiny", "--random-init", "--out", str(exported[0])]
    )
    assert result.exit_code == 1 and "--force" in result.output


def test_validate_and_info_run_without_torch(exported: tuple[Path, Path, str]) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises\n"
        "from typer.testing import CliRunner\n"
        "from avaserve.cli import app\n"
        "r = CliRunner()\n"
        f"v = r.invoke(app, ['bundle', 'validate', {str(exported[0])!r}])\n"
        f"i = r.invoke(app, ['bundle', 'info', {str(exported[0])!r}])\n"
        "print(v.output, i.output)\n"
        "assert v.exit_code == 0 and i.exit_code == 0, (v.exception, i.exception)\n"
        "assert sys.modules['torch'] is None\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is valid" in proc.stdout and "slowfast_tiny" in proc.stdout

"""`avaserve import-checkpoint`: writes our checkpoint on a strict match, nothing otherwise."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import source_layouts as L
import torch
import typer
from cli_support import command_app
from typer.testing import CliRunner

from export.import_cli import parse_overrides, register
from models.checkpoints import build_model, load_checkpoint
from models.importers import import_state_dict


def _app() -> typer.Typer:
    return command_app(register)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(), list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def pyth(tmp_path: Path) -> Path:
    """A PySlowFast .pyth of the tiny architecture."""
    path = tmp_path / "tiny.pyth"
    state = L.random_state(L.layout("pyslowfast", L.TINY))
    torch.save({"epoch": 3, "model_state": state, "optimizer_state": {}}, path)
    return path


def test_import_writes_a_checkpoint_that_rebuilds(tmp_path: Path, pyth: Path) -> None:
    out = tmp_path / "out" / "tiny.ckpt"
    code, stdout, stderr = _run(
        "import-checkpoint", "--format", "pyslowfast", str(pyth), "--preset", "slowfast_tiny",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    assert "0 unmapped source keys, 0 missing target keys, 0 shape mismatches" in stdout
    assert f"wrote {out}" in stdout
    ckpt = load_checkpoint(out)
    assert ckpt.preset == "slowfast_tiny" and ckpt.classes == list(range(1, 81))
    assert ckpt.source is not None and ckpt.source["format"] == "pyslowfast"
    assert len(ckpt.source["sha256"]) == 64
    model = build_model(ckpt)
    direct = import_state_dict(
        torch.load(pyth, weights_only=True)["model_state"], "pyslowfast", preset="slowfast_tiny"
    ).model
    for key, value in direct.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_caffe2_pkl_with_report_and_overrides(tmp_path: Path) -> None:
    blobs = L.as_caffe2_blobs(L.random_state(L.layout("caffe2", L.TINY)))
    src = tmp_path / "tiny_c2.pkl"
    with src.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    out = tmp_path / "c2.ckpt"
    code, stdout, stderr = _run(
        "import-checkpoint", "--format", "pyslowfast", str(src), "--preset", "slowfast_tiny",
        "--out", str(out), "--report", "--set", "alpha=8",
    )  # fmt: skip
    assert code == 0, stderr
    assert "import caffe2 -> preset slowfast_tiny" in stdout
    assert "res2_0_branch2a_w -> backbone.stages.0.slow.blocks.0.conv_a.weight" in stdout
    ckpt = load_checkpoint(out)
    assert ckpt.preset_overrides["alpha"] == 8
    assert build_model(ckpt).backbone.alpha == 8


def test_mismatch_writes_nothing_and_names_the_key(tmp_path: Path) -> None:
    state = L.random_state(L.layout("pyslowfast", L.TINY))
    state["s3.pathway0_res1.branch2.d.weight"] = torch.zeros(3)
    src = tmp_path / "bad.pyth"
    torch.save({"model_state": state}, src)
    out = tmp_path / "bad.ckpt"
    code, _, stderr = _run(
        "import-checkpoint", "--format", "pyslowfast", str(src), "--preset", "slowfast_tiny",
        "--out", str(out),
    )  # fmt: skip
    assert code == 2
    assert "s3.pathway0_res1.branch2.d.weight" in stderr
    assert "nothing written" in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--format", "detectron"], "is not one of"),
        (["--format", "pyslowfast", "--set", "alpha"], "expected KEY=VALUE"),
    ],
)
def test_bad_options(tmp_path: Path, pyth: Path, args: list[str], match: str) -> None:
    code, stdout, stderr = _run(
        "import-checkpoint", str(pyth), "--out", str(tmp_path / "x.ckpt"), *args
    )
    assert code == 2
    assert match in stdout + stderr


def test_parse_overrides() -> None:
    assert parse_overrides(["alpha=8", "class_ids=[1, 2, 3]", "name=plain", "x=null"]) == {
        "alpha": 8,
        "class_ids": (1, 2, 3),
        "name": "plain",
        "x": None,
    }

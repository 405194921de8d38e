"""The co-occurrence heat map and the `plot-cooccurrence` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from training.balancing import cooccurrence_matrix
from training.plots import plot_cooccurrence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_cooccurrence_writes_png_with_zeros(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.random((200, 6)) < np.array([0.6, 0.3, 0.1, 0.02, 0.0, 0.4])
    before = cooccurrence_matrix(y)
    assert (before == 0).any()  # zeros must not break LogNorm
    after = before * 2
    out = plot_cooccurrence(before, after, [f"class {i}" for i in range(6)], tmp_path / "c.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_cooccurrence_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class names"):
        plot_cooccurrence(np.eye(3), np.eye(3), ["a", "b"], tmp_path / "x.png")


def test_plot_cooccurrence_command(tmp_path: Path) -> None:
    from training.balance_cli import register

    rng = np.random.default_rng(0)
    lines = []
    for ts in range(902, 962):
        for person in range(3):
            pose = 12 if rng.random() < 0.7 else 11
            acts = {pose} | ({79} if rng.random() < 0.5 else set())
            if rng.random() < 0.05:
                acts.add(49)  # rare: ride
            lines += [f"vid,{ts},0.1,0.1,0.5,0.9,{a},{person}" for a in sorted(acts)]
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep the sub-command name on the command line
        pass

    out = tmp_path / "co.png"
    result = CliRunner().invoke(
        app,
        [
            "plot-cooccurrence",
            "--annotations",
            str(csv),
            "--out",
            str(out),
            "--frequent-threshold",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "ride" in result.output and "stand" in result.output
    bad = CliRunner().invoke(
        app, ["plot-cooccurrence", "--annotations", str(tmp_path / "nope.csv"), "--out", str(out)]
    )
    assert bad.exit_code == 2 and "error" in bad.output

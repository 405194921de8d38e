"""`avaserve annotate`: outputs, summary, and one-line errors with distinct exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_bundle as tb
from typer.testing import CliRunner

from avaserve.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tb.make_bundle(tmp_path_factory.mktemp("bundle"))


def test_annotate_writes_outputs(bundle: Path, tmp_path: Path) -> None:
    video = tb.make_video(tmp_path / "clip.mp4", seconds=3.1, fps=10, size=(160, 120))
    out, csv, mp4 = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "r.mp4"
    res = runner.invoke(
        app,
        [
            "annotate", str(video), "--bundle", str(bundle), "--out", str(out), "--csv", str(csv),
            "--render", str(mp4), "--threads", "1", "--csv-top-k", "2", "-q",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 4 and {r["time"] for r in rows} == {0.0, 1.0, 2.0, 3.0}
    assert len(csv.read_text().splitlines()) == 2 * 4 * 2
    assert mp4.stat().st_size > 0
    assert "real-time factor" in res.output and "persons (tracks)" in res.output


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (b"", 3, "empty"),
        (b"#EXTM3U\n#EXT-X-VERSION:3\nhttp://127.0.0.1:9/x.ts\n", 3, "unsupported_format"),
        (None, 3, "no such file"),
    ],
)
def test_bad_video_one_line_error(
    bundle: Path, tmp_path: Path, content: bytes | None, code: int, message: str
) -> None:
    video = tmp_path / "bad.mp4"
    if content is not None:
        video.write_bytes(content)
    out = tmp_path / "r.jsonl"
    res = runner.invoke(
        app, ["annotate", str(video), "--bundle", str(bundle), "--out", str(out), "-q"]
    )
    assert res.exit_code == code
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()  # no half-written results for a refused video


def test_missing_bundle_says_how_to_get_one(tmp_path: Path) -> None:
    video = tb.make_video(tmp_path / "clip.mp4", seconds=1.0, fps=10, size=(64, 48))
    res = runner.invoke(app, ["annotate", str(video), "--bundle", str(tmp_path / "nope")])
    assert res.exit_code == 4 and "no model bundle" in res.output


def test_window_longer_than_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    video = tb.make_video(tmp_path / "clip.mp4", seconds=1.0, fps=10, size=(64, 48))
    res = runner.invoke(
        app, ["annotate", str(video), "--bundle", str(bundle), "--window", "99", "-q"]
    )
    assert res.exit_code == 2 and "--window 99" in res.output

"""A tiny generated world on disk: layout, determinism, decodable videos, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from avaserve.cli import app
from core.ava import POSE_IDS, read_label_map_pbtxt
from core.ava_data import read_dataset_info
from training.world import classes as C
from training.world.generate import WorldConfig, generate_world

# Long enough for a long-term story (evidence + 10 s before the last keyframe), short
# enough to render in a couple of seconds.
TINY = WorldConfig(
    seed=3,
    train_videos=1,
    val_videos=1,
    seconds=30,
    classification=True,
    cls_train_per_class=1,
    cls_val_per_class=1,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, TINY, workers=1)
    return out


def test_layout(world: Path) -> None:
    for name in (
        "annotations/label_map.pbtxt",
        "annotations/train.csv",
        "annotations/val.csv",
        "annotations/excluded_train.csv",
        "annotations/excluded_val.csv",
        "dataset.json",
        "CARD.md",
        "videos/train_000.mp4",
        "videos/val_000.mp4",
        "classification/train.csv",
        "classification/val.csv",
        "classification/classes.txt",
    ):
        assert (world / name).is_file(), name
    card = (world / "CARD.md").read_text()
    for c in C.WORLD_CLASSES:
        assert f"| {c.id} | {c.name} |" in card


def test_same_seed_gives_byte_identical_csvs(world: Path, tmp_path: Path) -> None:
    # Render only the annotation side again: videos are not compared (x264 bytes may
    # differ between builds); the labels must not.
    again = tmp_path / "again"
    generate_world(again, TINY, workers=1)
    for name in ("train.csv", "val.csv", "label_map.pbtxt"):
        a = (world / "annotations" / name).read_bytes()
        assert a == (again / "annotations" / name).read_bytes(), name
        assert a
    for name in ("train.csv", "val.csv"):
        a = (world / "classification" / name).read_bytes()
        assert a == (again / "classification" / name).read_bytes()


def test_dataset_json(world: Path) -> None:
    info = json.loads((world / "dataset.json").read_text())
    assert info["fps"] == 15 and info["size"] == [320, 240] and info["time_offset"] == 0
    parsed = read_dataset_info(world)  # the project's own reader accepts it
    assert parsed.classes is not None and set(parsed.classes.ids) == {c.id for c in C.WORLD_CLASSES}
    seeds = [v["seed"] for v in info["videos"]]
    seeds += info["classification"]["seeds"]["train"] + info["classification"]["seeds"]["val"]
    assert len(seeds) == len(set(seeds))
    assert {lt["id"] for lt in info["long_term"]} == set(C.LONG_TERM)
    assert {ev["state_id"] for ev in info["evidence_events"]} == set(C.LONG_TERM)


def test_label_map_parses(world: Path) -> None:
    label_map = read_label_map_pbtxt(world / "annotations" / "label_map.pbtxt")
    assert label_map.ids == tuple(c.id for c in C.WORLD_CLASSES)
    assert label_map.pose_ids == tuple(c.id for c in C.WORLD_CLASSES if c.kind == "pose")


def test_annotation_rows(world: Path) -> None:
    info = json.loads((world / "dataset.json").read_text())
    evidence = {(e["video_id"], e["person_id"], e["state_id"]): e for e in info["evidence_events"]}
    per_person: dict[tuple[str, int, int], list[int]] = {}
    with (world / "annotations" / "train.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows
    for row in rows:
        assert len(row) == 8
        video, t, pid = row[0], int(row[1]), int(row[7])
        box = [float(v) for v in row[2:6]]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        action = int(row[6])
        per_person.setdefault((video, t, pid), []).append(action)
        if action in C.LONG_TERM:
            ev = evidence[(video, pid, action)]
            assert t - ev["time"] >= 10
    for actions in per_person.values():
        assert sum(a in POSE_IDS for a in actions) == 1


@pytest.mark.parametrize("name", ["train_000", "val_000"])
def test_videos_decode(world: Path, name: str) -> None:
    with av.open(str(world / "videos" / f"{name}.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 15
        frames = list(container.decode(video=0))
    assert len(frames) == TINY.seconds * TINY.fps
    assert (frames[0].width, frames[0].height) == (320, 240)
    assert frames[0].format.name == "yuv420p"


def test_classification_variant(world: Path) -> None:
    root = world / "classification"
    names = root.joinpath("classes.txt").read_text().splitlines()
    assert names == [C.CLASS_BY_ID[i].name for i in C.CLASSIFICATION_IDS]
    for split in ("train", "val"):
        with (root / f"{split}.csv").open() as fh:
            rows = list(csv.reader(fh))
        assert sorted(label for _, label in rows) == sorted(names)  # one clip per class
        with av.open(str(root / rows[0][0])) as container:
            assert sum(1 for _ in container.decode(video=0)) == 2 * TINY.fps


def test_preview_writes_png(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        app, ["world-preview", str(world), "--out", str(out), "--cols", "2", "--rows", "2"]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000


def test_make_world_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["make-world", "--help"])
    assert result.exit_code == 0
    for option in ("--seed", "--videos", "--seconds", "--val-videos", "--classification",
                   "--persons", "--fps", "--size", "--force"):  # fmt: skip
        assert option in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--persons", "5-2"], 2, "MIN"),
        (["--size", "321x240"], 2, "even"),
        (["--size", "big"], 2, "WIDTHxHEIGHT"),
    ],
)
def test_make_world_rejects_bad_options(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = CliRunner().invoke(app, ["make-world", str(tmp_path / "w"), *args])
    assert result.exit_code == code
    assert message in result.output


def test_make_world_refuses_non_empty_dir_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "w"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    (out / "dataset.json").write_text("{}")
    runner = CliRunner()
    base = ["make-world", str(out), "--videos", "1", "--val-videos", "0", "--seconds", "6"]
    refused = runner.invoke(app, base)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert (out / "dataset.json").read_text() == "{}"
    forced = runner.invoke(app, [*base, "--force", "--workers", "1"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "dataset.json").read_text())["fps"] == 15
    assert keep.read_text() == "mine"  # --force replaces only the world's own files


def test_preview_with_more_tiles_than_keyframes(world: Path, tmp_path: Path) -> None:
    from training.world.preview import contact_sheet

    out = contact_sheet(world, tmp_path / "big.png", cols=8, rows=8, scale=0.5)
    assert out.is_file()


def test_preview_rejects_a_non_world_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["world-preview", str(tmp_path)])
    assert result.exit_code == 2
    assert "dataset.json" in result.output

"""export/bundle.py: tiny-preset bundles end to end (export, parity gate, manifest, validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import export.parity as parity_mod
from core.manifest import load_manifest, validate_bundle
from export.bundle import (
    CheckpointError,
    ExportError,
    ExportLimits,
    build_bundle,
    load_action_model,
    load_checkpoint_models,
    parse_detector,
    random_init_model,
)
from export.detector import graph_domains
from export.parity import ParityError
from models.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from models.onnx_utils import HEAD_INPUTS
from models.presets import slowfast_tiny

# Small spatial size keeps the tests fast: 64-px short side -> a 4 x 7 feature map.
SMALL = {"short_side": 64}


@pytest.fixture(scope="module")
def video(assets: Path) -> Path:
    return assets / "video" / "basketball_2people.mp4"


@pytest.fixture(scope="module")
def full_bundle(assets: Path, video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFB + global on, YOLOX detector, onnxslim on: the service's development layout."""
    out = tmp_path_factory.mktemp("bundles") / "full"
    loaded = random_init_model("slowfast_tiny", overrides=SMALL)
    det = parse_detector(f"yolox:{assets / 'detector' / 'yolox_nano.onnx'}")
    build_bundle(loaded, out, detector=det, parity_video=video, parity_keyframes=2)
    return out


def test_bundle_validates_with_parity_records(full_bundle: Path) -> None:
    checks = validate_bundle(full_bundle)
    assert {c.file for c in checks} >= {"backbone.onnx", "head.onnx", "detector.onnx"}
    m = load_manifest(full_bundle)
    assert set(m.parity) == {"backbone", "head", "detector"}
    for role, rec in m.parity.items():
        outputs = [t.name for t in m.graphs[role].outputs]
        assert sorted(rec.max_abs_diff) == sorted(outputs), role
        assert rec.tolerance <= 1e-4
        assert all(0.0 <= d <= 1e-4 for d in rec.max_abs_diff.values()), (role, rec)
        assert rec.samples >= 2
    # Integer detector outputs must agree exactly.
    assert m.parity["detector"].max_abs_diff["class_ids"] == 0.0
    assert m.parity["detector"].max_abs_diff["batch_index"] == 0.0


def test_manifest_describes_what_was_exported(full_bundle: Path) -> None:
    m = load_manifest(full_bundle)
    assert m.model.preset == "slowfast_tiny"
    assert m.model.class_ids == tuple(range(1, 81))
    assert m.model.pose_ids == tuple(range(1, 15))
    assert len(m.model.evaluated_ids) == 60
    assert m.model.roi_sampling_ratio == 2  # the presets' fixed ratio
    assert m.model.output_activation == "pose_softmax_sigmoid"
    assert m.model.roi_temporal_pool == "avg"
    p = m.preprocessing
    assert (p.short_side, p.num_frames, p.alpha, p.sampling_rate) == (64, 16, 4, 2)
    assert p.clip_alignment == "center" and p.mean == (0.45, 0.45, 0.45)
    assert m.bank.enabled and m.bank.source == "backbone" and m.bank.feature_dim == 144
    assert (m.bank.window_seconds, m.bank.persons_per_second) == (61, 5)
    # The windows and the head's window sharing are written, not left to the service to derive.
    assert (m.bank.file_window, m.bank.live_window) == ((-30, 30), (-60, 0))
    assert m.bank.shared_window is True  # the LFB head broadcasts over persons
    assert m.detector is not None and m.detector.format == "yolox"
    assert m.detector.score_threshold == 0.8
    head = m.graphs["head"]
    assert [t.name for t in head.inputs] == list(HEAD_INPUTS)
    assert [t.name for t in head.outputs] == ["action", "scene"]
    assert head.shape_ranges["bank"].max == (128, 305, 144)
    backbone = m.graphs["backbone"]
    assert backbone.inputs[0].shape == ("B", 3, 4, "height", "width")
    assert set(backbone.shape_ranges) == {"slow", "fast", "boxes"}
    assert "UNTRAINED" in (m.provenance.checkpoint or "")
    assert m.provenance.torch_version and m.provenance.onnx_version
    for g in m.graphs.values():
        model = onnx.load(str(full_bundle / g.file), load_external_data=False)
        assert model.ir_version == 8, g.file
        assert g.opset == 17


def test_graphs_use_only_the_default_onnx_domain(full_bundle: Path) -> None:
    m = load_manifest(full_bundle)
    for g in m.graphs.values():
        domains = graph_domains(full_bundle / g.file)
        ops = sorted(domains.get("", set()))
        print(f"{g.file}: {ops}")  # the op list, for the record (pytest -s)
        assert set(domains) == {""}, (g.file, domains)
        assert ops, g.file


def test_head_probabilities_and_dynamic_axes_run(full_bundle: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(full_bundle / "head.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for k, w in ((1, 1), (3, 7), (0, 5)):
        feed = {
            "person": rng.normal(size=(k, 144)).astype(np.float32),
            "global_per_person": rng.normal(size=(k, 144)).astype(np.float32),
            "bank": rng.normal(size=(k, w, 144)).astype(np.float32),
            "mask": np.ones((k, w), np.float32),
        }
        action, scene = sess.run(None, feed)
        assert action.shape == (k, 80) and scene.shape == (k, 80)
        if k:
            np.testing.assert_allclose(action[:, :14].sum(axis=1), 1.0, atol=1e-5)  # pose softmax
            assert ((action >= 0) & (action <= 1)).all()


def test_parity_failure_refuses_to_write(
    video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = parity_mod.features_reference

    def off_by_1e2(model: object) -> object:
        inner = real(model)  # type: ignore[arg-type]

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = dict(inner(feed))
            out["person"] = out["person"] + np.float32(1e-2)
            return out

        return run

    monkeypatch.setattr(parity_mod, "features_reference", off_by_1e2)
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("previous bundle")
    loaded = random_init_model("slowfast_tiny", use_lfb=False, use_global=False, overrides=SMALL)
    with pytest.raises(ParityError) as exc:
        build_bundle(loaded, out, parity_video=video, parity_keyframes=1, slim=False, force=True)
    e = exc.value
    assert (e.graph, e.output) == ("backbone", "person")
    assert 0.009 < e.diff < 0.011
    assert "backbone" in str(e) and "person" in str(e) and "not written" in str(e)
    # Nothing replaced, nothing left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_without_lfb_and_global_the_head_has_no_bank_or_scene(video: Path, tmp_path: Path) -> None:
    """Also: adaptive RoIAlign sampling, the all-sigmoid activation and a temporal max pool
    (imported heads) pass the parity gate, and the manifest records them."""
    overrides = {
        **SMALL,
        "sampling_ratio": 0,
        "output_activation": "sigmoid",
        "roi_temporal_pool": "max",
    }
    loaded = random_init_model(
        "slowfast_tiny", use_lfb=False, use_global=False, overrides=overrides
    )
    build_bundle(loaded, tmp_path / "b", parity_video=video, parity_keyframes=1, slim=False)
    m = load_manifest(tmp_path / "b")
    assert m.model.roi_sampling_ratio == 0 and m.model.roi_temporal_pool == "max"
    assert m.model.output_activation == "sigmoid" and not any(m.model.softmax_mask())
    head = m.graphs["head"]
    assert [t.name for t in head.outputs] == ["action"]
    assert not {"bank", "mask"} & {t.name for t in head.inputs}
    assert not m.bank.enabled and m.bank.feature_dim == 0
    assert m.bank.shared_window is False  # no bank input to share
    assert m.detector is None and "detector" not in m.graphs
    assert set(m.parity) == {"backbone", "head"}


def test_checkpoint_with_stage1_bank_model(video: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    classes = (1, 2, 3, 11, 12, 17, 59, 74, 79, 80)
    options2 = {"use_lfb": True, "use_global": False, "class_ids": classes, **SMALL}
    stage2 = slowfast_tiny(**options2)
    stage1 = slowfast_tiny(class_ids=classes, **SMALL)
    ckpt = tmp_path / "stage2.pt"
    save_checkpoint(
        ckpt,
        Checkpoint(
            # DDP-style prefix: the loader strips it.
            model={f"module.{k}": v for k, v in stage2.state_dict().items()},
            preset="slowfast_tiny",
            preset_overrides=options2,
            classes=list(classes),
            training={"config": {"bank_window": 10, "bank_persons_per_second": 3}},
            bank_model=Checkpoint(
                stage1.state_dict(), "slowfast_tiny", {"class_ids": classes, **SMALL}, list(classes)
            ),
        ),
    )
    model, info, ids = load_action_model(ckpt)
    assert ids == classes and info.short_side == 64 and model.lfb is not None
    assert not model.use_global
    loaded = load_checkpoint_models(ckpt)
    assert loaded.bank_model is not None and loaded.trained
    assert loaded.bank_window_seconds == 21  # the config's half-width 10, converted
    x = (torch.randn(1, 3, 4, 64, 96), torch.randn(1, 3, 16, 64, 96))
    boxes = torch.tensor([[0.0, 4, 4, 40, 60]])
    with torch.no_grad():
        want = stage2.eval().features(*x, boxes)[0]
        got = model.features(*x, boxes)[0]
    torch.testing.assert_close(got, want)

    out = tmp_path / "b"
    build_bundle(loaded, out, parity_video=video, parity_keyframes=1, slim=False)
    m = load_manifest(out)
    assert m.bank.source == "bank_backbone" and "bank_backbone" in m.graphs
    assert (m.bank.window_seconds, m.bank.persons_per_second) == (21, 3)
    assert (m.bank.file_window, m.bank.live_window) == ((-10, 10), (-20, 0))
    assert m.graphs["head"].shape_ranges["bank"].max[1] == 63
    assert set(m.parity) == {"backbone", "bank_backbone", "head"}
    assert [t.name for t in m.graphs["head"].outputs] == ["action"]
    assert m.model.class_ids == classes and m.model.pose_ids == (1, 2, 3, 11, 12)
    assert m.provenance.checkpoint == "stage2.pt" and m.provenance.checkpoint_sha256


_FORMAT = {"format": "avaserve-checkpoint", "version": 2, "preset_overrides": {}, "classes": []}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"model": {}}, "not an avaserve checkpoint"),
        ({"preset": "slowfast_tiny", "weights": {}}, "not an avaserve checkpoint"),
        ({**_FORMAT, "preset": "slowfast_tiny", "weights": {}}, "'model' missing"),
        ({**_FORMAT, "preset": "nope", "model": {"w": torch.zeros(1)}}, "unknown"),
        ({**_FORMAT, "preset": "slowfast_tiny", "model": {"w": torch.zeros(1)}}, "does not fit"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, content: dict, match: str) -> None:
    path = tmp_path / "c.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint_models(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("yolo:x.onnx", "expected yolox:PATH"),
        ("yolox:/no/such.onnx", "not found"),
        ("x", "expected yolox:PATH"),
    ],
)
def test_detector_argument(text: str, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        parse_detector(text)


def test_parity_clips_from_a_dataset_use_val_ground_truth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from avaserve.cli import app
    from core.ava_data import read_keyframes
    from core.preset_info import preset_info

    world = tmp_path / "world"
    args = ["make-world", str(world), "--videos", "0", "--val-videos", "1", "--seconds", "8"]
    result = CliRunner().invoke(app, [*args, "--size", "160x120"])
    assert result.exit_code == 0, result.output
    info = preset_info("slowfast_tiny")
    clips, source = parity_mod.parity_clips(info, data_dir=world, count=2)
    assert "ground-truth boxes" in source and len(clips) == 2
    gt = read_keyframes(world / "annotations" / "val.csv")
    for clip in clips:
        assert clip.fast.shape == (3, 16, 128, 171) and clip.slow.shape == (3, 4, 128, 171)
        vid, t = clip.label.split("@")
        want = next(k for k in gt if k.video_id == vid and k.timestamp == float(t[:-1]))
        np.testing.assert_allclose(clip.boxes / [171, 128, 171, 128], want.boxes, atol=1e-6)
        assert clip.keyframe.shape == (120, 160, 3)


def test_synthetic_fallback_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from core.preset_info import preset_info

    monkeypatch.setattr(parity_mod, "DEFAULT_VIDEO_FILE", Path("/nonexistent.mp4"))
    clips, source = parity_mod.parity_clips(preset_info("slowfast_tiny"), count=1)
    assert "SYNTHETIC" in source and len(clips) == 1
    assert "NO REAL VIDEO" in caplog.text


def test_reads_training_and_imported_checkpoint_formats(tmp_path: Path) -> None:
    """The files training/train.py and avaserve import-checkpoint write (one format)."""
    from training.config import TrainConfig
    from training.train import (
        build_training_model,
        save_training_checkpoint,
        training_model_options,
    )

    classes = (1, 5, 11, 12, 14, 17, 79, 80)
    config = TrainConfig(stage="stage2", bank_dir="unused", preset_overrides=dict(SMALL))
    stage2 = build_training_model(config, classes, bank_dim=144)
    options = training_model_options(config, classes, bank_dim=144)
    opt = torch.optim.SGD(stage2.parameters(), lr=0.1)
    extra = {"bank_dim": 144, "stage": "stage2"}
    path = tmp_path / "train.pt"
    save_training_checkpoint(path, stage2, options, opt, 3, config, extra)  # with RNG state
    loaded = load_checkpoint_models(path)
    assert loaded.class_ids == classes and loaded.model.lfb is not None
    assert loaded.model.use_global and loaded.bank_window_seconds == 61
    for k, v in stage2.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v)

    stage1 = slowfast_tiny(class_ids=classes, **SMALL)
    imported = tmp_path / "stage1.pt"
    save_checkpoint(
        imported, Checkpoint(stage1.state_dict(), "slowfast_tiny", dict(SMALL), list(classes))
    )
    with_bank = load_checkpoint_models(path, bank_checkpoint=imported)
    assert with_bank.bank_model is not None and with_bank.bank_model.lfb is None


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"preset": "slowfast_tiny", "model": {}, "obj": ExportLimits()}, path)
    with pytest.raises(CheckpointError, match="not plain data"):
        load_checkpoint_models(path)


TIMED_CLASSES = (1, 11, 12, 17, 80)
# A 9 s window ([t - 4, t + 4]) of 2 persons a second (W = 18 slots), as a stage-2 config
# says it.
TIMED_CONFIG = {
    "preset": "slowfast_tiny",
    "preset_overrides": SMALL,
    "bank_window_seconds": 9,
    "bank_persons_per_second": 2,
}


def _timed_checkpoint(path: Path, seed: int, **head: object) -> tuple[torch.nn.Module, Path]:
    """A time-aware stage-2 tiny model (LFB + global, TIMED_CONFIG's slots) saved as a
    training checkpoint; ``head`` adds preset options (e.g. ``appearance_grid``)."""
    from core.bank_layout import slot_offsets

    torch.manual_seed(seed)
    options = {
        "use_lfb": True,
        "use_global": True,
        "class_ids": TIMED_CLASSES,
        "lfb_dim_inner": 16,
        "lfb_slot_offsets": slot_offsets(-4, 9, 2),
        **head,
        **SMALL,
    }
    model = slowfast_tiny(**options)
    _save_timed(path, model, options, TIMED_CONFIG)
    return model, path


def _save_timed(path: Path, model: torch.nn.Module, options: dict, config: dict) -> None:
    save_checkpoint(
        path,
        Checkpoint(
            model.state_dict(),
            "slowfast_tiny",
            options,
            list(TIMED_CLASSES),
            training={"config": config},
        ),
    )


def test_time_aware_lfb_exports_a_slot_layout(video: Path, tmp_path: Path) -> None:
    """A stage-2 model with slot times: the manifest tells the service to lay windows out
    slot-aligned from the training window's first second, and the head runs with W slots."""
    model, ckpt = _timed_checkpoint(tmp_path / "timed.pt", seed=2)
    loaded = load_checkpoint_models(ckpt)
    assert loaded.model.lfb is not None and loaded.model.lfb.num_slots == 18
    out = tmp_path / "b"
    build_bundle(loaded, out, parity_video=video, parity_keyframes=1, slim=False)
    m = load_manifest(out)
    assert m.bank.layout == "slots" and m.bank.slot_origin_s == -4
    assert m.bank.window_seconds == 9 and m.bank.max_entries == 18
    assert m.bank.file_window == (-4, 4) and m.bank.shared_window is True  # W fixed at 18

    # A config saved before states the half-width (4 s each side): the same 9 s window.
    old = tmp_path / "old.pt"
    old_config = {k: v for k, v in TIMED_CONFIG.items() if k != "bank_window_seconds"}
    _save_timed(
        old, model, load_checkpoint(ckpt).preset_overrides, {**old_config, "bank_window": 4}
    )
    assert load_checkpoint_models(old).bank_window_seconds == 9
    _save_timed(
        old, model, load_checkpoint(ckpt).preset_overrides, {**TIMED_CONFIG, "bank_window": 2}
    )
    with pytest.raises(CheckpointError, match="old.pt: training config: .*disagree"):
        load_checkpoint_models(old)

    # A window of another layout is refused at export.
    bad = tmp_path / "bad.pt"
    wrong = {**TIMED_CONFIG, "bank_window_seconds": 11}
    _save_timed(bad, model, load_checkpoint(ckpt).preset_overrides, wrong)
    with pytest.raises(ExportError, match="not the layout"):
        build_bundle(
            load_checkpoint_models(bad), tmp_path / "b2", parity_video=video, parity_keyframes=1
        )


def test_appearance_model_exports_and_serves(assets: Path, video: Path, tmp_path: Path) -> None:
    """A stage-2 model with the same-person cue and the LFB's recall path: backbone.onnx's
    person output carries the colour cells (D + A), the manifest's bank is D + A wide, the
    recall is rebuilt from the checkpoint's keys (export parity covers its graph), and the
    service's engine runs the bundle end to end with the head reading its window once per
    keyframe."""
    import asyncio

    import onnxruntime as ort

    from service.engine import Engine, EngineSettings
    from service.runtime import RuntimeSettings

    model, ckpt = _timed_checkpoint(
        tmp_path / "app.pt",
        seed=3,
        appearance_grid=(6, 1),
        lfb_recall_classes=len(TIMED_CLASSES),
    )
    loaded = load_checkpoint_models(ckpt)
    assert loaded.model.appearance == (6, 1)
    assert loaded.model.lfb is not None and loaded.model.lfb.recall_classes == len(TIMED_CLASSES)
    out = tmp_path / "b"
    build_bundle(
        loaded,
        out,
        detector=parse_detector(f"yolox:{assets / 'detector' / 'yolox_nano.onnx'}"),
        parity_video=video,
        parity_keyframes=1,
    )
    m = load_manifest(out)
    d = model.feature_dim
    assert m.bank.feature_dim == d + 18
    sess = ort.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    h = 64
    feed = {
        "slow": np.zeros((1, 3, m.preprocessing.num_frames // m.preprocessing.alpha, h, 96), "f4"),
        "fast": np.zeros((1, 3, m.preprocessing.num_frames, h, 96), "f4"),
        "boxes": np.array([[0, 10, 5, 40, 60]], "f4"),
    }
    feed["fast"][:, 0] = 0.7  # red channel of every frame: the cells must say so
    person = sess.run(["person"], feed)[0]
    assert person.shape == (1, d + 18)
    np.testing.assert_allclose(person[0, d : d + 6], 0.7, atol=1e-5)
    np.testing.assert_allclose(person[0, d + 6 :], 0.0, atol=1e-5)

    async def serve() -> int:
        engine = Engine(
            out,
            settings=EngineSettings(
                runtime=RuntimeSettings(intra_op_threads=1), isolated_decode=False
            ),
        )
        try:
            assert engine.bank_dim == d + 18 and engine.head_shares_window
            return len([p async for p in engine.annotate_file(video)])
        finally:
            await engine.close()

    assert asyncio.run(serve()) > 0  # persons found and classified

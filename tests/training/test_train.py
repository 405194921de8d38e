"""The training loop: schedules, resuming, data parallelism, initialisation."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from training.config import TrainConfig, ava_r50_recipe, config_from_dict, tiny_world_recipe
from training.schedule import learning_rate
from training.train import _person_terms, train

TINY_MODEL = {"short_side": 32, "num_frames": 4, "dropout": 0.0}


def _config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        stage="stage1",
        preset_overrides=dict(TINY_MODEL),
        iterations=3,
        batch_size=4,
        lr=0.05,
        warmup_iters=1,
        warmup_start_lr=0.01,
        color_jitter=0.2,
        box_jitter=0.05,
        log_every=1,
        checkpoint_every=1,
        threads=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-4), k


@pytest.mark.parametrize(
    ("it", "schedule", "steps", "want"),
    [
        (0, "cosine", (), 0.01),  # warm-up start
        (10, "cosine", (), 0.05),  # 0.5 * lr0 * (cos(pi * 10 / 20) + 1) = lr0 / 2
        (20, "cosine", (), 0.0),
        (5, "steps", (8, 15), 0.1),
        (16, "steps", (8, 15), 0.001),
    ],
)
def test_learning_rate(it: int, schedule: str, steps: tuple[int, ...], want: float) -> None:
    config = TrainConfig(
        iterations=20,
        lr=0.1,
        schedule=schedule,  # type: ignore[arg-type]
        lr_steps=steps,
        warmup_iters=0 if schedule == "steps" else 2,
        warmup_start_lr=0.01,
    )
    assert learning_rate(config, it) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("activation", ["pose_softmax_sigmoid", "sigmoid"])
def test_loss_follows_the_output_activation(activation: str) -> None:
    """Pose softmax CE + BCE elsewhere, or (imported upstream heads) BCE on every column."""
    from models.presets import slowfast_tiny

    model = slowfast_tiny(output_activation=activation)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 80, generator=gen)
    targets = (torch.rand(6, 80, generator=gen) < 0.1).float()
    targets[:, :14] = 0
    targets[torch.arange(6), torch.randint(0, 14, (6,), generator=gen)] = 1  # one pose each
    pose, other = _person_terms(logits, targets, model.softmax_mask, tiny_world_recipe())
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if activation == "sigmoid":
        assert float(pose) == 0.0
        torch.testing.assert_close(other, bce(logits, targets))
    else:
        torch.testing.assert_close(
            pose, torch.nn.functional.cross_entropy(logits[:, :14], targets[:, :14].argmax(1))
        )
        torch.testing.assert_close(other, bce(logits[:, 14:], targets[:, 14:]))


def test_config_round_trip_and_recipes() -> None:
    for config in (ava_r50_recipe(), tiny_world_recipe("stage2"), tiny_world_recipe("classify")):
        assert config_from_dict(config.to_dict()) == config
    recipe = ava_r50_recipe()
    assert (recipe.batch_size, recipe.lr, recipe.iterations) == (64, 0.016, 26_000)
    assert recipe.lr_steps == (16_000, 21_000) and recipe.freeze_bn
    with pytest.raises(ValueError, match="bank_dir"):
        TrainConfig(stage="stage2")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        config_from_dict({"stage": "stage1", "nope": 1})


def test_bank_window_is_carried_in_seconds() -> None:
    """The config states the window's length (odd, >= 1); an old config's half-width
    ``bank_window`` converts once, on load; a disagreeing pair or a bad length is refused."""
    assert TrainConfig().bank_window_seconds == 61
    assert config_from_dict({"bank_window": 30}).bank_window_seconds == 61
    assert config_from_dict({"bank_window": 2}) == TrainConfig(bank_window_seconds=5)
    assert "bank_window" not in config_from_dict({"bank_window": 2}).to_dict()
    assert config_from_dict({"bank_window": 2, "bank_window_seconds": 5}).bank_window_seconds == 5
    with pytest.raises(ValueError, match="disagree"):
        config_from_dict({"bank_window": 2, "bank_window_seconds": 61})
    for bad in (0, -3, 60, 2.5, True):
        with pytest.raises(ValueError, match="bank_window_seconds"):
            TrainConfig(bank_window_seconds=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="half-width"):
        config_from_dict({"bank_window": -1})


@pytest.mark.parametrize(("half", "persons"), [(30, 5), (4, 2), (0, 3)])
def test_old_and_new_window_configs_build_the_same_model(half: int, persons: int) -> None:
    """A time-aware stage-2 model from an old config (half-width) and from the new one (seconds)
    gets identical options, and its slots are the old formula's: second -half .. +half."""
    from training.train import training_model_options

    common = {"stage": "stage2", "bank_dir": "b", "bank_time": True, "bank_recall": False}
    common |= {"bank_persons_per_second": persons, "preset_overrides": dict(TINY_MODEL)}
    old = config_from_dict({**common, "bank_window": half})
    new = config_from_dict({**common, "bank_window_seconds": 2 * half + 1})
    assert old == new
    classes = (1, 11, 12, 80)
    options = training_model_options(old, classes, bank_dim=144)
    assert options == training_model_options(new, classes, bank_dim=144)
    want = [float(-half + i // persons) for i in range((2 * half + 1) * persons)]
    assert options["lfb_slot_offsets"] == want


def test_resume_equals_uninterrupted(tiny_world: Path, tmp_path: Path) -> None:
    config = _config(iterations=4, preset_overrides={**TINY_MODEL, "dropout": 0.3})
    whole = train(config, tiny_world, tmp_path / "whole", progress=False)
    train(config, tiny_world, tmp_path / "split", progress=False, stop_after=2)
    resumed = train(config, tiny_world, tmp_path / "split", progress=False)
    _assert_same(_params(whole), _params(resumed), atol=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: str, out: str, port: int, config: TrainConfig) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    train(config, world, out, progress=False)
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_equal_one(tiny_world: Path, tmp_path: Path) -> None:
    """2 gloo processes x 2 clips == 1 process x 4 clips, for 3 SGD steps.

    BatchNorm is frozen: without SyncBN each process would normalise with the statistics
    of its own 2 clips, which is a different function from the 4-clip batch (a real
    difference of data-parallel BN, not a bug). Dropout is 0 because the processes draw
    their masks from their own RNG streams. Everything else -- data order, augmentation,
    the loss normalisation over the global number of persons -- must make the runs equal.
    """
    config = _config(freeze_bn=True, iterations=3)
    one = train(config, tiny_world, tmp_path / "one", progress=False)
    mp.spawn(
        _ddp_worker,
        args=(str(tiny_world), str(tmp_path / "two"), _free_port(), config),
        nprocs=2,
        join=True,
    )
    _assert_same(_params(one), _params(tmp_path / "two" / "final.pt"), atol=1e-5)


def test_pretrained_backbone_loads_without_missing_keys(tiny_world: Path, tmp_path: Path) -> None:
    from training.pretrain import train_classifier
    from training.train import build_training_model, load_init, load_split

    cls_config = _config(stage="classify", iterations=1, batch_size=2)
    ckpt = train_classifier(cls_config, tiny_world, tmp_path / "cls", progress=False)
    labels = load_split(tiny_world, "train").labels
    model = build_training_model(_config(), labels.ids)
    report = load_init(model, ckpt)
    assert not [k for k in report.missing if k.startswith("backbone.")]
    assert set(report.missing) == {"classifier.weight", "classifier.bias"}
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    weights = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    name = next(k for k in weights if k.startswith("backbone.") and k.endswith("weight"))
    assert torch.equal(model.state_dict()[name], weights[name])


@pytest.mark.parametrize(
    ("train_backbone", "recall"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_stage2_trains_from_stage1_bank(
    tiny_world: Path, tmp_path: Path, train_backbone: bool, recall: bool
) -> None:
    """Stage 2 reads the stage-1 bank, head-only or with the backbone; with ``recall`` the
    bank carries colour cells and the LFB's recall row classifier learns from its
    auxiliary loss."""
    from training.bank_extract import extract_bank
    from training.boxes import gt_boxes
    from training.train import load_split, load_trained_model

    stage1 = train(_config(iterations=1, batch_size=2), tiny_world, tmp_path / "s1", progress=False)
    model = load_trained_model(stage1)[0]
    if recall:
        model.enable_appearance((6, 1))
    for split in ("train", "val"):
        data = load_split(tiny_world, split)
        extract_bank(
            model, tiny_world, split, tmp_path / "bank", proposals=gt_boxes(data.keyframes)
        )
    config = _config(
        stage="stage2",
        iterations=2,
        batch_size=2,
        bank_dir=str(tmp_path / "bank"),
        init_checkpoint=str(stage1),
        train_backbone=train_backbone,
        preset_overrides={**TINY_MODEL, "lfb_dim_inner": 16},
        bank_recall=recall,
    )
    stage2 = train(config, tiny_world, tmp_path / "s2", progress=False)
    model2, config2, _ = load_trained_model(stage2)
    assert model2.lfb is not None and model2.use_global and config2.stage == "stage2"
    if recall:
        assert model2.appearance == (6, 1) and model2.lfb.recall is not None
        assert model2.lfb.recall_classes == model2.num_classes
        # load_init starts the recall's row classifier as stage 1's person classifier.
        from training.train import build_training_model, load_init

        fresh = build_training_model(config, model2.class_ids, model2.person_dim, (6, 1))
        assert fresh.lfb is not None and fresh.lfb.recall is not None
        load_init(fresh, stage1)
        s1 = torch.load(stage1, weights_only=True)["model"]
        torch.testing.assert_close(fresh.lfb.recall.weight, s1["classifier.weight"])
        torch.testing.assert_close(fresh.lfb.recall.bias, s1["classifier.bias"])
        # The same run without the auxiliary loss: the recall's row classifier ends elsewhere;
        # head-only, the scene classifier (which the recall cannot reach) ends identical.
        no_aux = dataclasses.replace(config, recall_weight=0.0)
        model3 = load_trained_model(train(no_aux, tiny_world, tmp_path / "s2b", progress=False))[0]
        assert model3.lfb is not None and model3.lfb.recall is not None
        assert model2.scene_classifier is not None and model3.scene_classifier is not None
        same_scene = torch.equal(model2.scene_classifier.weight, model3.scene_classifier.weight)
        assert same_scene != train_backbone  # with the backbone, the aux loss moves it too
        assert not torch.equal(model2.lfb.recall.weight, model3.lfb.recall.weight)
    else:
        assert model2.lfb.recall is None
        # The recall needs colour cells in the bank, and says how to get them.
        with pytest.raises(ValueError, match="extract-bank --appearance"):
            train(
                dataclasses.replace(config, bank_recall=True),
                tiny_world,
                tmp_path / "s2c",
                progress=False,
            )
    before, after = torch.load(stage1, weights_only=True)["model"], model2.state_dict()
    key = (
        "backbone.stem.slow.conv.weight"
        if "backbone.stem.slow.conv.weight" in before
        else next(k for k in before if k.startswith("backbone.") and k.endswith("conv.weight"))
    )
    assert torch.equal(before[key], after[key]) != train_backbone  # frozen iff head-only


def _nan_person_terms_from(monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool]) -> None:
    """Make the pose term NaN at the iterations (0-based calls) where ``bad`` says so."""
    import training.train as train_module

    real, calls = train_module._person_terms, [0]

    def terms(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pose, other = real(*args)
        calls[0] += 1
        return (pose * float("nan"), other) if bad(calls[0] - 1) else (pose, other)

    monkeypatch.setattr(train_module, "_person_terms", terms)


def test_a_non_finite_step_is_skipped_and_the_weights_stay_finite(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_person_terms_from(monkeypatch, lambda it: it == 1)
    lines: list[str] = []
    final = train(
        _config(iterations=3), tiny_world, tmp_path / "run", progress=False, log=lines.append
    )
    weights = _params(final)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any("iteration 2: non-finite loss (nan)" in line for line in lines), lines
    assert "(1 non-finite steps skipped)" in lines[-1]


def test_repeated_non_finite_steps_stop_training_with_a_clear_error(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.nonfinite import MAX_CONSECUTIVE_NONFINITE, NonFiniteTrainingError

    _nan_person_terms_from(monkeypatch, lambda it: it >= 1)
    config = _config(iterations=MAX_CONSECUTIVE_NONFINITE + 3)
    with pytest.raises(NonFiniteTrainingError) as error:
        train(config, tiny_world, tmp_path / "run", progress=False, log=lambda _: None)
    message = str(error.value)
    assert f"iteration {MAX_CONSECUTIVE_NONFINITE + 1}: loss nan" in message
    assert "inputs are finite" in message and "lr " in message

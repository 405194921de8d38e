"""Training configuration: one dataclass, read by the CLI, passed down as plain values.

`TrainConfig` describes one training run (stage 1, stage 2 or clip classification).
Named recipes build one: `ava_r50_recipe` is report A's AVA fine-tune (DESIGN.md, "The
AVA recipe"), `tiny_world_recipe` the CPU settings the demo uses on the synthetic world.
The config is saved inside every checkpoint, so a run can be resumed or inspected.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from core.bank_layout import DEFAULT_WINDOW_SECONDS, check_window_seconds, window_seconds_of_config

__all__ = [
    "Stage",
    "TrainConfig",
    "ava_r50_recipe",
    "config_from_dict",
    "pretrain_recipe",
    "tiny_world_recipe",
]

Stage = Literal["stage1", "stage2", "classify"]
Schedule = Literal["cosine", "steps"]


@dataclass
class TrainConfig:
    """Everything that decides a training run. Defaults: a short CPU run of the tiny preset."""

    stage: Stage = "stage1"
    preset: str = "slowfast_tiny"
    # Overrides of the preset's PresetInfo / head (e.g. {"short_side": 96}); the same dict
    # rebuilds the model from a checkpoint.
    preset_overrides: dict[str, Any] = field(default_factory=dict)

    # -- optimisation ------------------------------------------------------------------
    iterations: int = 300
    batch_size: int = 8  # global batch (clips); each of N DDP processes takes batch_size / N
    lr: float = 0.1
    schedule: Schedule = "cosine"
    # Steps schedule: lr / 10 at each of these iterations (report A: 16k, 21k of 26k).
    lr_steps: tuple[int, ...] = ()
    warmup_iters: int = 20
    warmup_start_lr: float = 0.01
    momentum: float = 0.9
    # Report A uses 1e-7 for AVA fine-tuning of a pre-trained net; from scratch on a tiny
    # world a larger decay keeps the small net from memorising the few videos.
    weight_decay: float = 1e-4
    # Freeze BatchNorm statistics and affine parameters (report A: when fine-tuning). Also
    # what makes a DDP run equal to a 1-process run: without SyncBN each process would
    # normalise with its own half-batch statistics.
    freeze_bn: bool = False
    # Train the backbone (False: only the head learns; stage 2 on a CPU reads the person
    # and clip features straight from the stage-1 bank, so an iteration costs milliseconds).
    train_backbone: bool = True
    grad_clip: float | None = None

    # -- losses ------------------------------------------------------------------------
    other_loss: Literal["bce", "focal"] = "bce"
    focal_gamma: float = 2.0
    pose_weight: float = 1.0
    other_weight: float = 1.0
    scene_weight: float = 1.0

    # -- data --------------------------------------------------------------------------
    # Short side the frame cache stores; None = the preset's short side.
    cache_short_side: int | None = None
    flip: bool = True
    box_jitter: float = 0.05  # fraction of the box size, per coordinate (report A)
    color_jitter: float = 0.2  # brightness/contrast/saturation factor range 1 +- this
    # Random short side range (inclusive); None = no scale jitter (train at the cache size).
    scale_jitter: tuple[int, int] | None = None
    balance: bool = False  # CP-IA then LS on the training labels (report B)
    # LS: a class with more than this share of all labels is "frequent" (report B used a
    # count of 10,000 on AVA; a share carries over to small worlds).
    ls_frequent_share: float = 0.15
    num_workers: int = 0

    # -- long-term feature bank (stage 2) ----------------------------------------------
    bank_dir: str | None = None
    # The window's length in seconds, centred on the keyframe's second (odd): 61 reads
    # [t - 30, t + 30] (report A). Old configs' ``bank_window`` (the half-width, 30) converts.
    bank_window_seconds: int = DEFAULT_WINDOW_SECONDS
    bank_persons_per_second: int = 5
    # Time-aware LFB (models.lfb "Slot times"): the bank's slots carry their time offset,
    # so the head can tell "20 s ago" from "20 s ahead". Off = Wu et al.'s unordered set.
    bank_time: bool = False
    # Recall (models.lfb "Recall"): "did this person do class c in time bin b?" as a max over
    # the same person's rows, with its row classifier trained by an auxiliary loss on the
    # query's own labels (weight recall_weight). Needs a bank with colour cells.
    bank_recall: bool = False
    recall_weight: float = 1.0
    use_global: bool = True

    # -- initialisation ----------------------------------------------------------------
    init_checkpoint: str | None = None

    # -- classification (pre-training) -------------------------------------------------
    dropout_classify: float = 0.5  # before the classifier (report A's pre-training)

    # -- bookkeeping -------------------------------------------------------------------
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    threads: int = 2  # torch.set_num_threads; the CPU machines have 2 cores

    def __post_init__(self) -> None:
        if self.stage not in ("stage1", "stage2", "classify"):
            raise ValueError(f"stage must be stage1, stage2 or classify, got {self.stage!r}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if self.schedule not in ("cosine", "steps"):
            raise ValueError(f"schedule must be 'cosine' or 'steps', got {self.schedule!r}")
        if not 0 <= self.warmup_iters <= self.iterations:
            raise ValueError(f"warmup_iters must be in [0, iterations], got {self.warmup_iters}")
        if self.stage == "stage2" and not self.bank_dir:
            raise ValueError("stage2 needs bank_dir (run `avaserve extract-bank` first)")
        self.bank_window_seconds = check_window_seconds(self.bank_window_seconds)
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if self.scale_jitter is not None:
            self.scale_jitter = (int(self.scale_jitter[0]), int(self.scale_jitter[1]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Inverse of `TrainConfig.to_dict`; unknown keys (from a newer version) are an error.
    An old config's ``bank_window`` (half-width, s) becomes ``bank_window_seconds`` here."""
    raw = dict(raw)
    if "bank_window" in raw:
        raw["bank_window_seconds"] = window_seconds_of_config(raw)
        del raw["bank_window"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}")
    return TrainConfig(**raw)


def ava_r50_recipe(stage: Stage = "stage1", **changes: Any) -> TrainConfig:
    """Report A's AVA fine-tune of SlowFast R50 (DESIGN.md): 64 clips per batch, lr 0.016,
    26k iterations with /10 at 16k and 21k, weight decay 1e-7, frozen BN, short side 256
    with flip + box jitter + colour jitter; scale jitter 224-320 (report B)."""
    base = TrainConfig(
        stage=stage,
        preset="slowfast_r50_ava",
        iterations=26_000,
        batch_size=64,
        lr=0.016,
        schedule="steps",
        lr_steps=(16_000, 21_000),
        warmup_iters=1_000,
        warmup_start_lr=0.0016,
        weight_decay=1e-7,
        freeze_bn=True,
        box_jitter=0.05,
        color_jitter=0.4,
        scale_jitter=(224, 320),
        balance=True,
        ls_frequent_share=0.05,
        bank_dir="bank" if stage == "stage2" else None,
        checkpoint_every=1_000,
        log_every=20,
        threads=8,
    )
    return dataclasses.replace(base, **changes)


def pretrain_recipe(**changes: Any) -> TrainConfig:
    """Report A's Kinetics-600 pre-training: lr0 0.4, 180k iterations, 4k warm-up,
    half-cosine, dropout 0.5 before the classifier (batch as in PySlowFast: 64)."""
    base = TrainConfig(
        stage="classify",
        preset="slowfast_r50_ava",
        iterations=180_000,
        batch_size=64,
        lr=0.4,
        schedule="cosine",
        warmup_iters=4_000,
        warmup_start_lr=0.04,
        weight_decay=1e-4,
        dropout_classify=0.5,
        checkpoint_every=5_000,
    )
    return dataclasses.replace(base, **changes)


def tiny_world_recipe(stage: Stage = "stage1", **changes: Any) -> TrainConfig:
    """The tiny preset on the synthetic world, sized for 2 CPU cores (the demo recipe).

    Stage 1 trains from scratch at a 96-px short side with 8 fast frames (the world's
    motions span well under a second) -- about 0.2-0.3 s per iteration on one
    core (measured: 5000 iterations in 23 min beside another training job). Stage 2
    freezes the backbone and learns the LFB + global head from the stage-1 bank, which
    is what the long-term classes need and costs milliseconds per iteration.
    """
    overrides = {"short_side": 96, "num_frames": 8, "dropout": 0.3}
    if stage == "stage1":
        base = TrainConfig(
            stage="stage1",
            preset_overrides=overrides,
            # 500 iterations gave val frame-mAP 0.44; 5000 gave 0.58 (docs/demo-bundle.md).
            iterations=4000,
            batch_size=8,
            lr=0.05,
            warmup_iters=200,
            warmup_start_lr=0.005,
            weight_decay=1e-4,
            color_jitter=0.2,
            box_jitter=0.05,
        )
    elif stage == "stage2":
        base = TrainConfig(
            stage="stage2",
            # A 128-d LFB (Wu et al. use 512 for a 2304-d R50 feature): the tiny preset's
            # person feature is 144-d, and the LFB's cost grows with W = 305 slots per person.
            preset_overrides={**overrides, "lfb_dim_inner": 128},
            # With the recall: val frame-mAP 0.839 after 2000 iterations, 0.880 after 6000
            # (docs/demo-bundle.md); ~1 min per 1000 at 2 threads.
            iterations=6000,
            batch_size=16,
            lr=0.05,
            warmup_iters=20,
            warmup_start_lr=0.005,
            weight_decay=1e-4,
            train_backbone=False,
            bank_time=True,
            # Long-term classes after 2000 iterations: stage 1 0.19 -> 0.43 AP with it, 0.20
            # without; 0.53 after 6000 (docs/demo-bundle.md). Needs a bank written with
            # `extract-bank --appearance`.
            bank_recall=True,
            bank_dir="bank",
            log_every=50,
            checkpoint_every=500,
        )
    else:
        base = TrainConfig(
            stage="classify",
            preset_overrides=overrides,
            # 2000 x 8 clips reached only 45 % top-1 error, still underfitting (training
            # loss ~1.5): a bigger batch, a longer schedule and lighter dropout on the
            # 144-d tiny feature than report A's 0.5 for R50's 2304-d one.
            iterations=3000,
            batch_size=16,
            lr=0.05,
            warmup_iters=100,
            warmup_start_lr=0.005,
            dropout_classify=0.2,
        )
    return dataclasses.replace(base, **changes)

"""The demo recipe: world -> detector -> stage 1 -> bank -> stage 2 -> evaluation, on a CPU.

`demo_recipe(out)` is what ``avaserve demo-recipe OUT`` runs (the Makefile's demo target
calls it). Everything lands under ``OUT``::

    world/            the synthetic AVA world (avaserve make-world)
    detector/         person detector (if training/detector provides train_detector)
    stage1/ stage2/   training runs (final.pt, metrics.csv, config.json)
    bank/{train,val}  the stage-1 feature bank (ground-truth boxes)
    results/          results CSVs of both stages on val, summary.json

Sizes: the full recipe fits in 30 min on 2 cores (world 1 min, detector ~5 min, stage 1
4000 x ~0.15 s, bank < 1 min, stage 2 6000 iterations with the LFB's recall ~7 min; the
end-to-end time measured with ``/usr/bin/time -v`` is in docs/demo-bundle.md). ``mini=True`` is
the CI smoke run (a 2-video world, a handful of iterations, under 4 min) that checks the
plumbing, not the accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import TrainConfig

__all__ = ["RecipeSummary", "demo_recipe"]

StrPath = str | PathLike[str]


@dataclass
class RecipeSummary:
    """What the recipe measured; ``lines()`` is what the command prints."""

    out_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    map_val_gt: dict[str, float] = field(default_factory=dict)  # stage -> frame-mAP
    long_term_ap: dict[str, dict[int, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"demo recipe in {self.out_dir}"]
        out += [f"  {step}: {sec:.1f} s" for step, sec in self.seconds.items()]
        for stage, value in self.map_val_gt.items():
            lt = self.long_term_ap.get(stage, {})
            lt_text = ", ".join(f"{k}: {v:.4f}" for k, v in lt.items())
            out.append(f"  {stage} val frame-mAP (GT boxes): {value:.4f}; long-term AP {lt_text}")
        out += [f"  note: {n}" for n in self.notes]
        if "stage2" in self.map_val_gt:
            out.append(f"mAP@0.5IOU: {self.map_val_gt['stage2']!r}")
        return out


def _world_config(mini: bool, seed: int) -> Any:
    from training.world.generate import WorldConfig

    if mini:
        # 30 s is the shortest video whose long-term stories fit (make-world: >= 26 s).
        return WorldConfig(seed=seed, train_videos=2, val_videos=1, seconds=30, max_persons=3)
    # 32 train videos: with 8, stage 2 fit the train split's long-term labels (AP 0.81) and
    # not val's (0.19); bank extraction is the only step whose cost grows with them.
    return WorldConfig(seed=seed, train_videos=32, val_videos=3, seconds=60)


def _mini_lr(config: TrainConfig) -> float:
    """The mini run's peak learning rate: the full recipe's warm-up start.

    The mini run cuts the batch (8 -> 2, 16 -> 4) and the warm-up (200 -> 2, 20 -> 2
    iterations), so at the full peak lr (0.05) both stages took full-size steps on tiny
    batches from iteration 2 on, where the full recipe is still warming up. Stage 1, from
    scratch, diverged (pose loss 3.4 -> 12.7 in 6 iterations) and its bank features grew
    ~25x (median row norm 465; 19 at lr 0.005); stage 2's fresh head on them overflowed
    (loss 67 -> 7.6e15 by iteration 7, NaN from 8), and SGD wrote NaN into every LFB and
    classifier weight. At the warm-up start (0.005) the first iterations of the full
    recipe run, and both stages stay finite with losses of a few units (seeds 0-2).
    """
    return float(config.warmup_start_lr)


def demo_recipe(
    out_dir: StrPath,
    *,
    mini: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> RecipeSummary:
    """Run every step (skipping steps whose outputs exist) and return the measurements."""
    from rich.console import Console

    from models.roi import DEFAULT_APPEARANCE_GRID
    from training.bank_extract import extract_bank
    from training.boxes import gt_boxes
    from training.config import tiny_world_recipe
    from training.run_eval import long_term_ids, run_evaluation
    from training.train import load_split, load_trained_model, train

    console = Console()
    say = log or (lambda text: console.print(text, highlight=False))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = RecipeSummary(out)
    world = out / "world"

    def step(name: str) -> Callable[[], None]:
        say(f"[bold]== {name}[/bold]")
        t0 = time.perf_counter()

        def done() -> None:
            summary.seconds[name] = time.perf_counter() - t0

        return done

    # 1. world
    finish = step("world")
    if not (world / "dataset.json").is_file():
        from training.world.generate import generate_world

        generate_world(world, _world_config(mini, seed))
    finish()

    # 2. person detector (another part of the project; optional here)
    finish = step("detector")
    detector_onnx = _detector(world, out / "detector", mini, seed, say, summary)
    finish()

    # 3. stage 1
    finish = step("stage 1")
    s1 = tiny_world_recipe("stage1", seed=seed, balance=True)
    if mini:
        s1 = dataclasses.replace(
            s1,
            iterations=6,
            batch_size=2,
            lr=_mini_lr(s1),
            warmup_iters=2,
            log_every=2,
            checkpoint_every=6,
            preset_overrides={**s1.preset_overrides, "short_side": 64},
        )
    stage1 = train(s1, world, out / "stage1", progress=True, log=say)
    finish()

    # 4. bank from stage 1, ground-truth boxes, both splits
    finish = step("bank")
    model, _, _ = load_trained_model(stage1)
    # The bank rows carry each box's colour cells: the stage-2 LFB's same-person cue.
    model.enable_appearance(DEFAULT_APPEARANCE_GRID)
    for split in ("train", "val"):
        if not (out / "bank" / split / "meta.json").is_file():
            data = load_split(world, split)
            extract_bank(
                model,
                world,
                split,
                out / "bank",
                proposals=gt_boxes(data.keyframes),
                person_ids={kf.key: kf.person_ids for kf in data.keyframes},
                meta={"checkpoint": str(stage1), "boxes": "gt", "split": split},
            )
    finish()

    # 5. stage 2: LFB + global head on the bank, backbone frozen at stage 1's
    finish = step("stage 2")
    s2 = tiny_world_recipe(
        "stage2", seed=seed, bank_dir=str(out / "bank"), init_checkpoint=str(stage1)
    )
    # Stage 1's input settings (short side, frames), stage 2's head settings (LFB size).
    s2 = dataclasses.replace(s2, preset_overrides={**s2.preset_overrides, **s1.preset_overrides})
    if mini:
        s2 = dataclasses.replace(
            s2,
            iterations=20,
            batch_size=4,
            lr=_mini_lr(s2),
            warmup_iters=2,
            log_every=10,
            checkpoint_every=20,
        )
    stage2 = train(s2, world, out / "stage2", progress=True, log=say)
    finish()

    # 6. evaluation on val, ground-truth boxes
    finish = step("evaluation")
    results = out / "results"
    results.mkdir(exist_ok=True)
    long_term = long_term_ids(world)
    for name, ckpt in (("stage1", stage1), ("stage2", stage2)):
        result, _, _ = run_evaluation(
            [ckpt], world, "val", boxes="gt", results_csv=results / f"{name}_val_gt.csv"
        )
        summary.map_val_gt[name] = result.mean_ap
        aps = result.per_class_ap
        summary.long_term_ap[name] = {i: aps[i] for i in long_term if i in aps}
    if detector_onnx is not None:
        summary.notes.append(
            f"detector graph: {detector_onnx}; evaluate with avaserve eval --boxes detector "
            f"--detector {detector_onnx} --sweep"
        )
    finish()
    (results / "summary.json").write_text(
        json.dumps(
            {
                "seconds": summary.seconds,
                "map_val_gt": summary.map_val_gt,
                "long_term_ap": summary.long_term_ap,
                "notes": summary.notes,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    for line in summary.lines():
        say(line)
    return summary


def _detector(
    world: Path,
    out: Path,
    mini: bool,
    seed: int,
    say: Callable[[str], None],
    summary: RecipeSummary,
) -> Path | None:
    """Train + export the person detector if its trainer is present; else skip, saying so."""
    try:
        from training.detector.train import train_detector
    except ImportError:
        note = "no training/detector trainer (train_detector) yet: detector step skipped"
        say(note)
        summary.notes.append(note)
        return None
    onnx_path = out / "detector.onnx"
    if onnx_path.is_file():
        return onnx_path
    if mini:
        note = "mini mode: detector step skipped (its own tests cover it)"
        say(note)
        summary.notes.append(note)
        return None
    try:
        result = train_detector(world, out, seed=seed, progress=True)
        from training.detector.export import export_detector_onnx

        export_detector_onnx(result.checkpoint, onnx_path)
    except Exception as exc:  # another helper's step: report, keep the recipe going
        note = f"detector step failed ({type(exc).__name__}: {exc}); continuing without it"
        say(note)
        summary.notes.append(note)
        return None
    if result.val_ap is not None:
        summary.notes.append(f"detector person AP@0.5 on val: {result.val_ap:.4f}")
    return onnx_path

"""Imported upstream checkpoints compute what the upstream code computes.

For each upstream AVA model -- pytorchvideo's ``slowfast_r50_detection`` and MMAction2's
SlowFast R50 AVA 2.2 config with its RoI head (temporal_pool_mode ``avg`` and ``max``) --
the test builds the model with the real upstream code (installed at test time, random
weights, BatchNorm statistics randomised), saves it in the format that project publishes
(pytorchvideo hub ``.pyth``; an mmengine checkpoint ``.pth`` whose ``meta.cfg`` holds the
config text), imports it with ``avaserve import-checkpoint``, exports the bundle (parity
gate included) and compares, at two input sizes and for boxes that are small (< 7 feature
cells), medium, large (> 14 cells), touch the frame edge or reach past it:

* backbone features (both pathways),
* person features (RoI features before the classifier),
* logits,
* served probabilities: the bundle's backbone.onnx and head.onnx run through the
  service's ONNX Runtime wrapper, against the upstream sigmoid.

Acceptance: max abs difference <= 1e-5 for every box; the measured maxima are printed
(``pytest -s``). Only the compiled ops are stood in for (``upstream_env``: RoIAlign by the
independent ``roi_reference``). 16 fast / 4 slow frames keep the CPU time down: the
architectures take any T (pytorchvideo's head pools T with a fixed kernel, given here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from random_weights import randomise_norms
from torch import Tensor, nn
from typer.testing import CliRunner
from upstream_env import mmaction_importable, torchvision_stand_in

from core.manifest import load_manifest
from export.bundle import build_bundle, load_checkpoint_models
from export.import_cli import register
from models.checkpoints import build_model, load_checkpoint
from service.runtime import create_runtime

TOL = 1e-5
T_FAST, ALPHA = 16, 4
# Import settings that make the test fast without changing any weight: the clip length
# the comparison feeds, and a small parity-gate short side.
FAST_SETTINGS = ("--set", f"num_frames={T_FAST}", "--set", "short_side=96")


@dataclass(frozen=True)
class Case:
    """One input size and its boxes, (K, 5) = (batch_index, x1, y1, x2, y2) in input pixels."""

    name: str
    batch: int
    height: int
    width: int
    boxes: dict[str, tuple[float, float, float, float, float]]


CASES = (
    Case(  # 6 x 8 feature cells
        "96x128",
        2,
        96,
        128,
        {
            "small 2.8x4 cells": (0, 16, 20, 60, 84),
            "small, touches left+top": (1, 0, 0, 48, 96),
            "whole frame, touches all edges": (0, 0, 0, 128, 96),
            "large 15x12 cells, past the frame": (1, -60, -40, 180, 150),
            "sub-cell at the corner": (0, 120, 90, 128, 96),
        },
    ),
    Case(  # 10 x 15 feature cells
        "160x240",
        1,
        160,
        240,
        {
            "small 5x6 cells": (0, 100, 50, 180, 146),
            "medium 10x8 cells": (0, 20, 30, 180, 160),
            "large 15x10 cells, the whole frame": (0, 0, 0, 240, 160),
            "large 17x12 cells, touches left, past the bottom": (0, 0, 20, 272, 212),
            "tiny, near the bottom-right corner": (0, 226, 150, 238, 159),
        },
    ),
)


@dataclass
class Outputs:
    """One model's outputs for one case."""

    backbone: list[Tensor]  # [(B, C_s, T_s, h, w), (B, C_f, T_f, h, w)]
    person: Tensor  # (K, D)
    logits: Tensor  # (K, C)
    probs: Tensor  # (K, C)


def _clip(case: Case, seed: int, alpha: int = ALPHA) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    fast = torch.randn(case.batch, 3, T_FAST, case.height, case.width, generator=g)
    boxes = torch.tensor(list(case.boxes.values()), dtype=torch.float32)
    return fast[:, :, ::alpha].contiguous(), fast, boxes  # slow (B,3,T_s,H,W), fast, (K,5)


def _cli(*args: str) -> str:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app with just the import-checkpoint command."""

    register(app)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


@dataclass(frozen=True)
class Imported:
    """An upstream model, its import (our checkpoint, rebuilt) and its bundle's graphs."""

    ref: nn.Module
    ckpt: Path
    bundle: Path
    model: Any  # ActionModel
    backbone: Any  # service.runtime.Runtime
    head: Any

    @classmethod
    def of(cls, ref: nn.Module, ckpt: Path, bundle: Path) -> Imported:
        manifest = load_manifest(bundle)
        return cls(
            ref,
            ckpt,
            bundle,
            build_model(load_checkpoint(ckpt)),
            create_runtime(bundle, manifest, "backbone"),
            create_runtime(bundle, manifest, "head"),
        )


def _ours_and_served(
    imported: Imported, slow: Tensor, fast: Tensor, boxes: Tensor
) -> tuple[Outputs, np.ndarray]:
    model, backbone, head = imported.model, imported.backbone, imported.head
    with torch.no_grad():
        feats = model.backbone(slow, fast)
        out = model(slow, fast, boxes)
        probs = model.probabilities(out.action_logits)
    person, glob = (
        backbone.run({"slow": slow.numpy(), "fast": fast.numpy(), "boxes": boxes.numpy()})[n]
        for n in ("person", "global")
    )
    served = head.run({"person": person, "global_per_person": glob[boxes[:, 0].long().numpy()]})
    ours = Outputs(feats, out.person_features, out.action_logits, probs)
    return ours, served["action"]


def _compare(
    label: str, case: Case, ref: Outputs, ours: Outputs, served: np.ndarray | None
) -> None:
    """Every comparison, per box; prints the maxima; asserts <= TOL."""
    assert float(ref.logits.abs().max()) > 0.1, "degenerate comparison"
    worst: dict[str, float] = {}
    for i, (r, o) in enumerate(zip(ref.backbone, ours.backbone, strict=True)):
        assert r.shape == o.shape, (i, r.shape, o.shape)
        worst[f"backbone[{i}]"] = float((r - o).abs().max())
    rows = {
        "person": (ours.person - ref.person).abs().amax(dim=1),
        "logits": (ours.logits - ref.logits).abs().amax(dim=1),
        "probs (torch)": (ours.probs - ref.probs).abs().amax(dim=1),
    }
    if served is not None:
        rows["served probs"] = torch.from_numpy(np.abs(served - ref.probs.numpy()).max(axis=1))
    for what, per_box in rows.items():
        worst[what] = float(per_box.max())
        for name, d in zip(case.boxes, per_box.tolist(), strict=True):
            assert d <= TOL, f"{label} {case.name} {what} box {name!r}: {d:.3g}"
    print(f"\n{label} {case.name}: " + ", ".join(f"{k} {v:.2g}" for k, v in worst.items()))
    assert max(worst.values()) <= TOL, worst


def _bundle(ckpt: Path, out: Path, video: Path) -> Path:
    build_bundle(
        load_checkpoint_models(ckpt), out, parity_video=video, parity_keyframes=1, slim=False
    )
    return out


@pytest.fixture(scope="module")
def video(assets: Path) -> Path:
    return assets / "video" / "basketball_2people.mp4"


# ---- pytorchvideo ----------------------------------------------------------------------


def _pytorchvideo_outputs(ref: nn.Module, slow: Tensor, fast: Tensor, boxes: Tensor) -> Outputs:
    """pytorchvideo's DetectionBBoxNetwork, step by step: model.blocks[:-1] are the backbone,
    blocks[-1] pools time and concatenates, detection_head = RoIAlign -> max -> proj."""
    with torch.no_grad():
        x: Any = [slow, fast]
        blocks = list(ref.model.blocks)
        for block in blocks[:-1]:
            x = block(x)
        feats = list(x)
        head = ref.detection_head
        pooled = blocks[-1](list(feats)).squeeze(2)  # (B, D, h, w); it edits its list
        person = head.pool_spatial(head.roi_layer(pooled, boxes)).flatten(1)  # (K, D)
        logits = head.proj(person)
        probs = ref([slow, fast], boxes)  # the whole network: its sigmoid output
    torch.testing.assert_close(probs, torch.sigmoid(logits), rtol=0, atol=1e-6)
    return Outputs(feats, person, logits, probs)


@pytest.fixture(scope="module")
def pytorchvideo_model(tmp_path_factory: pytest.TempPathFactory, video: Path) -> Iterator[Any]:
    mp = pytest.MonkeyPatch()
    try:
        with torchvision_stand_in(mp):
            from pytorchvideo.models.hub.slowfast import slowfast_r50_detection

            torch.manual_seed(0)
            ref = slowfast_r50_detection(
                pretrained=False, head_pool_kernel_sizes=((T_FAST // ALPHA, 1, 1), (T_FAST, 1, 1))
            ).eval()
            randomise_norms(ref, seed=1, linear_bias=True)
            work = tmp_path_factory.mktemp("pytorchvideo")
            src = work / "SLOWFAST_8x8_R50_DETECTION.pyth"  # the hub file's layout
            torch.save({"model_state": ref.state_dict()}, src)
            ckpt = work / "imported.ckpt"
            report = _cli(
                "import-checkpoint", "--format", "pytorchvideo", str(src),
                "--preset", "slowfast_r50_ava", "--out", str(ckpt), *FAST_SETTINGS,
            )  # fmt: skip
            assert "no config in the checkpoint: slowfast_r50_detection's defaults" in report
            yield Imported.of(ref, ckpt, _bundle(ckpt, work / "bundle", video))
    finally:
        mp.undo()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pytorchvideo_imports_faithfully(pytorchvideo_model: Any, case: Case) -> None:
    slow, fast, boxes = _clip(case, seed=2)
    expected = _pytorchvideo_outputs(pytorchvideo_model.ref, slow, fast, boxes)
    ours, served = _ours_and_served(pytorchvideo_model, slow, fast, boxes)
    _compare("pytorchvideo slowfast_r50_detection", case, expected, ours, served)


# ---- MMAction2 -------------------------------------------------------------------------

MMACTION2_CONFIGS = {
    "avg": "slowfast_kinetics400-pretrained-r50_8xb6-8x8x1-cosine-10e_ava22-rgb.py",
    "max": "slowfast_kinetics400-pretrained-r50-temporal-max_8xb6-8x8x1-cosine-10e_ava22-rgb.py",
}
# The zoo's other SlowFast AVA configs (architecture differences: 4x16 = speed ratio 8 and
# lateral kernel 5; the AVA 2.1 8x8 one), compared in torch only (no bundle) to save time.
MMACTION2_MORE = {
    "4x16 ava21": "slowfast_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb.py",
    "8x8 ava21": "slowfast_kinetics400-pretrained-r50_8xb8-8x8x1-20e_ava21-rgb.py",
}


def _mmaction2_outputs(ref: nn.Module, fast: Tensor, boxes: Tensor) -> Outputs:
    """MMAction2's FastRCNN pieces: the SlowFast backbone on the whole clip (it subsamples
    the slow pathway itself), SingleRoIExtractor3D, BBoxHeadAVA (pools, fc_cls); column 0
    of fc_cls is the reserved background column and is dropped, as the import does."""
    with torch.no_grad():
        feats = list(ref.backbone(fast))
        roi_feats, _ = ref.roi_head.bbox_roi_extractor(tuple(feats), boxes)
        bbox_head = ref.roi_head.bbox_head
        person = bbox_head.spatial_pool(bbox_head.temporal_pool(roi_feats)).flatten(1)
        logits = bbox_head(roi_feats)[:, 1:]
    torch.testing.assert_close(logits, bbox_head.fc_cls(person)[:, 1:], rtol=0, atol=0)
    return Outputs(feats, person, logits, torch.sigmoid(logits))


def _build_mmaction2(config: str, work: Path) -> tuple[nn.Module, Path]:
    import mmaction
    from mmaction.registry import MODELS
    from mmaction.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner.checkpoint import save_checkpoint

    register_all_modules(init_default_scope=True)
    configs = Path(mmaction.__file__).parent / ".mim" / "configs" / "detection" / "slowfast"
    cfg = Config.fromfile(str(configs / config))
    cfg.model.init_cfg = None  # random weights: no Kinetics download
    torch.manual_seed(0)
    ref = MODELS.build(cfg.model).eval()
    randomise_norms(ref, seed=3, linear_bias=True)
    path = work / config.replace(".py", ".pth")
    save_checkpoint(
        {"meta": {"cfg": cfg.pretty_text, "epoch": 10}, "state_dict": ref.state_dict()}, str(path)
    )
    return ref, path


@pytest.fixture(scope="module", params=["avg", "max"])
def mmaction2_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, video: Path
) -> Any:
    mode = request.param
    mmaction_importable()
    work = tmp_path_factory.mktemp(f"mmaction2_{mode}")
    ref, src = _build_mmaction2(MMACTION2_CONFIGS[mode], work)
    assert ref.roi_head.bbox_roi_extractor.temporal_pool_mode == mode
    ckpt = work / "imported.ckpt"
    report = _cli(
        "import-checkpoint", "--format", "mmaction2", str(src),
        "--preset", "slowfast_r50_ava", "--out", str(ckpt), *FAST_SETTINGS,
    )  # fmt: skip
    assert "from the checkpoint's MMAction2 config (meta.cfg)" in report
    assert load_checkpoint(ckpt).preset_overrides["roi_temporal_pool"] == mode
    return mode, Imported.of(ref, ckpt, _bundle(ckpt, work / "bundle", video))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mmaction2_imports_faithfully(mmaction2_model: Any, case: Case) -> None:
    mode, imported = mmaction2_model
    slow, fast, boxes = _clip(case, seed=4)
    expected = _mmaction2_outputs(imported.ref, fast, boxes)
    ours, served = _ours_and_served(imported, slow, fast, boxes)
    assert load_manifest(imported.bundle).model.roi_temporal_pool == mode
    _compare(f"MMAction2 SlowFast R50 AVA temporal-{mode}", case, expected, ours, served)


@pytest.mark.parametrize("name", list(MMACTION2_MORE))
def test_mmaction2_other_zoo_configs_import_faithfully(tmp_path: Path, name: str) -> None:
    mmaction_importable()
    ref, src = _build_mmaction2(MMACTION2_MORE[name], tmp_path)
    alpha = int(ref.backbone.speed_ratio)
    ckpt = tmp_path / "imported.ckpt"
    _cli(
        "import-checkpoint", "--format", "mmaction2", str(src), "--preset", "slowfast_r50_ava",
        "--out", str(ckpt), *FAST_SETTINGS,
    )  # fmt: skip
    model = build_model(load_checkpoint(ckpt))
    assert model.backbone.alpha == alpha  # read from meta.cfg (speed_ratio)
    case = CASES[1]
    slow, fast, boxes = _clip(case, seed=5, alpha=alpha)
    expected = _mmaction2_outputs(ref, fast, boxes)
    with torch.no_grad():
        out = model(slow, fast, boxes)
        ours = Outputs(
            model.backbone(slow, fast),
            out.person_features,
            out.action_logits,
            model.probabilities(out.action_logits),
        )
    _compare(f"MMAction2 {name} (torch only)", case, expected, ours, None)

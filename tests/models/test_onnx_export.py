"""ONNX Runtime vs PyTorch for both halves of the action model (issue 2 acceptance).

backbone+RoI head (``features``) and LFB+global head (``head``) are exported once per
preset with a dynamic batch, box count and bank window, then run in ONNX Runtime (CPU)
with 1, 3 and 0 boxes and batches of 1 and 2. Max abs difference must be <= 1e-4 and
the graphs may use only default-domain ONNX operators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from models.action_model import ActionModel
from models.onnx_utils import (
    DEFAULT_OPSET,
    FEATURES_DYNAMIC_AXES,
    FEATURES_INPUTS,
    FEATURES_OUTPUTS,
    HEAD_DYNAMIC_AXES,
    HEAD_INPUTS,
    FeaturesGraph,
    HeadGraph,
    export_onnx,
    onnx_ops,
)
from models.presets import slowfast_r50_ava, slowfast_tiny
from models.roi import RoIHead

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOL = 1e-4
W = 6  # bank window of the example inputs


@dataclass
class Exported:
    model: ActionModel
    features: Path
    head: Path
    head_outputs: tuple[str, ...]
    size: tuple[int, int]  # (H, W) of the clips


def _clips(
    model: ActionModel, batch: int, size: tuple[int, int], seed: int
) -> tuple[torch.Tensor, ...]:
    info = model.preset_info
    assert info is not None
    gen = torch.Generator().manual_seed(seed)
    slow = torch.randn(batch, 3, info.slow_frames, *size, generator=gen)
    fast = torch.randn(batch, 3, info.num_frames, *size, generator=gen)
    return slow, fast


def _boxes(k: int, batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(K, 5) boxes in input pixels, some crossing the border."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    xy = torch.rand(k, 4, generator=gen) * torch.tensor([w, h, w, h]) * 1.2 - 0.1 * w
    x1, x2 = torch.minimum(xy[:, 0], xy[:, 2]), torch.maximum(xy[:, 0], xy[:, 2]) + 4
    y1, y2 = torch.minimum(xy[:, 1], xy[:, 3]), torch.maximum(xy[:, 1], xy[:, 3]) + 4
    idx = torch.arange(k) % batch
    return torch.stack([idx.float(), x1, y1, x2, y2], 1)


def _bank(k: int, window: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank window and a mask mixing empty, partly filled and full rows."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(k, window, dim, generator=gen)
    mask = torch.zeros(k, window)
    for row in range(k):
        mask[row, : (row * 3) % (window + 1)] = 1.0
    return bank, mask


def _export(tmp: Path, factory: Callable[..., ActionModel], size: tuple[int, int]) -> Exported:
    torch.manual_seed(0)
    model = factory(use_lfb=True, use_global=True).eval()
    slow, fast = _clips(model, 2, size, seed=1)
    boxes = _boxes(3, 2, size, seed=2)
    features = export_onnx(
        FeaturesGraph(model),
        (slow, fast, boxes),
        tmp / "backbone.onnx",
        input_names=FEATURES_INPUTS,
        output_names=FEATURES_OUTPUTS,
        dynamic_axes=FEATURES_DYNAMIC_AXES,
    )
    head_graph = HeadGraph(model)
    dim = model.feature_dim
    bank, mask = _bank(3, W, dim, seed=3)
    head = export_onnx(
        head_graph,
        (torch.randn(3, dim), torch.randn(3, dim), bank, mask),
        tmp / "head.onnx",
        input_names=HEAD_INPUTS,
        output_names=head_graph.output_names,
        dynamic_axes=HEAD_DYNAMIC_AXES,
    )
    return Exported(model, features, head, head_graph.output_names, size)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    yield _export(tmp_path_factory.mktemp("tiny"), slowfast_tiny, (128, 160))


@pytest.fixture(scope="module")
def r50(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    # Kept small for 2 CPU cores: 64x64 clips, 8 slow / 32 fast frames.
    yield _export(tmp_path_factory.mktemp("r50"), slowfast_r50_ava, (64, 64))


def _session(path: Path) -> object:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def _check_features(exp: Exported, cases: list[tuple[int, int]]) -> dict[str, float]:
    sess = _session(exp.features)
    diffs: dict[str, float] = {}
    for batch, k in cases:
        slow, fast = _clips(exp.model, batch, exp.size, seed=10 + batch)
        boxes = _boxes(k, batch, exp.size, seed=20 + k)
        with torch.no_grad():
            person, glob = exp.model.features(slow, fast, boxes)
        got = sess.run(None, {"slow": slow.numpy(), "fast": fast.numpy(), "boxes": boxes.numpy()})
        assert got[0].shape == (k, exp.model.feature_dim)
        d = max(_max_abs(got[0], person.numpy()), _max_abs(got[1], glob.numpy()))
        diffs[f"B={batch},K={k}"] = d
    return diffs


def _check_head(exp: Exported, cases: list[tuple[int, int]]) -> dict[str, float]:
    sess = _session(exp.head)
    dim = exp.model.feature_dim
    diffs: dict[str, float] = {}
    for k, window in cases:
        gen = torch.Generator().manual_seed(100 + k)
        person, gpp = torch.randn(k, dim, generator=gen), torch.randn(k, dim, generator=gen)
        bank, mask = _bank(k, window, dim, seed=200 + window)
        with torch.no_grad():
            want = [t.numpy() for t in exp.model.head(person, gpp, bank, mask) if t is not None]
        feeds = {"person": person, "global_per_person": gpp, "bank": bank, "mask": mask}
        got = sess.run(list(exp.head_outputs), {n: t.numpy() for n, t in feeds.items()})
        assert len(got) == len(want) == 2
        assert got[0].shape == (k, exp.model.num_classes)
        diffs[f"K={k},W={window}"] = max(_max_abs(g, w) for g, w in zip(got, want, strict=True))
        # The graph ignores what masked slots hold, as the torch module does.
        feeds["bank"] = torch.where(mask[..., None] > 0, bank, torch.full_like(bank, 1e6))
        again = sess.run(list(exp.head_outputs), {n: t.numpy() for n, t in feeds.items()})
        assert all(np.array_equal(a, g) for a, g in zip(again, got, strict=True))
    return diffs


def _check_ops(path: Path) -> None:
    ops = onnx_ops(path)
    assert {domain for domain, _ in ops} == {""}, sorted(ops)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0] >= 17
    onnx.checker.check_model(model)


FEATURE_CASES = [(2, 3), (1, 1), (2, 0), (1, 3), (1, 0)]
HEAD_CASES = [(3, W), (1, W), (0, W), (3, 1), (3, 11)]


def test_tiny_features_onnx_matches_torch(tiny: Exported) -> None:
    _check_ops(tiny.features)
    diffs = _check_features(tiny, FEATURE_CASES)
    assert max(diffs.values()) <= TOL, diffs


def test_tiny_head_onnx_matches_torch(tiny: Exported) -> None:
    _check_ops(tiny.head)
    diffs = _check_head(tiny, HEAD_CASES)
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.slow
def test_r50_features_onnx_matches_torch(r50: Exported) -> None:
    _check_ops(r50.features)
    diffs = _check_features(r50, [(1, 1), (1, 3), (1, 0), (2, 3)])
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.slow
def test_r50_head_onnx_matches_torch(r50: Exported) -> None:
    _check_ops(r50.head)
    diffs = _check_head(r50, HEAD_CASES)
    assert max(diffs.values()) <= TOL, diffs


def test_onnx_ops_lists_default_domain_ops(tiny: Exported) -> None:
    ops = onnx_ops(tiny.head)
    assert ("", "MatMul") in ops and ("", "Softmax") in ops
    assert DEFAULT_OPSET >= 17


def test_head_probabilities_graph(tmp_path: Path) -> None:
    """HeadGraph(probabilities=True) exports the pose softmax + sigmoid as plain ops."""
    torch.manual_seed(0)
    model = slowfast_tiny().eval()  # RoI only: bank and mask are unused inputs
    graph = HeadGraph(model, probabilities=True)
    dim = model.feature_dim
    path = export_onnx(
        graph,
        (torch.randn(3, dim), torch.randn(3, dim), torch.zeros(3, 2, dim), torch.zeros(3, 2)),
        tmp_path / "head.onnx",
        input_names=HEAD_INPUTS,
        output_names=graph.output_names,
        dynamic_axes=HEAD_DYNAMIC_AXES,
    )
    sess = _session(path)
    for k in (0, 1, 3):
        person = torch.randn(k, dim)
        feeds = {
            "person": person.numpy(),
            "global_per_person": np.zeros((k, dim), np.float32),
            "bank": np.zeros((k, 2, dim), np.float32),
            "mask": np.zeros((k, 2), np.float32),
        }
        used = {i.name for i in sess.get_inputs()}
        (probs,) = sess.run(None, {n: v for n, v in feeds.items() if n in used})
        with torch.no_grad():
            want = model.probabilities(
                model.head(person, person, torch.zeros(k, 1, dim), torch.zeros(k, 1))[0]
            )
        assert _max_abs(probs, want.numpy()) <= 1e-5


def test_dynamo_exporter_option(tmp_path: Path) -> None:
    """export_onnx(dynamo=True), kept for when the TorchScript exporter goes away."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    roi_head = RoIHead(in_channels=(4, 2), spatial_scale=1 / 16).eval()
    slow = torch.randn(2, 4, 2, 8, 10)
    fast = torch.randn(2, 2, 8, 8, 10)

    class Head(torch.nn.Module):
        def forward(self, s: torch.Tensor, f: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
            return roi_head([s, f], boxes)

    path = export_onnx(
        Head(),
        (slow, fast, _boxes(3, 2, (128, 160), seed=1)),
        tmp_path / "roi.onnx",
        input_names=("s", "f", "boxes"),
        output_names=("person",),
        dynamic_axes={"s": {0: "B"}, "f": {0: "B"}, "boxes": {0: "K"}},
        opset=18,
        dynamo=True,
    )
    sess = _session(path)
    for k in (0, 1, 3):
        boxes = _boxes(k, 2, (128, 160), seed=k)
        (got,) = sess.run(None, {"s": slow.numpy(), "f": fast.numpy(), "boxes": boxes.numpy()})
        with torch.no_grad():
            want = roi_head([slow, fast], boxes).numpy()
        assert _max_abs(got, want) <= 1e-5


def test_dot_product_nonlocal_exports_for_every_size(tmp_path: Path) -> None:
    """PySlowFast's dot-product non-local divides by the number of attended positions, which
    follows the clip size: with height/width dynamic (as ``avaserve export`` writes the
    backbone), the graph must compute it, not keep the export size's."""
    torch.manual_seed(0)
    model = slowfast_tiny(
        nonlocal_stages=(2,),
        nonlocal_blocks=((1,),),
        nonlocal_instantiation="dot_product",
        nonlocal_pool=(2, 2, 2),
        nonlocal_zero_init=False,  # a live block, not the identity
    ).eval()
    axes = {k: dict(v) for k, v in FEATURES_DYNAMIC_AXES.items()}
    for name in ("slow", "fast"):
        axes[name].update({3: "height", 4: "width"})
    size = (128, 160)
    slow, fast = _clips(model, 2, size, seed=1)
    path = export_onnx(
        FeaturesGraph(model),
        (slow, fast, _boxes(3, 2, size, seed=2)),
        tmp_path / "backbone.onnx",
        input_names=FEATURES_INPUTS,
        output_names=FEATURES_OUTPUTS,
        dynamic_axes=axes,
    )
    diffs: dict[str, float] = {}
    for other in (size, (96, 224)):
        exp = Exported(model, path, path, (), other)
        diffs |= {f"{other} {k}": v for k, v in _check_features(exp, [(2, 3)]).items()}
    assert max(diffs.values()) <= TOL, diffs

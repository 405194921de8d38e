"""ActionModel composition, switches and the probability function (torch vs numpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.ava import POSE_IDS
from core.probs import action_probabilities, pose_columns
from models.action_model import ActionModel
from models.lfb import LFB
from models.roi import RoIHead, roi_align


class StubBackbone(nn.Module):
    """Stand-in with the SlowFast contract: stride-16 maps, (C_s, C_f) = (6, 2) channels."""

    out_channels = (6, 2)
    spatial_stride = 16

    def __init__(self) -> None:
        super().__init__()
        self.slow = nn.Conv3d(3, 6, kernel_size=(1, 16, 16), stride=(1, 16, 16))
        self.fast = nn.Conv3d(3, 2, kernel_size=(1, 16, 16), stride=(1, 16, 16))

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> list[torch.Tensor]:
        return [self.slow(slow), self.fast(fast)]


def _model(*, lfb: bool = False, use_global: bool = False, **kw: object) -> ActionModel:
    torch.manual_seed(0)
    return ActionModel(
        backbone=StubBackbone(),
        roi_head=RoIHead(in_channels=(6, 2), spatial_scale=1 / 16),
        lfb=LFB(dim_in=8, dim_bank=8, dim_inner=4) if lfb else None,
        use_global=use_global,
        **kw,  # type: ignore[arg-type]
    ).eval()


def _clip(b: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(b)
    slow = torch.randn(b, 3, 2, 64, 96, generator=gen)
    fast = torch.randn(b, 3, 8, 64, 96, generator=gen)
    boxes = torch.tensor(
        [[0.0, 4.0, 2.0, 40.0, 60.0], [b - 1.0, 30.0, 10.0, 90.0, 64.0], [0.0, 0, 0, 96, 64]]
    )
    return slow, fast, boxes


@pytest.mark.parametrize(
    ("lfb", "use_global", "cls_in"),
    [(False, False, 8), (True, False, 8 + 4), (False, True, 8 + 8), (True, True, 8 + 4 + 8)],
    ids=["roi", "roi+lfb", "roi+global", "roi+lfb+global"],
)
def test_switches_shapes_and_composition(lfb: bool, use_global: bool, cls_in: int) -> None:
    model = _model(lfb=lfb, use_global=use_global)
    assert model.classifier.in_features == cls_in and model.num_classes == 80
    slow, fast, boxes = _clip()
    bank = torch.randn(3, 5, 8)
    mask = torch.tensor([[1.0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(slow, fast, boxes, bank, mask)
        person, glob = model.features(slow, fast, boxes)
        action, scene = model.head(person, glob[boxes[:, 0].long()], bank, mask)
    assert out.action_logits.shape == (3, 80)
    assert out.person_features.shape == (3, 8) and out.global_features.shape == (2, 8)
    assert torch.equal(out.action_logits, action)
    assert torch.allclose(
        glob, torch.cat([f.mean((2, 3, 4)) for f in model.backbone(slow, fast)], 1)
    )
    if use_global:
        assert out.scene_logits is not None and out.scene_logits.shape == (2, 80)
        assert scene is not None and scene.shape == (3, 80)
        # The per-person scene logits are the clip's, gathered by batch index.
        assert torch.allclose(scene, out.scene_logits[boxes[:, 0].long()])
    else:
        assert out.scene_logits is None and scene is None


def test_global_feature_reaches_the_right_person() -> None:
    model = _model(use_global=True)
    slow, fast, boxes = _clip()
    with torch.no_grad():
        person, glob = model.features(slow, fast, boxes)
        a0, _ = model.head(
            person, glob[boxes[:, 0].long()], torch.zeros(3, 1, 8), torch.zeros(3, 1)
        )
        a1, _ = model.head(
            person, glob[1 - boxes[:, 0].long()], torch.zeros(3, 1, 8), torch.zeros(3, 1)
        )
    assert not torch.allclose(a0, a1)


def _max_pool_model() -> ActionModel:
    """The stub backbone under a RoI head that max-pools time (seeded: same weights each call)."""
    torch.manual_seed(0)
    return ActionModel(
        backbone=StubBackbone(),
        roi_head=RoIHead(in_channels=(6, 2), spatial_scale=1 / 16, temporal_pool="max"),
        use_global=True,
    ).eval()


def test_temporal_max_pool_reaches_person_and_global_features() -> None:
    """roi_temporal_pool="max" (MMAction2 temporal_pool_mode='max'): each pathway's time
    axis is max-pooled before RoIAlign and for the global feature."""
    model = _max_pool_model()
    slow, fast, boxes = _clip()
    with torch.no_grad():
        person, glob = model.features(slow, fast, boxes)
        feats = model.backbone(slow, fast)
    want_glob = torch.cat([f.amax(dim=2).mean(dim=(2, 3)) for f in feats], dim=1)
    torch.testing.assert_close(glob, want_glob)
    fmap = torch.cat([f.amax(dim=2) for f in feats], dim=1)
    want_person = roi_align(fmap, boxes, spatial_scale=1 / 16).amax(dim=(2, 3))
    torch.testing.assert_close(person, want_person)
    assert not torch.allclose(glob, torch.cat([f.mean(dim=(2, 3, 4)) for f in feats], dim=1))


def test_temporal_max_pool_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from models.onnx_utils import FeaturesGraph, export_onnx

    model = _max_pool_model()
    slow, fast, boxes = _clip()
    path = export_onnx(
        FeaturesGraph(model),
        (slow, fast, boxes),
        tmp_path / "features.onnx",
        input_names=["slow", "fast", "boxes"],
        output_names=["person", "global"],
        dynamic_axes={"boxes": {0: "K"}, "person": {0: "K"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"slow": slow.numpy(), "fast": fast.numpy(), "boxes": boxes.numpy()})
    with torch.no_grad():
        want = model.features(slow, fast, boxes)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w.numpy()).max() <= 1e-5


def test_no_bank_means_empty_window_and_zero_boxes() -> None:
    model = _model(lfb=True, use_global=True)
    slow, fast, boxes = _clip()
    with torch.no_grad():
        implicit = model(slow, fast, boxes).action_logits
        explicit = model(slow, fast, boxes, torch.randn(3, 7, 8), torch.zeros(3, 7)).action_logits
        empty = model(slow, fast, boxes[:0])
    assert torch.allclose(implicit, explicit, atol=1e-6)
    assert empty.action_logits.shape == (0, 80) and empty.person_features.shape == (0, 8)
    assert empty.global_features.shape == (2, 8)


@pytest.mark.parametrize(
    ("class_ids", "expected_pose_columns"),
    [
        (tuple(range(1, 81)), tuple(range(14))),
        ((80, 3, 17, 1, 14, 15), (1, 3, 4)),
        ((20, 30, 40), ()),
    ],
)
def test_probabilities_torch_matches_numpy(
    class_ids: tuple[int, ...], expected_pose_columns: tuple[int, ...]
) -> None:
    model = _model(class_ids=class_ids)
    assert model.pose_columns == expected_pose_columns
    assert pose_columns(class_ids, POSE_IDS) == expected_pose_columns
    logits = torch.randn(5, len(class_ids)) * 10
    logits[0, 0] = 80.0  # large logits must not overflow either implementation
    logits[1, -1] = -80.0
    got = model.probabilities(logits).numpy()
    want = action_probabilities(logits.numpy(), expected_pose_columns)
    assert np.abs(got - want).max() <= 1e-6
    if expected_pose_columns:
        assert np.allclose(got[:, list(expected_pose_columns)].sum(1), 1.0, atol=1e-6)
    others = [c for c in range(len(class_ids)) if c not in expected_pose_columns]
    assert np.allclose(got[:, others], torch.sigmoid(logits[:, others]).numpy(), atol=1e-6)
    # A boolean mask is accepted too, and an empty batch works.
    mask = np.isin(np.arange(len(class_ids)), expected_pose_columns)
    assert np.abs(action_probabilities(logits.numpy(), mask) - want).max() == 0
    assert action_probabilities(np.zeros((0, len(class_ids))), mask).shape == (0, len(class_ids))


def test_sigmoid_activation_scores_every_column_independently() -> None:
    """Imported upstream heads: a sigmoid per column, pose columns included."""
    model = _model(output_activation="sigmoid")
    assert model.pose_columns == tuple(range(14)) and model.softmax_columns == ()
    assert not bool(model.softmax_mask.any()) and int(model.pose_mask.sum()) == 14
    logits = torch.randn(4, 80) * 5
    got = model.probabilities(logits)
    assert torch.equal(got, torch.sigmoid(logits))
    want = action_probabilities(logits.numpy(), model.pose_columns, "sigmoid")
    assert np.abs(got.numpy() - want).max() <= 1e-6
    # The default is today's pose softmax: the pose columns sum to 1.
    assert np.allclose(action_probabilities(logits.numpy(), model.pose_columns)[:, :14].sum(1), 1)
    with pytest.raises(ValueError, match="output_activation must be one of"):
        _model(output_activation="softmax")
    with pytest.raises(ValueError, match="output_activation must be one of"):
        action_probabilities(logits.numpy(), (), "relu")


@pytest.mark.parametrize(
    ("logits", "columns", "error"),
    [
        (np.zeros(5), (0,), "(K, C)"),
        (np.zeros((2, 5)), (7,), "out of range"),
        (np.zeros((2, 5)), np.array([True, False]), "one entry per class"),
    ],
)
def test_action_probabilities_errors(logits: np.ndarray, columns: object, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        action_probabilities(logits, columns)  # type: ignore[arg-type]


def test_bad_class_ids_and_lfb_size() -> None:
    with pytest.raises(ValueError, match="unique"):
        _model(class_ids=(1, 1, 2))
    with pytest.raises(ValueError, match="LFB dim_in"):
        ActionModel(
            backbone=StubBackbone(),
            roi_head=RoIHead(in_channels=(6, 2), spatial_scale=1 / 16),
            lfb=LFB(dim_in=9, dim_bank=8),
        )


def test_appearance_descriptor_reads_box_colours() -> None:
    """Cells of a box over a frame whose top half is one colour and bottom half another."""
    from models.roi import appearance_descriptor

    frame = torch.zeros(1, 3, 40, 40)
    frame[0, :, :20] = torch.tensor([1.0, -1.0, 0.5])[:, None, None]
    frame[0, :, 20:] = torch.tensor([-0.5, 0.25, 2.0])[:, None, None]
    d = appearance_descriptor(frame, torch.tensor([[0.0, 10, 0, 30, 40]]), (2, 1))
    assert d.shape == (1, 6)  # channel-major: R top, R bottom, G top, ...
    torch.testing.assert_close(d[0], torch.tensor([1.0, -0.5, -1.0, 0.25, 0.5, 2.0]))
    # Only the box's middle third counts (x 16.7 .. 23.3 here): the sides are background.
    frame[0, :, :, 10:16] = 9.0
    frame[0, :, :, 25:30] = -9.0
    again = appearance_descriptor(frame, torch.tensor([[0.0, 10, 0, 30, 40]]), (2, 1))
    torch.testing.assert_close(again, d)


def test_appearance_columns_feed_the_lfb_only() -> None:
    """With an appearance grid the person features grow by the colour cells of the clip's
    middle fast frame; the classifier reads only the first D columns, so only an LFB sees
    them (a model without LFB gives the same logits whatever the cells hold)."""
    from models.presets import slowfast_tiny
    from models.roi import appearance_descriptor

    torch.manual_seed(0)
    small = {"short_side": 32, "num_frames": 4, "alpha": 2}
    plain = slowfast_tiny(class_ids=(1, 12, 80), appearance_grid=(3, 2), **small).eval()
    assert plain.person_dim == plain.feature_dim + 18 and plain.appearance == (3, 2)
    slow, fast = torch.randn(1, 3, 2, 32, 48), torch.randn(1, 3, 4, 32, 48)
    boxes = torch.tensor([[0.0, 4, 2, 20, 30]])
    person, glob = plain.features(slow, fast, boxes)
    assert person.shape == (1, plain.person_dim)
    torch.testing.assert_close(person[:, -18:], appearance_descriptor(fast[:, :, 2], boxes, (3, 2)))
    other = person.clone()
    other[:, -18:] += 5.0
    bank, mask = torch.zeros(1, 1, 1), torch.zeros(1, 1)
    torch.testing.assert_close(
        plain.head(person, glob, bank, mask)[0], plain.head(other, glob, bank, mask)[0]
    )
    # With an LFB the cells matter, and the bank rows carry them too (dim_bank = D + A).
    lfb_model = slowfast_tiny(
        class_ids=(1, 12, 80), use_lfb=True, lfb_dim_inner=8, appearance_grid=(3, 2), **small
    ).eval()
    assert lfb_model.lfb is not None and lfb_model.lfb.dim_bank == lfb_model.person_dim
    window = torch.randn(1, 4, lfb_model.person_dim)
    ones = torch.ones(1, 4)
    a = lfb_model.head(person, glob, window, ones)[0]
    b = lfb_model.head(other, glob, window, ones)[0]
    assert not torch.allclose(a, b)
    # A checkpoint's grid must match the model's.
    state = lfb_model.state_dict()
    state["appearance_grid"] = torch.tensor([2, 2])
    with pytest.raises(ValueError, match="appearance_grid"):
        lfb_model.load_state_dict(state)

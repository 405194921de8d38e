"""export/frame_convs.py: 3-D convs rewritten as exact 2-D ones (issue 18's CPU speed), the
plan that picks them, the gated rewrite, export's record of it and `bundle optimize`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from core.manifest import load_manifest, validate_bundle
from export import frame_convs
from export.bundle import build_bundle, random_init_model
from export.frame_convs import parse_kinds, plan, rewrite, rewrite_checked, rewrite_file
from export.parity import ParityError
from export.quantize import calibration_feeds


def _conv_model(
    w: np.ndarray,
    *,
    bias: bool,
    pads: list[int],
    strides: list[int],
    group: int = 1,
    relu: bool = True,
) -> onnx.ModelProto:
    """x (N, C, T, H, W; N, H and W dynamic) -> Conv [-> Relu] -> y."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=w.shape[0]).astype(np.float32), "B"))
        inputs.append("B")
    nodes = [
        helper.make_node(
            "Conv", inputs, ["c" if relu else "y"], name="conv",
            pads=pads, strides=strides, group=group,
        )
    ]  # fmt: skip
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    x = helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", w.shape[1] * group, 8, "H", "W"]
    )
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "Co", "To", "Ho", "Wo"])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


CASES = {
    # name: (weight shape, pads, strides, group, bias)
    "fast stem 5x7x7 on RGB, stride 2": ((8, 3, 5, 7, 7), [2, 3, 3, 2, 3, 3], [1, 2, 2], 1, True),
    "slow stem 1x7x7 on RGB": ((16, 3, 1, 7, 7), [0, 3, 3, 0, 3, 3], [1, 2, 2], 1, False),
    "thin 3x3x3, no bias": ((6, 4, 3, 3, 3), [1, 1, 1, 1, 1, 1], [1, 1, 1], 1, False),
    "thin 1x3x3, asymmetric spatial pads": (
        (8, 8, 1, 3, 3),
        [0, 0, 1, 0, 2, 1],
        [1, 1, 2],
        1,
        True,
    ),
    "frame 1x3x3 grouped": ((32, 16, 1, 3, 3), [0, 1, 1, 0, 1, 1], [1, 1, 1], 2, True),
    "frame 1x1x1 stride 2": ((24, 32, 1, 1, 1), [0, 0, 0, 0, 0, 0], [1, 2, 2], 1, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rewrite_is_exact_on_every_shape(name: str) -> None:
    """The rewritten graph equals the original (float32 rounding) for several batch sizes and
    odd frame sizes through the same dynamic graph, and its convs are 2-D."""
    shape, pads, strides, group, bias = CASES[name]
    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.2, size=shape).astype(np.float32)
    original = _conv_model(w, bias=bias, pads=pads, strides=strides, group=group)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    report = rewrite(rewritten, {"thin", "frame"})
    assert report.count == 1
    onnx.checker.check_model(rewritten, full_check=True)
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    weights = {t.name: t for t in rewritten.graph.initializer}
    assert len(convs) == 1 and len(weights[convs[0].input[1]].dims) == 4
    assert "W" not in weights  # the 5-D weight is gone
    cin = shape[1] * group
    for n, h, wd in ((1, 32, 45), (3, 17, 20)):
        x = rng.normal(size=(n, cin, 8, h, wd)).astype(np.float32)
        want, got = _run(original, x), _run(rewritten, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_plan_picks_only_what_it_can_rewrite_exactly() -> None:
    def node(**attrs: Any) -> Any:
        return helper.make_node("Conv", ["x", "W"], ["y"], **attrs)

    same = {"pads": [2, 3, 3, 2, 3, 3], "strides": [1, 2, 2]}
    assert plan(node(**same), (8, 3, 5, 7, 7)) == "thin"
    assert plan(node(pads=[0] * 6), (64, 3, 1, 7, 7)) == "thin"
    assert plan(node(pads=[0] * 6), (64, 64, 1, 3, 3)) == "frame"  # wide: not thin
    assert plan(node(pads=[0] * 6), (64, 8, 1, 1, 1)) == "frame"  # 1x1: no spatial kernel
    assert plan(node(pads=[1, 0, 0, 1, 0, 0]), (8, 8, 3, 1, 1)) is None  # temporal only
    assert plan(node(pads=[1, 1, 1, 1, 1, 1]), (8, 64, 3, 3, 3)) is None  # wide 3-D
    assert plan(node(pads=[2, 3, 3, 2, 3, 3], strides=[2, 2, 2]), (8, 3, 5, 7, 7)) is None
    assert plan(node(pads=[1, 3, 3, 2, 3, 3]), (8, 3, 4, 7, 7)) is None  # even kt
    assert plan(node(pads=[1, 3, 3, 2, 3, 3]), (8, 3, 5, 7, 7)) is None  # not "same" in time
    assert plan(node(pads=[2, 3, 3, 2, 3, 3], dilations=[2, 1, 1]), (8, 3, 5, 7, 7)) is None
    assert plan(node(pads=[1, 1, 1, 1]), (8, 3, 3, 3)) is None  # already 2-D
    assert plan(node(auto_pad="SAME_UPPER"), (8, 3, 1, 7, 7)) is None


def test_default_kinds_leave_wide_convs_alone() -> None:
    w = np.ones((32, 32, 1, 3, 3), np.float32)
    model = _conv_model(w, bias=False, pads=[0, 1, 1, 0, 1, 1], strides=[1, 1, 1])
    assert rewrite(model).count == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    assert parse_kinds("thin") == frame_convs.DEFAULT_KINDS
    assert parse_kinds("none") == frozenset() and parse_kinds(" thin , frame") == {"thin", "frame"}
    with pytest.raises(ValueError, match="comma-separated list"):
        parse_kinds("stems")


def _feed(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(2, 3, 8, 24, 30)).astype(np.float32)}


def test_rewrite_checked_refuses_a_wrong_rewrite_and_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = np.random.default_rng(2).normal(size=(8, 3, 5, 7, 7)).astype(np.float32)
    path = tmp_path / "g.onnx"
    onnx.save(_conv_model(w, bias=True, pads=[2, 3, 3, 2, 3, 3], strides=[1, 2, 2]), str(path))
    before = path.read_bytes()
    real = frame_convs._shifted_sum_conv

    def off_by_one_frame(node: Any, weight: np.ndarray, bias: str | None) -> Any:
        return real(node, np.roll(weight, 1, axis=2), bias)  # taps in the wrong frames

    monkeypatch.setattr(frame_convs, "_shifted_sum_conv", off_by_one_frame)
    with pytest.raises(ParityError, match="rewritten"):
        rewrite_checked(path, [_feed(0), _feed(1)], graph="rewritten")
    assert path.read_bytes() == before
    monkeypatch.undo()
    report = rewrite_checked(path, [_feed(0), _feed(1)], graph="rewritten")
    assert report.describe() == {"thin": 1} and path.read_bytes() != before
    assert rewrite_file(path).count == 0  # idempotent: nothing 3-D left to rewrite


@pytest.fixture(scope="module")
def video(assets: Path) -> Path:
    return assets / "video" / "basketball_2people.mp4"


def _tiny(out: Path, video: Path, **options: Any) -> Path:
    build_bundle(
        random_init_model("slowfast_tiny", overrides={"short_side": 64}),
        out,
        parity_video=video,
        parity_keyframes=2,
        slim=False,
        **options,
    )
    return out


def test_export_rewrites_and_records_and_optimize_upgrades_an_old_bundle(
    video: Path, tmp_path: Path
) -> None:
    """export rewrites the thin convs (parity-gated like the rest) and records how many; a
    bundle exported without them gets the same graph from `bundle optimize`."""
    from avaserve.cli import app

    new = _tiny(tmp_path / "new", video)
    old = _tiny(tmp_path / "old", video, conv_rewrites=())
    m_new, m_old = load_manifest(new), load_manifest(old)
    n_thin = m_new.graphs["backbone"].rewrites.get("thin", 0)
    assert n_thin >= 2  # at least the two RGB stems
    assert m_old.graphs["backbone"].rewrites == {} and m_new.graphs["head"].rewrites == {}
    assert m_new.parity["backbone"].max_abs_diff["person"] < 1e-4

    def person(bundle: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
        m = load_manifest(bundle)
        sess = ort.InferenceSession(
            str(bundle / m.graphs["backbone"].file), providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in sess.get_inputs()]
        return np.asarray(sess.run(["person"], {n: feed[n] for n in names})[0])

    out = tmp_path / "optimized"
    r = CliRunner().invoke(
        app, ["bundle", "optimize", str(old), "--out", str(out), "--video", str(video)]
    )
    assert r.exit_code == 0, r.output
    assert (
        f"backbone: 3-D convs rewritten as 2-D for ONNX Runtime's CPU kernels: {n_thin} thin"
        in (r.output)
    )
    m_opt = load_manifest(out)
    assert m_opt.graphs["backbone"].rewrites == {"thin": n_thin}
    assert m_opt.graphs["backbone"].sha256 != m_old.graphs["backbone"].sha256
    assert validate_bundle(out)
    _, samples, _ = calibration_feeds(m_old, video=video, count=2)
    for feed in samples:
        np.testing.assert_allclose(person(out, feed), person(old, feed), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(person(new, feed), person(old, feed), rtol=1e-4, atol=1e-4)
    bad = CliRunner().invoke(
        app,
        ["bundle", "optimize", str(old), "--out", str(tmp_path / "x"), "--conv-rewrites", "all"],
    )
    assert bad.exit_code == 2 and "--conv-rewrites: 'all'" in bad.output


def test_quantize_applies_the_rewrites_it_is_asked_for(video: Path, tmp_path: Path) -> None:
    """bundle quantize rewrites an older float32 graph before quantising (default), and leaves
    it plain under ``conv_rewrites=()`` (what `export --conv-rewrites none --quantize int8`
    passes on)."""
    from export.quantize import quantize_bundle

    plain = _tiny(tmp_path / "plain", video, conv_rewrites=())
    by_default = quantize_bundle(
        plain, tmp_path / "q", video=video, calibration_keyframes=2
    ).graphs["backbone"]
    kept_plain = quantize_bundle(
        plain, tmp_path / "q0", video=video, calibration_keyframes=2, conv_rewrites=()
    ).graphs["backbone"]
    assert by_default.rewrites.get("thin", 0) >= 2 and kept_plain.rewrites == {}

    def float_3d_convs(path: Path) -> int:
        model = onnx.load(str(path))
        dims = {t.name: len(t.dims) for t in model.graph.initializer}
        return sum(n.op_type == "Conv" and dims.get(n.input[1]) == 5 for n in model.graph.node)

    # The thin convs stay float32 in int8 (too few channels to gain): 3-D in one, 2-D in the
    # other, and nothing else differs.
    plain_3d = float_3d_convs(tmp_path / "q0" / kept_plain.file)
    assert (
        plain_3d - float_3d_convs(tmp_path / "q" / by_default.file) == by_default.rewrites["thin"]
    )

"""core/manifest.py: schema rules, round trip, and `validate_bundle` on real ONNX files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.manifest import (
    MANIFEST_NAME,
    BankSpec,
    BundleError,
    BundleManifest,
    DetectorSpec,
    GraphSpec,
    ModelInfo,
    Preprocessing,
    Provenance,
    ShapeRange,
    describe_graph,
    load_manifest,
    tensorrt_ep_options,
    validate_bundle,
    write_manifest,
)

D = 4  # toy feature width
C = 3  # toy classes


def _save(
    path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]
) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # onnx 1.23 stamps IR 14 by default, newer than ONNX Runtime 1.31 reads (13); opset 17
    # needs IR 8.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _toy_backbone(path: Path) -> None:
    """(slow (B,3,2,8,8), fast (B,3,8,8,8), boxes (K,5)) -> (person (K,D), global (B,D))."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    _save(
        path,
        [
            helper.make_node("ReduceMean", ["slow"], ["s"], axes=[2, 3, 4], keepdims=0),
            helper.make_node("ReduceMean", ["fast"], ["f"], axes=[2, 3, 4], keepdims=0),
            helper.make_node("Add", ["s", "f"], ["sf"]),
            helper.make_node("MatMul", ["sf", "w_g"], ["global"]),
            helper.make_node("MatMul", ["boxes", "w_p"], ["person"]),
        ],
        [
            helper.make_tensor_value_info("slow", f, ["B", 3, 2, 8, 8]),
            helper.make_tensor_value_info("fast", f, ["B", 3, 8, 8, 8]),
            helper.make_tensor_value_info("boxes", f, ["K", 5]),
        ],
        [
            helper.make_tensor_value_info("person", f, ["K", D]),
            helper.make_tensor_value_info("global", f, ["B", D]),
        ],
        [
            numpy_helper.from_array(rng.normal(size=(3, D)).astype(np.float32), "w_g"),
            numpy_helper.from_array(rng.normal(size=(5, D)).astype(np.float32), "w_p"),
        ],
    )


def _toy_head(path: Path) -> None:
    """(person, global (K,D), bank (K,W,D), mask (K,W)) -> (action_probs, scene_probs) (K,C)."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(1)
    _save(
        path,
        [
            helper.make_node("Unsqueeze", ["mask", "ax2"], ["m3"]),
            helper.make_node("Mul", ["bank", "m3"], ["bm"]),
            helper.make_node("ReduceMean", ["bm"], ["bsum"], axes=[1], keepdims=0),
            helper.make_node("Add", ["person", "bsum"], ["pb"]),
            helper.make_node("MatMul", ["pb", "w_a"], ["al"]),
            helper.make_node("Sigmoid", ["al"], ["action_probs"]),
            helper.make_node("MatMul", ["global", "w_a"], ["sl"]),
            helper.make_node("Sigmoid", ["sl"], ["scene_probs"]),
        ],
        [
            helper.make_tensor_value_info("person", f, ["K", D]),
            helper.make_tensor_value_info("global", f, ["K", D]),
            helper.make_tensor_value_info("bank", f, ["K", "W", D]),
            helper.make_tensor_value_info("mask", f, ["K", "W"]),
        ],
        [
            helper.make_tensor_value_info("action_probs", f, ["K", C]),
            helper.make_tensor_value_info("scene_probs", f, ["K", C]),
        ],
        [
            numpy_helper.from_array(rng.normal(size=(D, C)).astype(np.float32), "w_a"),
            numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        ],
    )


TOY_RANGES = {
    "backbone": {
        "slow": ShapeRange(min=(1, 3, 2, 8, 8), opt=(2, 3, 2, 8, 8), max=(4, 3, 2, 8, 8)),
        "fast": ShapeRange(min=(1, 3, 8, 8, 8), opt=(2, 3, 8, 8, 8), max=(4, 3, 8, 8, 8)),
        "boxes": ShapeRange(min=(1, 5), opt=(8, 5), max=(64, 5)),
    },
    "head": {
        "person": ShapeRange(min=(1, D), opt=(8, D), max=(64, D)),
        "global": ShapeRange(min=(1, D), opt=(8, D), max=(64, D)),
        "bank": ShapeRange(min=(1, 1, D), opt=(8, 305, D), max=(64, 305, D)),
        "mask": ShapeRange(min=(1, 1), opt=(8, 305), max=(64, 305)),
    },
}


def toy_manifest(
    graphs: dict[str, GraphSpec], detector: DetectorSpec | None = None
) -> BundleManifest:
    return BundleManifest(
        model=ModelInfo(
            preset="toy",
            class_ids=(1, 12, 80),
            class_names=("bend/bow (at the waist)", "stand", "watch (a person)"),
            pose_ids=(1, 12),
            evaluated_ids=(1, 12, 80),
        ),
        preprocessing=Preprocessing(
            short_side=8,
            mean=(0.45, 0.45, 0.45),
            std=(0.225, 0.225, 0.225),
            num_frames=8,
            alpha=4,
            sampling_rate=2,
            target_fps=30.0,
        ),
        detector=detector,
        bank=BankSpec(enabled=True, feature_dim=D),
        graphs=graphs,
        provenance=Provenance(avaserve_version="0.1.0", onnx_version=onnx.__version__),
    )


def make_toy_bundle(
    root: Path, detector: tuple[DetectorSpec, GraphSpec] | None = None
) -> BundleManifest:
    """A small but real bundle: two onnx.helper graphs (+ optionally a built detector)."""
    root.mkdir(parents=True, exist_ok=True)
    _toy_backbone(root / "backbone.onnx")
    _toy_head(root / "head.onnx")
    graphs = {
        role: describe_graph(root / f"{role}.onnx", shape_ranges=TOY_RANGES[role], opset=17)
        for role in ("backbone", "head")
    }
    spec = None
    if detector is not None:
        spec, graphs["detector"] = detector
    manifest = toy_manifest(graphs, spec)
    write_manifest(root, manifest)
    return manifest


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    make_toy_bundle(tmp_path / "bundle")
    return tmp_path / "bundle"


# -- schema ----------------------------------------------------------------------------------


def test_round_trip_and_validate(bundle: Path) -> None:
    m = load_manifest(bundle)
    assert m.schema_version == 1
    assert m.model.pose_mask() == (True, True, False)
    assert m.model.label_map().name(12) == "stand"
    assert m.preprocessing.num_slow_frames == 2
    assert m.bank.max_entries == 305
    assert m.graphs["head"].outputs[0].shape == ("K", C)
    checks = validate_bundle(bundle)
    assert {c.check for c in checks} == {"schema", "sha256", "onnxruntime"}
    assert [c.file for c in checks if c.check == "onnxruntime"] == ["backbone.onnx", "head.onnx"]


def test_manifest_without_model_options_reads_as_before(bundle: Path) -> None:
    """A manifest written before the head options were recorded means what it meant then."""
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    for name in ("roi_sampling_ratio", "output_activation", "roi_temporal_pool"):
        raw["model"].pop(name)
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    m = load_manifest(bundle).model
    assert m.roi_sampling_ratio == 2 and m.roi_temporal_pool == "avg"
    assert m.output_activation == "pose_softmax_sigmoid" and m.softmax_mask() == m.pose_mask()


def test_bank_windows_and_sharing_are_optional_and_checked(bundle: Path) -> None:
    """Older manifests have no windows nor window sharing (None: the service derives them); a
    written window must hold the keyframe and fit window_seconds."""
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    b = load_manifest(bundle).bank
    assert (b.file_window, b.live_window, b.shared_window) == (None, None, None)
    raw["bank"].update(file_window=[-30, 30], live_window=[-60, 0], shared_window=True)
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    b = load_manifest(bundle).bank
    assert (b.file_window, b.live_window, b.shared_window) == ((-30, 30), (-60, 0), True)
    for bad in ([-31, 30], [1, 5], [-5, -1]):
        raw["bank"]["file_window"] = bad
        (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
        with pytest.raises(BundleError, match="file_window"):
            load_manifest(bundle)


def test_tensorrt_ep_options_carry_profiles(bundle: Path) -> None:
    opts = tensorrt_ep_options(load_manifest(bundle), "head", bundle)
    assert opts["trt_fp16_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(bundle / "trt_cache")
    assert (
        opts["trt_profile_max_shapes"] == f"person:64x{D},global:64x{D},bank:64x305x{D},mask:64x305"
    )


def _edit(bundle: Path, path: list[str | int], value: Any) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (["schema_version"], 2, "schema_version", "upgrade avaserve"),
        (["preprocessing", "num_frames"], 6, "preprocessing", "not a multiple of alpha=4"),
        (["preprocessing", "std"], [0.2, 0.0, 0.2], "preprocessing.std", "> 0"),
        (["model", "pose_ids"], [1, 14], "model", "[14]"),
        (["model", "class_names"], ["a"], "model", "1 entries but model.class_ids has 3"),
        (["bank", "feature_dim"], 0, "bank", "bank.feature_dim=0"),
        (["preprocessing", "clip_alignment"], "middle", "preprocessing.clip_alignment", "center"),
        (["graphs", "head", "sha256"], "xyz", "graphs.head.sha256", "64 lower-case hex"),
        (["graphs", "head", "file"], "../head.onnx", "graphs.head.file", "bundle-relative"),
        (["keyframe_rate"], 0, "keyframe_rate", "greater than 0"),
        (["model", "roi_temporal_pool"], "median", "model.roi_temporal_pool", "'max'"),
        (
            ["model", "roi_sampling_ratio"],
            -1,
            "model.roi_sampling_ratio",
            "greater than or equal to 0",
        ),
        (["bank", "surprise"], 1, "bank.surprise", "Extra inputs"),
    ],
)
def test_bad_manifest_names_field(
    bundle: Path, path: list[str | int], value: Any, field: str, words: str
) -> None:
    _edit(bundle, path, value)
    with pytest.raises(BundleError) as info:
        load_manifest(bundle)
    assert info.value.file == MANIFEST_NAME
    assert info.value.field == field
    assert words in str(info.value)


def test_shape_range_must_fit_input(bundle: Path) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["graphs"]["backbone"]["shape_ranges"]["slow"]["max"] = [4, 3, 2, 16, 8]
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="varies axis 3"):
        load_manifest(bundle)


def test_missing_required_graph(bundle: Path) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    del raw["graphs"]["head"]
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"graphs lacks \['head'\]"):
        load_manifest(bundle)


def test_detector_spec_rules() -> None:
    with pytest.raises(ValueError, match="person_class_id=0 is not in detector.class_ids"):
        DetectorSpec(
            format="yolox", input_height=416, input_width=416, channel_order="BGR", class_ids=(2,)
        )
    with pytest.raises(ValueError, match="nms_score_threshold=0.9"):
        DetectorSpec(
            format="yolox",
            input_height=416,
            input_width=416,
            channel_order="BGR",
            nms_score_threshold=0.9,
        )
    spec = DetectorSpec(format="avaserve", input_height=480, input_width=640, channel_order="RGB")
    assert spec.score_threshold == 0.8 and spec.input_size == (480, 640)


# -- validate_bundle: corrupt and mismatched bundles -----------------------------------------


def test_flipped_byte_is_refused(bundle: Path) -> None:
    data = bytearray((bundle / "head.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "head.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        validate_bundle(bundle, load_graphs=False)
    assert info.value.file == "head.onnx"
    assert info.value.field == "graphs.head.sha256"
    assert "sha256 mismatch" in str(info.value)


def test_renamed_output_is_refused(bundle: Path) -> None:
    # Rename an output in the graph itself and re-hash it, so only the I/O check can catch it.
    model = onnx.load(str(bundle / "head.onnx"))
    for node in model.graph.node:
        node.output[:] = ["action_scores" if o == "action_probs" else o for o in node.output]
    model.graph.output[0].name = "action_scores"
    onnx.save(model, str(bundle / "head.onnx"))
    from core.manifest import sha256_file

    _edit(bundle, ["graphs", "head", "sha256"], sha256_file(bundle / "head.onnx"))
    with pytest.raises(BundleError) as info:
        validate_bundle(bundle)
    assert info.value.file == "head.onnx"
    assert info.value.field == "graphs.head.outputs"
    assert "missing ['action_probs'], unexpected ['action_scores']" in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (
            ["graphs", "head", "outputs", 0, "dtype"],
            "float16",
            "graphs.head.outputs.action_probs.dtype",
            "float16",
        ),
        (
            ["graphs", "backbone", "outputs", 0, "shape"],
            ["K", D, 1],
            "graphs.backbone.outputs.person.shape",
            "rank",
        ),
        (
            ["graphs", "head", "outputs", 1, "shape"],
            ["K", 7],
            "graphs.head.outputs.scene_probs.shape",
            "axis 1",
        ),
    ],
)
def test_signature_mismatch_names_field(
    bundle: Path, path: list[str | int], value: Any, field: str, words: str
) -> None:
    _edit(bundle, path, value)
    with pytest.raises(BundleError) as info:
        validate_bundle(bundle)
    assert (info.value.file, info.value.field) in {("head.onnx", field), ("backbone.onnx", field)}
    assert words in str(info.value)


def test_missing_file_and_unloadable_graph(bundle: Path) -> None:
    (bundle / "backbone.onnx").rename(bundle / "other.onnx")
    with pytest.raises(BundleError, match="backbone.onnx.*missing"):
        validate_bundle(bundle)
    (bundle / "other.onnx").rename(bundle / "backbone.onnx")
    (bundle / "head.onnx").write_bytes(b"not an onnx file")
    from core.manifest import sha256_file

    _edit(bundle, ["graphs", "head", "sha256"], sha256_file(bundle / "head.onnx"))
    with pytest.raises(BundleError) as info:
        validate_bundle(bundle)
    assert info.value.file == "head.onnx" and "cannot load" in str(info.value)


def test_bundle_with_detector(tmp_path: Path, assets: Path) -> None:
    from export.detector import build_yolox_detector

    tmp_path.joinpath("b").mkdir()
    det = build_yolox_detector(
        assets / "detector" / "yolox_nano.onnx", tmp_path / "b" / "detector.onnx"
    )
    make_toy_bundle(tmp_path / "b", detector=det)
    checks = validate_bundle(tmp_path / "b")
    assert ("detector.onnx", "onnxruntime") in {(c.file, c.check) for c in checks}
    m = load_manifest(tmp_path / "b")
    assert m.detector is not None and m.detector.channel_order == "BGR"


def test_manifest_module_is_torch_and_onnx_free() -> None:
    code = (
        "import sys, core.manifest, core.detector_io; "
        "bad = [m for m in ('torch', 'onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2]
    )

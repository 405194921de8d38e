"""export/triton.py: every generated config.pbtxt parses with Triton's own model_config.proto."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from core.manifest import (
    BankSpec,
    BundleManifest,
    EngineSpec,
    GraphSpec,
    ModelInfo,
    Preprocessing,
    Provenance,
    RuntimeHints,
    ShapeRange,
    describe_graph,
    write_manifest,
)
from export.triton import TritonError, TritonOptions, triton_batch_axis, write_triton_repository


def _model_config_pb2() -> ModuleType:
    """Triton's ModelConfig schema as shipped by tritonclient.

    ``tritonclient.grpc`` refuses to import without grpcio (whose extra pins protobuf < 7,
    older than the onnx here needs), so load the generated module file directly.
    """
    pytest.importorskip("tritonclient")
    try:
        from tritonclient.grpc import model_config_pb2  # type: ignore[import-untyped]

        return model_config_pb2  # type: ignore[no-any-return]
    except (ImportError, RuntimeError):
        import tritonclient

        path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def _save(path: Path, nodes: list[Any], ins: list[Any], outs: list[Any], inits: list[Any]) -> None:
    model = helper.make_model(
        helper.make_graph(nodes, path.stem, ins, outs, inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def _bundle(root: Path, *, engine: bool = False) -> BundleManifest:
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    _save(
        root / "backbone.onnx",
        [
            helper.make_node("ReduceMean", ["slow"], ["g"], axes=[2, 3, 4], keepdims=0),
            helper.make_node("Slice", ["boxes", "s1", "s5", "ax1"], ["p"]),
        ],
        [
            helper.make_tensor_value_info("slow", f, ["B", 4, 2, 8, 8]),
            helper.make_tensor_value_info("boxes", f, ["K", 5]),
        ],
        [
            helper.make_tensor_value_info("p", f, ["K", 4]),
            helper.make_tensor_value_info("g", f, ["B", 4]),
        ],
        [
            numpy_helper.from_array(np.array([1], np.int64), "s1"),
            numpy_helper.from_array(np.array([5], np.int64), "s5"),
            numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        ],
    )
    _save(
        root / "head.onnx",
        [
            helper.make_node("ReduceMean", ["bank"], ["b"], axes=[1], keepdims=0),
            helper.make_node("Add", ["person", "b"], ["pb"]),
            helper.make_node("MatMul", ["pb", "w"], ["l"]),
            helper.make_node("Sigmoid", ["l"], ["action_probs"]),
            helper.make_node("ReduceMax", ["l"], ["top"], axes=[1], keepdims=0),
        ],
        [
            helper.make_tensor_value_info("person", f, ["K", 4]),
            helper.make_tensor_value_info("bank", f, ["K", "W", 4]),
        ],
        [
            helper.make_tensor_value_info("action_probs", f, ["K", 3]),
            helper.make_tensor_value_info("top", f, ["K"]),
        ],
        [w],
    )
    ranges = {
        "backbone": {
            "slow": ShapeRange(min=(1, 4, 2, 8, 8), opt=(2, 4, 2, 8, 8), max=(8, 4, 2, 8, 8)),
            "boxes": ShapeRange(min=(1, 5), opt=(16, 5), max=(256, 5)),
        },
        "head": {
            "person": ShapeRange(min=(1, 4), opt=(16, 4), max=(128, 4)),
            "bank": ShapeRange(min=(1, 1, 4), opt=(16, 305, 4), max=(128, 305, 4)),
        },
    }
    graphs = {r: describe_graph(root / f"{r}.onnx", shape_ranges=ranges[r]) for r in ranges}
    engines: tuple[EngineSpec, ...] = ()
    if engine:
        (root / "head.plan").write_bytes(b"PLAN")
        sha = hashlib.sha256(b"PLAN").hexdigest()
        engines = (
            EngineSpec(
                graph="head",
                file="head.plan",
                sha256=sha,
                precision="fp16",
                tensorrt_version="10.3",
            ),
        )
    manifest = BundleManifest(
        model=ModelInfo(
            preset="toy",
            class_ids=(1, 2, 3),
            class_names=("a", "b", "c"),
            pose_ids=(1,),
            evaluated_ids=(1,),
        ),
        preprocessing=Preprocessing(
            short_side=8,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            num_frames=8,
            alpha=4,
            sampling_rate=2,
            target_fps=30,
        ),
        bank=BankSpec(enabled=True, feature_dim=4),
        graphs=graphs,
        runtime=RuntimeHints(engines=engines),
        provenance=Provenance(avaserve_version="0.1.0"),
    )
    write_manifest(root, manifest)
    return manifest


def _parse(path: Path) -> Any:
    pb2 = _model_config_pb2()
    config = pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)  # raises on anything the schema does not know
    return config


def _check_triton_rules(config: Any, graph: GraphSpec) -> None:
    """The model-config rules Triton enforces at load time that a parse does not catch."""
    batched = config.max_batch_size > 0
    if not batched:
        assert not config.HasField("dynamic_batching"), (
            "Triton disables dynamic batching at max_batch_size 0"
        )
    else:
        assert all(
            1 <= s <= config.max_batch_size for s in config.dynamic_batching.preferred_batch_size
        )
    for ours, theirs in ((graph.inputs, config.input), (graph.outputs, config.output)):
        assert [t.name for t in ours] == [t.name for t in theirs]
        for t, c in zip(ours, theirs, strict=True):
            shape = t.shape[1:] if batched else t.shape
            want = [d if isinstance(d, int) else -1 for d in shape] or [1]
            assert list(c.dims) == want


def test_repository_configs_parse(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = _bundle(bundle)
    configs = write_triton_repository(bundle, tmp_path / "repo")
    assert [p.parent.name for p in configs] == ["backbone", "head"]
    pb2 = _model_config_pb2()
    for path in configs:
        config = _parse(path)
        graph = manifest.graphs[path.parent.name]
        _check_triton_rules(config, graph)
        assert config.platform == "onnxruntime_onnx"
        assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
        assert (path.parent / "1" / "model.onnx").read_bytes() == (bundle / graph.file).read_bytes()
    backbone, head = (_parse(p) for p in configs)
    # Mixed leading axes (B and K): no Triton batching. Head: all K, so Triton batches persons.
    assert backbone.max_batch_size == 0 and list(backbone.input[0].dims) == [-1, 4, 2, 8, 8]
    assert head.max_batch_size == 128
    assert list(head.dynamic_batching.preferred_batch_size) == [16, 128]
    assert head.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(head.input[1].dims) == [-1, 4]  # bank (K, W, 4) without K
    assert list(head.output[1].dims) == [1] and list(head.output[1].reshape.shape) == []


def test_engines_cpu_and_accelerator_options(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _bundle(bundle, engine=True)
    pb2 = _model_config_pb2()
    configs = write_triton_repository(
        bundle,
        tmp_path / "repo",
        options=TritonOptions(use_engines=True, ort_tensorrt=True, instance_count=2),
        prefix="ava_",
    )
    backbone, head = (_parse(p) for p in configs)
    assert head.name == "ava_head" and head.platform == "tensorrt_plan"
    assert (configs[1].parent / "1" / "model.plan").read_bytes() == b"PLAN"
    assert backbone.platform == "onnxruntime_onnx"
    accel = backbone.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert backbone.instance_group[0].count == 2
    cpu = write_triton_repository(
        bundle, tmp_path / "cpu", options=TritonOptions(instance_kind="KIND_CPU")
    )
    assert _parse(cpu[0]).instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    with pytest.raises(TritonError, match="not graphs of this bundle"):
        write_triton_repository(bundle, tmp_path / "x", roles=("detector",))


def test_detector_config_parses(tmp_path: Path, assets: Path) -> None:
    from export.detector import build_yolox_detector

    _, graph = build_yolox_detector(
        assets / "detector" / "yolox_nano.onnx", tmp_path / "detector.onnx"
    )
    assert triton_batch_axis(graph) is None
    from export.triton import model_config_text

    path = tmp_path / "config.pbtxt"
    path.write_text(model_config_text("detector", graph, platform="onnxruntime_onnx"))
    config = _parse(path)
    _check_triton_rules(config, graph)
    assert config.max_batch_size == 0 and [o.name for o in config.output] == [
        "boxes",
        "scores",
        "class_ids",
        "batch_index",
    ]

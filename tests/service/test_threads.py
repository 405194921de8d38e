"""service/threads.py: ONNX Runtime threads per graph from the model's cost (issue 18)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tiny_bundle as tb

import service.runtime as runtime_mod
from core.manifest import load_manifest
from service.engine import Engine, EngineSettings
from service.runtime import RuntimeSettings
from service.threads import HEAVY_PARAMS, int8_dot_product, int8_speed_note, thread_policy


def _manifest(file: str = "backbone.onnx", quantized: bool = False) -> Any:
    q = SimpleNamespace(graphs=("backbone",)) if quantized else None
    return SimpleNamespace(graphs={"backbone": SimpleNamespace(file=file)}, quantization=q)


def _weights(tmp_path: Path, nbytes: int, name: str = "backbone.onnx") -> Path:
    with open(tmp_path / name, "wb") as f:
        f.truncate(nbytes)
    return tmp_path


def test_light_backbone_one_thread_per_graph(tmp_path: Path) -> None:
    p = thread_policy(_weights(tmp_path, 4 * 1_400_000), _manifest(), cores=2)
    assert (p.backbone, p.detector, p.head, p.cost) == (1, 1, 1, "light")
    assert "1.4 M parameters" in p.describe()


def test_heavy_backbone_gets_every_core(tmp_path: Path) -> None:
    p = thread_policy(_weights(tmp_path, 4 * 34_000_000), _manifest(), cores=16)
    assert (p.backbone, p.detector, p.head, p.cost) == (16, 1, 1, "heavy")
    assert p.threads_for("bank_backbone") == 16 and p.threads_for("detector") == 1


def test_int8_weights_count_one_byte_each(tmp_path: Path) -> None:
    # 12 MB of int8 weights are 12 M parameters (heavy); as float32 they would be 3 M.
    d = _weights(tmp_path, 12_000_000, "backbone.int8.onnx")
    assert (
        thread_policy(d, _manifest("backbone.int8.onnx", quantized=True), cores=2).cost == "heavy"
    )
    assert thread_policy(d, _manifest("backbone.int8.onnx"), cores=2).cost == "light"
    assert HEAVY_PARAMS == 5_000_000


def test_explicit_threads_fix_every_graph(tmp_path: Path) -> None:
    p = thread_policy(_weights(tmp_path, 4 * 34_000_000), _manifest(), threads=3, cores=2)
    assert (p.backbone, p.detector, p.head, p.cost) == (3, 3, 3, "fixed")


def test_engine_applies_the_policy_per_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine opens each graph with its role's thread count (auto by default) and keeps
    the policy for the startup log and `annotate`'s summary."""
    bundle = tb.make_bundle(tmp_path / "b")
    opened: dict[str, int] = {}
    real = runtime_mod.OnnxRuntime

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, path: Any, **kw: Any) -> None:
            opened[Path(path).stem] = kw["intra_op_threads"]
            super().__init__(path, **kw)

    monkeypatch.setattr(runtime_mod, "OnnxRuntime", Spy)
    monkeypatch.setattr("service.threads.HEAVY_PARAMS", 1)  # the tiny graphs count as heavy
    monkeypatch.setattr("service.threads.available_cores", lambda: 7)
    engine = Engine(bundle, settings=EngineSettings(isolated_decode=False))
    assert engine.thread_policy.cost == "heavy"
    assert opened["backbone"] == 7 and opened["head"] == 1 and opened["detector"] == 1
    assert engine.settings.runtime.role_threads["backbone"] == 7
    opened.clear()
    fixed = EngineSettings(runtime=RuntimeSettings(intra_op_threads=2), isolated_decode=False)
    engine = Engine(bundle, settings=fixed)
    assert engine.thread_policy.cost == "fixed" and set(opened.values()) == {2}
    assert load_manifest(bundle).graphs["backbone"].file == "backbone.onnx"


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, limits.cpu: 2
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files (not Linux, or not mounted)
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_cgroup_quota_caps_the_cores(
    tmp_path: Path, files: dict[str, str], quota: int | None
) -> None:
    """A pod's CPU limit caps the threads the policy hands out: its affinity mask shows every
    core of the node, but only the quota's worth can run."""
    from service.threads import available_cores, cgroup_cpu_quota

    root = _cgroup(tmp_path, files)
    assert cgroup_cpu_quota(root) == quota
    mask = len(os.sched_getaffinity(0))
    assert available_cores(root) == (min(mask, quota) if quota is not None else mask)


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ("fpu sse4_2 avx avx2 fma", False),
        ("fpu avx2 avx512f avx512_vnni", True),
        ("fpu avx2 avx_vnni", True),
    ],
)
def test_int8_dot_product_reads_the_cpu_flags(tmp_path: Path, flags: str, want: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert int8_dot_product(info) is want


def test_int8_note_only_for_an_int8_bundle_without_vnni(tmp_path: Path) -> None:
    avx2, vnni = tmp_path / "avx2", tmp_path / "vnni"
    avx2.write_text("flags\t: fpu avx2 fma\n")
    vnni.write_text("flags\t: fpu avx2 avx512_vnni\n")
    int8, fp32 = _manifest(quantized=True), _manifest()
    note = int8_speed_note(int8, avx2)
    assert note is not None and "without VNNI" in note
    assert int8_speed_note(int8, vnni) is None
    assert int8_speed_note(fp32, avx2) is None
    assert int8_speed_note(int8, tmp_path / "missing") is None  # not Linux: no guess


def test_uploads_decode_idle_only_beside_a_backbone_on_every_core(tmp_path: Path) -> None:
    heavy = _weights(tmp_path, 4 * 34_000_000)
    assert thread_policy(heavy, _manifest(), cores=2).decode_idle
    assert "idle CPU priority" in thread_policy(heavy, _manifest(), cores=2).describe()
    assert thread_policy(heavy, _manifest(), cores=2).as_dict()["decode_idle"] is True
    assert not thread_policy(heavy, _manifest(), cores=1).decode_idle  # nothing to share
    light = thread_policy(_weights(tmp_path / ".", 4 * 1_400_000, "l.onnx"), _manifest("l.onnx"))
    assert not light.decode_idle and "idle" not in light.describe()
    assert thread_policy(heavy, _manifest(), threads=0, cores=4).decode_idle  # ORT: all cores
    assert not thread_policy(heavy, _manifest(), threads=1, cores=4).decode_idle


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
@pytest.mark.parametrize("forced", [None, False])
def test_file_run_decodes_idle_and_the_next_spare_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forced: bool | None
) -> None:
    """Under the heavy policy an upload's decode thread is in SCHED_IDLE while it decodes
    (``EngineSettings.idle_decode=False`` keeps it normal); the spare decoder started after
    the upload, which a live stream may take, is in the normal class either way."""
    import asyncio
    import threading

    import service.decode as decode_pkg
    import service.decode.sandbox as sandbox

    bundle = tb.make_bundle(tmp_path / "b")
    video = tb.make_video(tmp_path / "v.mp4", seconds=3)
    monkeypatch.setattr("service.threads.HEAVY_PARAMS", 1)
    monkeypatch.setattr("service.threads.available_cores", lambda: 2)
    seen: list[int] = []
    real = decode_pkg.decode_frames

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(os.sched_getscheduler(threading.get_native_id()))
        return real(*a, **kw)

    monkeypatch.setattr(decode_pkg, "decode_frames", spy)
    engine = Engine(bundle, settings=EngineSettings(idle_decode=forced))
    assert engine.idle_decode is (forced is None)

    async def run() -> tuple[int, int | None]:
        n = sum([1 async for _ in engine.annotate_file(video)])
        policy = None
        for _ in range(50):  # the next spare starts once the run has closed
            spare = sandbox._spare
            if spare is not None and spare.process.poll() is None:
                policy = os.sched_getscheduler(spare.process.pid)
                break
            await asyncio.sleep(0.1)
        await engine.close()  # discards the spare
        return n, policy

    n, spare_policy = asyncio.run(run())
    assert n > 0
    assert seen == [os.SCHED_IDLE if forced is None else os.SCHED_OTHER]
    assert spare_policy == os.SCHED_OTHER

"""bench/gpu_check.py without a GPU: it stops at once and names what is missing; its parity
helper (the ONNX Runtime CPU half) compares runtimes correctly (issue 18)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_bundle as tb

from core.manifest import load_manifest
from service.runtime import RuntimeSettings, create_runtime

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu_check import _head_feeds, check_gpu, compare  # noqa: E402


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine")
def test_without_a_gpu_the_script_exits_2_naming_what_is_missing() -> None:
    res = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "nvidia-smi" in res.stderr and "CUDAExecutionProvider" in res.stderr
    assert "Traceback" not in res.stderr


class _Noisy:
    """A runtime whose outputs are the inner one's plus a known offset on one element."""

    def __init__(self, inner: Any, offset: float) -> None:
        self.inner, self.offset = inner, offset

    def run(self, feed: Any) -> dict[str, np.ndarray]:
        out = {k: np.array(v, copy=True) for k, v in self.inner.run(feed).items()}
        out["action"][0, 0] += self.offset
        return out


def test_compare_reports_max_abs_and_cosine_per_output(tmp_path: Path) -> None:
    bundle = tb.make_bundle(tmp_path / "b")
    m = load_manifest(bundle)
    head = create_runtime(bundle, m, "head", RuntimeSettings(intra_op_threads=1))
    feeds = _head_feeds(m, np.random.default_rng(0))
    names = {t.name for t in m.graphs["head"].inputs}
    assert set(feeds[0]) == names
    same = compare(head, head, feeds)
    assert same["action"]["max_abs"] == 0.0 and same["action"]["min_cosine"] == pytest.approx(1.0)
    off = compare(head, _Noisy(head, 0.25), feeds)
    assert off["action"]["max_abs"] == pytest.approx(0.25, abs=1e-6)
    assert off["action"]["min_cosine"] < 1.0


def test_check_gpu_raises_here_or_reports_the_stack() -> None:
    from bench.gpu_check import GpuUnavailable

    if shutil.which("nvidia-smi") is None:
        with pytest.raises(GpuUnavailable, match="missing: nvidia-smi"):
            check_gpu()
    else:  # pragma: no cover - GPU machines
        assert "gpus" in check_gpu()

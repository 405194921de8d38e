"""How many cores each graph gets, chosen from the model's cost.

The service runs three graphs (detector, backbone, head) in their own batcher threads beside
the decoder. Which one deserves the cores depends on the model:

* a **light** backbone (the demo bundle: 1.4 M parameters, 96-px clips) runs in tens of
  milliseconds; intra-op threads cost more in hand-offs than they save, and the three
  graphs plus the decoder already keep the cores busy with one thread each (the figures in
  the README were measured that way);
* a **heavy** backbone (R50/R101: 34-62 M parameters, 256-px clips of 32 frames) takes a
  second per clip on one core, and everything else waits for it: it gets every core, so one
  file or one live stream uses the whole machine. The detector and the head stay at one
  thread (a few milliseconds each).

The cost is read from the bundle, not measured, so the same bundle on the same machine always
gets the same policy: `avaserve annotate` and a REST job then run with the same threads and
give the same numbers to the last digit (tests/service/test_app_rest.py). Measured timings
would flip the choice from run to run on a loaded machine.

Many streams share the cores through the batchers: each graph has one worker thread, so
streams queue for the backbone instead of each spinning up its own threads.

**An upload decodes at idle CPU priority beside a backbone that holds every core**
(`ThreadPolicy.decode_idle`, `idle_priority`). ONNX Runtime splits each operator across its
intra-op threads and waits for the slowest, so a decoder that takes one of those cores stalls
the whole run. With Linux's SCHED_IDLE the upload's decode thread and its decoder process get a
core only when nothing else wants it (between operators, while the one-thread detector and head
run), and a waking inference thread takes its core back at once. Measured with
`bench/bench_pipeline.py --which a --idle-decode auto|off` on the R50 int8 bundle, 2 cores, 4
interleaved pairs of runs: efficiency 0.87 / 1.00 / 0.98 / 0.99 with it, 0.82 / 0.79 / 0.86 /
0.88 without (bare-graph CPU over pipeline CPU 0.82-0.93 against 0.76-0.83); on the float32
R50 and the demo bundle, no difference beyond the host's noise. Making the decoder wait for
each backbone run to end did worse (the decoding then adds to the run's time instead of filling
its gaps). Live streams keep normal priority (their frames arrive in real time), and so do
uploads under the light policy, where decoding is most of the work. A machine kept busy by
normal-priority work starves an idle-priority decoder, and the time its upload waits counts
against `max_wall_s`: `EngineSettings.idle_decode=False` turns it off.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the decoder process imports this module (idle_priority)
    from core.manifest import BundleManifest

__all__ = [
    "HEAVY_PARAMS",
    "idle_priority",
    "int8_dot_product",
    "int8_speed_note",
    "ThreadPolicy",
    "available_cores",
    "backbone_params",
    "cgroup_cpu_quota",
    "thread_policy",
]

# Backbone parameters above which the backbone gets every core. The tiny presets have ~1.4 M,
# R50 34 M; at ~5 M a clip at the AVA sizes takes well over 100 ms on one core, where intra-op
# threads pay for themselves.
HEAVY_PARAMS = 5_000_000


CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")


def int8_dot_product(cpuinfo: Path | None = None) -> bool | None:
    """Whether the CPU has an int8 dot-product instruction (AVX-512 VNNI or AVX-VNNI), from
    /proc/cpuinfo's flags; None where that cannot be read (not Linux)."""
    try:
        text = (CPUINFO if cpuinfo is None else cpuinfo).read_text()
    except OSError:
        return None
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), None
    )
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_speed_note(manifest: BundleManifest, cpuinfo: Path | None = None) -> str | None:
    """A warning for an int8 bundle on an x86 CPU without VNNI, else None. There ONNX Runtime's
    u8 x s8 kernels use AVX2's multiply-add pairs: the measured R50 int8 backbone was 1.60x and
    1.86x float32 in two runs, against 2.73x with VNNI (README, "Real-size models at speed")."""
    if manifest.quantization is None or int8_dot_product(cpuinfo) is not False:
        return None
    return (
        "int8 backbone on a CPU without VNNI (no avx512_vnni / avx_vnni flag): int8 gains less "
        "here (the R50 backbone measured 1.6-1.9x float32 speed on such a CPU, 2.7x with VNNI)"
    )


def available_cores(cgroup_root: Path | None = None) -> int:
    """CPU cores this process may use: its affinity mask (not the host's count), capped by
    the container's CPU quota where one is set (a Kubernetes ``limits.cpu``: the pod sees
    every core of the node in its mask but may use only its quota; threads beyond it only
    get throttled). The quota is rounded up: 1.5 CPUs allow 2 threads."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cgroup_cpu_quota(CGROUP_ROOT if cgroup_root is None else cgroup_root)
    return min(cores, quota) if quota is not None else cores


def cgroup_cpu_quota(root: Path) -> int | None:
    """CPUs allowed by the cgroup CPU quota under ``root`` (v2 ``cpu.max``, else v1
    ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``), rounded up; None without a quota."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return _ceil_ratio(int(fields[0]), int(fields[1]))
        if fields:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _ceil_ratio(quota, period) if quota > 0 else None


def _ceil_ratio(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def idle_priority(*, whole_process: bool = False) -> bool:
    """Put the calling thread (and the threads and processes it starts later) in Linux's
    SCHED_IDLE class; ``whole_process``: every thread the process already has too (a decoder
    process's numpy pool, started at import). False where the platform has none or refuses."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:  # pragma: no cover - not Linux
        return False
    tids = [0]
    if whole_process:
        with contextlib.suppress(OSError):  # no procfs: the calling thread only
            tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except ProcessLookupError:  # pragma: no cover - the thread ended meanwhile
            continue
        except OSError:  # pragma: no cover - a seccomp profile may forbid it
            return False
    return True


def backbone_params(bundle_dir: str | os.PathLike[str], manifest: BundleManifest) -> int:
    """Parameters of the backbone, from its file size (float32 weights: 4 bytes each; an int8
    bundle's quantised weights: 1 byte). The graph's structure is a rounding error next to
    its weights."""
    graph = manifest.graphs.get("backbone")
    if graph is None:
        return 0
    path = Path(bundle_dir) / graph.file
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    quant = manifest.quantization
    per_param = 1 if quant is not None and "backbone" in quant.graphs else 4
    return size // per_param


@dataclass(frozen=True)
class ThreadPolicy:
    """ONNX Runtime intra-op threads per graph role, and why."""

    cores: int
    backbone: int
    detector: int
    head: int
    cost: str  # "light", "heavy" or "fixed" (an explicit --threads)
    backbone_params: int
    reason: str

    @property
    def decode_idle(self) -> bool:
        """Uploads decode at idle CPU priority (module docstring): the backbone's intra-op
        threads cover every core (0 = ONNX Runtime's default, all of them)."""
        return self.cores > 1 and (self.backbone == 0 or self.backbone >= self.cores)

    def threads_for(self, role: str) -> int:
        if role in ("backbone", "bank_backbone"):
            return self.backbone
        return self.detector if role == "detector" else self.head

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_idle": self.decode_idle}

    def describe(self) -> str:
        """One line for logs, the annotate summary and the status endpoint."""
        idle = "; uploads decode at idle CPU priority" if self.decode_idle else ""
        return (
            f"threads: backbone {self.backbone}, detector {self.detector}, head {self.head} "
            f"of {self.cores} cores ({self.cost}: {self.reason}){idle}"
        )


def thread_policy(
    bundle_dir: str | os.PathLike[str],
    manifest: BundleManifest,
    *,
    threads: int | None = None,
    cores: int | None = None,
) -> ThreadPolicy:
    """The policy for this bundle on this machine.

    ``threads``: an explicit count for every graph (the old ``--threads N``; 0 = ONNX
    Runtime's default, all cores); None chooses from the backbone's cost (module docstring).
    """
    n = cores if cores is not None else available_cores()
    params = backbone_params(bundle_dir, manifest)
    if threads is not None:
        return ThreadPolicy(
            n, threads, threads, threads, "fixed", params, f"--threads {threads} for every graph"
        )
    if params >= HEAVY_PARAMS:
        return ThreadPolicy(
            n,
            n,
            1,
            1,
            "heavy",
            params,
            f"backbone ~{params / 1e6:.1f} M parameters >= {HEAVY_PARAMS / 1e6:g} M: it gets "
            "every core, the small graphs one thread",
        )
    return ThreadPolicy(
        n,
        1,
        1,
        1,
        "light",
        params,
        f"backbone ~{params / 1e6:.1f} M parameters < {HEAVY_PARAMS / 1e6:g} M: one thread per "
        "graph, the graphs and the decoder share the cores",
    )

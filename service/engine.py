"""The streaming pipeline: decode -> detect -> track -> batched SlowFast -> bank -> head.

One `Engine` per process owns the bundle's runtimes, the three `Batcher`s (detector, backbone,
head) and the feature bank. Each stream has a `StreamSession` (ring buffer, keyframe scheduler,
tracker). Per keyframe ``t`` of a stream::

    frames --(decode thread: resize once, letterbox keyframes)--> FrameRing
      detect-due(t) --> detector batcher --> tracker (in keyframe order) --+
      clip-due(t)   --> FrameRing.clip(t) --------------------------------+--> backbone batcher
        --> person (N, D), global (D) --> bank write --> [second pass] --> head batcher --> records

Threads and async: everything is driven by one asyncio loop. CPU work that holds the GIL only
briefly or releases it runs off the loop: reading decoded frames (from a separate decoder
process, pre-started so an upload does not wait for its interpreter) + resize + letterbox in a
per-stream worker thread (numpy releases the GIL in its kernels), each graph in its batcher's
worker thread (ONNX Runtime releases the GIL). So decoding stream A, the backbone on a batch,
and the detector on the next keyframes overlap.

Batching across streams: each batcher cuts batches from every stream's requests. The backbone
batch function stacks clips of the same spatial size into (B, 3, T, H', W') and concatenates
every clip's boxes into one (K, 5) tensor ``(batch index, x1, y1, x2, y2)`` in clip pixels.
The head batch function concatenates persons of several keyframes (K rows).

Files (`Engine.annotate_file`) use **center** clips (as in training; predictions lag by half a
clip) and, when the bundle has a bank, a **second pass** over stored features: the head for
keyframe ``t`` runs once the features of ``t + 30`` are in the bank (or at end of stream) and
reads ``[t - 30, t + 30]``, exactly the window training used. Uploads wait when a batcher is
full. Live streams (`LiveSession`) use **causal** clips ending at the keyframe and the causal
bank window ``[t - 60, t]``; when a batcher is full their oldest keyframes are dropped (counted
in `EngineStats`).

Memory per stream is bounded (see `StreamSession.nbytes`); measured with the tiny preset
(short side 128, 16 x 2 frames):

* ring buffer: only frames nearest to some clip sample, uint8 at the short side
  (128 x 171 x 3 = 66 KB each; normalised to float32 only when a clip is cut): peak 10 frames
  (0.66 MB) on the 10 fps 768 x 576 pedestrian video, 16 (1.05 MB) on a 30 fps clip
  (half its frames are never sampled, so never stored); plus the previous source frame for
  keyframe detection (1.3 MB there);
* in-flight keyframes: at most ``max_inflight`` clips (5.3 MB each) waiting for the
  backbone; live streams are capped instead by the batchers' per-stream pending limit;
* file second pass: person + global features of the seconds awaiting their future context
  (61 s window: 30 s x persons x 2 x D x 4 B; 170 KB at D = 144, 2.8 MB for R50);
* bank (in-process): retention x persons/s x D x 2 B (121 x 5 x 144 x 2 = 174 KB;
  R50 D = 2304: 2.8 MB).

So ~5 MB + in-flight clips per stream for the tiny preset; for R50 (256 x 455, 32 frames)
the ring is ~45 frames x 350 KB and a clip 45 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.bank_layout import file_window, head_shares_window, live_window
from core.defaults import BANK_RETENTION_S, DEFAULT_SCORE_THRESHOLD
from core.manifest import BundleError, BundleManifest, load_manifest
from core.sampling import Alignment
from service.bank import BankWindow, FeatureBank, InProcessBank
from service.batching import Batcher, Dropped
from service.detector import PersonDetector, load_user_detector
from service.limits import DecodeLimits
from service.records import Context, Prediction
from service.ringbuffer import Clip, FrameRing
from service.runtime import Runtime, RuntimeSettings, create_runtime
from service.scheduler import DEFAULT_MAX_GAP_S, KeyframeScheduler, check_pts
from service.stride import StrideController
from service.threads import thread_policy
from service.tracker import ByteTracker
from service.types import Detections, TrackedPersons

__all__ = ["Engine", "EngineSettings", "EngineStats", "LiveSession", "StreamSession"]

log = logging.getLogger(__name__)
StrPath = str | PathLike[str]
Kind = Literal["live", "upload"]


# -- settings and stats ----------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    """Engine knobs (the CLI / app builds one; nothing below reads a global).

    detector_batch / backbone_batch / head_batch: largest batch per graph run (keyframes, clips,
        keyframes). Larger batches use a GPU better but add latency and memory.
        backbone_batch None (the default) = 1 when the backbone runs on ONNX Runtime's CPU
        provider, else 4: on CPU a clip's features differ in the last bits when it shares a
        run with other clips (the batch shape changes the kernels' blocking), so batches that
        form by timing would make the same file give slightly different scores from run to
        run (bench/rest_vs_annotate.py shows it), and a CPU's conv work is per clip anyway. On
        the demo bundle only the backbone's batching changed any record; the detector and the
        head keep their batches.
    max_wait_ms: how long a batcher waits for company before running a partial batch.
    max_queue: pending requests per batcher before uploads wait / live keyframes drop.
    live_max_pending: per live stream pending requests per batcher (1-2 keeps latency low).
    max_inflight: keyframes of one upload between detection and features (bounds memory);
        raised automatically to what the clip span needs to avoid a stall.
    window_seconds: bank window length override (<= the bundle's); None = the bundle's.
    score_threshold: persons kept for the action model; None = the bundle's (its DetectorSpec's).
    bank_retention_s: seconds the in-process/Redis bank keeps per stream (>= the window).
    max_pts_gap_s: a frame this far (seconds) after the previous one starts a new segment: the
        keyframes in between are skipped, not filled in (`service.scheduler`), and tracks end.
        Larger keeps keyframes across longer stalls but lets one frame make that many due.
    """

    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    detector_batch: int = 4
    backbone_batch: int | None = None
    head_batch: int = 8
    max_wait_ms: float = 2.0
    max_queue: int = 32
    live_max_pending: int = 2
    max_inflight: int = 4
    window_seconds: int | None = None
    score_threshold: float | None = None
    bank_retention_s: int = BANK_RETENTION_S
    max_pts_gap_s: float = DEFAULT_MAX_GAP_S
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)
    isolated_decode: bool = True
    top_k: int = 5


# Uploads: decoded frames handed from the decode worker thread to the loop per hop.
_FRAMES_PER_HOP = 16

# keyframe_file / keyframe_live: end-to-end time from a keyframe being due to its result.
_STAGES = (
    "decode",
    "detect",
    "track",
    "clip",
    "backbone",
    "bank",
    "head",
    "keyframe_file",
    "keyframe_live",
)


@dataclass
class EngineStats:
    """Plain counters and bounded sample lists (seconds) per stage; the metrics layer reads them.

    Stages: decode (decode + resize + letterbox per frame), detect, track, clip (assembly),
    backbone, bank (write/read calls), head, keyframe (detect-due to record emitted).
    """

    counters: Counter[str] = field(default_factory=Counter)
    samples: dict[str, deque[float]] = field(
        default_factory=lambda: {s: deque(maxlen=4096) for s in _STAGES}
    )
    totals: dict[str, float] = field(default_factory=dict)  # summed seconds per stage

    def count_drop(self, reason: str) -> None:
        """A keyframe a batcher dropped (live streams that fell behind), by reason."""
        self.counters[f"dropped_{reason}"] += 1
        self.counters["keyframes_dropped"] += 1

    def observe(self, stage: str, seconds: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=4096)).append(seconds)
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counters": dict(self.counters), "stages": {}}
        for stage, values in self.samples.items():
            if values:
                arr = np.asarray(values)
                out["stages"][stage] = {
                    "n": int(arr.size),
                    "mean_ms": float(arr.mean() * 1e3),
                    "p50_ms": float(np.percentile(arr, 50) * 1e3),
                    "p95_ms": float(np.percentile(arr, 95) * 1e3),
                    "total_s": float(self.totals[stage]),
                }
        return out


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


# -- batch items -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _DetItem:
    images: np.ndarray  # (1, 3, H, W) detector input
    transform: Any  # LetterboxTransform
    segment: int = 0  # the stream's segment (`StreamSession.segment`): a new one resets tracks


@dataclass(frozen=True)
class _BackboneItem:
    slow: np.ndarray  # (3, T_s, H', W')
    fast: np.ndarray  # (3, T_f, H', W')
    boxes: np.ndarray  # (N, 4) xyxy in clip pixels


@dataclass(frozen=True)
class _Features:
    person: np.ndarray  # (N, D)
    global_: np.ndarray  # (D,)
    bank: np.ndarray  # (N, D') features that go into the bank


@dataclass(frozen=True)
class _HeadItem:
    person: np.ndarray  # (N, D)
    global_per_person: np.ndarray  # (N, D)
    bank: np.ndarray  # (W, D') padded window (shared by the keyframe's persons)
    mask: np.ndarray  # (W,) bool


# -- per-stream state ------------------------------------------------------------------------


@dataclass
class _Keyframe:
    time: float
    det_item: _DetItem
    frame_hw: tuple[int, int]
    due_at: float  # loop time when it became detect-due
    clip: asyncio.Future[Clip | None]
    tracked: asyncio.Future[TrackedPersons | None]
    result: asyncio.Future[_KeyframeResult | None]

    @classmethod
    def new(
        cls,
        time: float,
        det_item: _DetItem,
        frame_hw: tuple[int, int],
        loop: asyncio.AbstractEventLoop,
        due_at: float | None = None,
    ) -> _Keyframe:
        """Detect-due at ``due_at`` (loop time; default now): the moment the frame that made
        it due entered the engine, so its preparation (resize, detector letterbox, clip
        assembly) counts as the keyframe's processing. Clip, tracking, result still to come."""
        return cls(
            time, det_item, frame_hw, loop.time() if due_at is None else due_at,
            loop.create_future(), loop.create_future(), loop.create_future(),
        )  # fmt: skip


@dataclass
class _KeyframeResult:
    """A keyframe after the backbone (and, live, after the head)."""

    time: float
    persons: TrackedPersons
    frame_hw: tuple[int, int]
    features: _Features | None
    context: Context = "ok"
    predictions: list[Prediction] = field(default_factory=list)


class StreamSession:
    """One stream's synchronous state: ring buffer, scheduler, tracker, keyframe frames.

    `step` / `finish` run in the stream's worker thread (one at a time); they return the
    keyframes that became detect-due (with the detector input already letterboxed) and the
    clips that became ready. The tracker is only touched from the event loop, in order.

    Segments: a frame more than ``max_pts_gap_s`` after the previous one ends the segment (its
    pending clips are cut as at `finish`, padded with the last frame before the gap) and starts
    a new one at that frame; the keyframes in the gap are skipped, so one frame never makes
    more than ``max_pts_gap_s * keyframe_rate`` keyframes due. The new segment's keyframes
    carry its number, and the tracker is reset when the first of them is tracked (a person
    seen minutes later is a new track; the bank keeps its times, so windows stay right).
    """

    def __init__(
        self,
        stream_id: str,
        manifest: BundleManifest,
        detector: PersonDetector,
        *,
        alignment: Alignment,
        max_pts_gap_s: float = DEFAULT_MAX_GAP_S,
    ) -> None:
        self.stream_id = stream_id
        self.detector = detector
        self.ring = FrameRing(
            manifest.preprocessing, alignment=alignment, keyframe_rate=manifest.keyframe_rate
        )
        self.scheduler = KeyframeScheduler(
            keyframe_rate=manifest.keyframe_rate,
            after_s=self.ring.geometry.after_s,
            max_gap_s=max_pts_gap_s,
        )
        self.segment = 0  # bumped at every pts gap (see the class docstring)
        self.tracked_segment = 0  # the segment the tracker's tracks belong to (event loop)
        thr = detector.score_threshold
        # Every emitted person (score >= thr) must start or continue a track, so the new-track
        # bar is thr itself; lower-score boxes only continue tracks (ByteTrack's second tier).
        self.tracker = ByteTracker(
            track_thresh=thr, new_track_thresh=thr, low_thresh=min(detector.low_threshold, thr)
        )
        self._prev: tuple[float, np.ndarray] | None = None
        # Live streams slower than real time annotate every k-th keyframe (service/stride.py):
        # ``keep(t)`` says which; a skipped keyframe is neither detected nor cut into a clip.
        self.keep: Callable[[float], bool] | None = None
        self._skipped: set[float] = set()
        self.skipped = 0

    def _wanted(self, det_due: list[float]) -> list[float]:
        if self.keep is None:
            return det_due
        out = []
        for t in det_due:
            if self.keep(t):
                out.append(t)
            else:
                self._skipped.add(t)
                self.skipped += 1
        return out

    def _clips(self, clip_due: list[float]) -> list[Clip]:
        clips = []
        for t in clip_due:
            if t in self._skipped:
                self._skipped.discard(t)
                continue
            clips.append(self.ring.clip(t))
        return clips

    def step(
        self, pts: float, image: np.ndarray
    ) -> tuple[list[tuple[float, _DetItem]], list[Clip]]:
        """One frame: (keyframes now detect-due, clips now ready, in keyframe order).

        Raises `service.scheduler.InvalidPts` for a pts that is not a finite number of
        seconds in range, before any state changes.
        """
        pts = check_pts(pts)
        flushed: list[Clip] = []
        if self.scheduler.is_gap(pts):
            flushed = self.finish()  # the old segment's pending clips, edge-padded
            self.ring.reset()
            self.scheduler.reset()
            self.segment += 1
        self.ring.update(pts, image)
        det_due, clip_due = self.scheduler.update(pts)
        dets = []
        for t in self._wanted(det_due):
            frame = image
            # Nearest of the two frames around t; a halfway tie takes the earlier one.
            if self._prev is not None and (pts - t) > (t - self._prev[0]) + 1e-6:
                frame = self._prev[1]
            images, transform = self.detector.prepare(frame)
            dets.append((t, _DetItem(images, transform, self.segment)))
        clips = flushed + self._clips(clip_due)
        self._release()
        self._prev = (pts, image)
        return dets, clips

    def finish(self) -> list[Clip]:
        self.ring.finish()
        _, clip_due = self.scheduler.finish()
        clips = self._clips(clip_due)
        self._prev = None
        return clips

    def _release(self) -> None:
        nxt = self.scheduler.next_clip_time
        if nxt is not None:
            self.ring.release_before(float(self.ring.geometry.times(nxt)[0]))

    @property
    def nbytes(self) -> int:
        """Bytes held by this stream's frames (ring + the previous raw frame)."""
        return self.ring.nbytes + (self._prev[1].nbytes if self._prev is not None else 0)


# -- the engine ------------------------------------------------------------------------------


class Engine:
    """Owns runtimes, batchers and the bank; runs files and live sessions through them."""

    def __init__(
        self,
        bundle_dir: StrPath,
        *,
        settings: EngineSettings | None = None,
        bank: FeatureBank | None = None,
        detector_path: StrPath | None = None,
    ) -> None:
        self.settings = s = settings or EngineSettings()
        if s.isolated_decode:
            # The first upload's decoder interpreter starts (~0.3 s) while the graphs load.
            from service.decode import prestart

            prestart()
        self.bundle_dir = Path(bundle_dir)
        self.manifest = m = load_manifest(self.bundle_dir)
        # Threads per graph from the model's cost (service/threads.py), unless the settings
        # fix a count; the same bundle and machine always get the same policy.
        self.thread_policy = thread_policy(self.bundle_dir, m, threads=s.runtime.intra_op_threads)
        if not s.runtime.role_threads:
            roles = ("detector", "backbone", "bank_backbone", "head")
            s = self.settings = replace(
                s,
                runtime=replace(
                    s.runtime,
                    role_threads={r: self.thread_policy.threads_for(r) for r in roles},
                ),
            )
        thr = s.score_threshold
        if detector_path is not None:
            self.detector = load_user_detector(
                detector_path,
                score_threshold=thr
                if thr is not None
                else (
                    m.detector.score_threshold
                    if m.detector is not None
                    else DEFAULT_SCORE_THRESHOLD
                ),
                providers=s.runtime.providers,
                intra_op_threads=self.thread_policy.detector,
            )
        elif m.detector is not None:
            self.detector = PersonDetector(
                create_runtime(self.bundle_dir, m, "detector", s.runtime),
                m.detector,
                score_threshold=thr,
            )
        else:
            raise BundleError(
                None, "detector", "the bundle ships no detector; pass --detector PATH (YOLOX ONNX)"
            )
        self.backbone: Runtime = create_runtime(self.bundle_dir, m, "backbone", s.runtime)
        self.head: Runtime = create_runtime(self.bundle_dir, m, "head", s.runtime)
        self.bank_backbone: Runtime | None = None
        if m.bank.enabled and m.bank.source == "bank_backbone":
            self.bank_backbone = create_runtime(self.bundle_dir, m, "bank_backbone", s.runtime)
        self.labels = m.model.label_map()
        self.bank_enabled = m.bank.enabled and "bank" in self.head.input_names
        ws = s.window_seconds or m.bank.window_seconds
        if ws > m.bank.window_seconds:
            raise ValueError(
                f"--window {ws}: the bundle's head was exported for at most "
                f"{m.bank.window_seconds} s of bank context"
            )
        self.window_seconds = ws
        # The manifest's windows; a shorter --window (or a bundle from before export wrote
        # them) derives them from the seconds by the same rule export uses.
        own = ws == m.bank.window_seconds
        self.file_window = (m.bank.file_window if own else None) or file_window(ws)
        self.live_window = (m.bank.live_window if own else None) or live_window(ws)
        self.bank_capacity = m.bank.max_entries if m.bank.enabled else 1
        self.bank_dim = self._bank_dim()
        self.mask_dtype = self._mask_dtype()
        shared = m.bank.shared_window
        self.head_shares_window = shared if shared is not None else self._legacy_shared_window()
        self.bank: FeatureBank = bank or InProcessBank(retention_s=s.bank_retention_s)
        self.stats = EngineStats()
        self.live_sessions: weakref.WeakSet[LiveSession] = weakref.WeakSet()
        self.det_batcher: Batcher[_DetItem, Detections] = self._batcher(
            self._run_detector, "detector", s.detector_batch
        )
        self.bb_batcher: Batcher[_BackboneItem, _Features] = self._batcher(
            self._run_backbone, "backbone", self.backbone_batch_size()
        )
        self.head_batcher: Batcher[_HeadItem, np.ndarray] = self._batcher(
            self._run_head, "head", s.head_batch
        )

    def keyframe_time_estimate(self) -> float | None:
        """Median seconds of one keyframe's graph runs (detector + backbone + head) measured
        so far in this process, or None before any: a new live stream's first stride guess."""
        parts = [self.stats.samples.get(k) for k in ("detect_run", "backbone_run", "head_run")]
        if not parts[1]:
            return None
        return float(sum(np.median(np.asarray(p)) for p in parts if p))

    def live_stride(self) -> int:
        """The largest keyframe stride of the open live streams (1 with none): a gauge."""
        return max((ls.stride.stride for ls in list(self.live_sessions)), default=1)

    def backbone_batch_size(self) -> int:
        """`EngineSettings.backbone_batch`, or its provider-dependent default (see there)."""
        if self.settings.backbone_batch is not None:
            return self.settings.backbone_batch
        # A TensorRT engine (no ORT providers) is a GPU; fakes in tests say what they are.
        providers = getattr(self.backbone, "providers", ("TensorRT",))
        cpu_only = all(p == "CPUExecutionProvider" for p in providers)
        return 1 if cpu_only else 4

    def _batcher(
        self, fn: Callable[[list[Any]], list[Any]], name: str, max_batch_size: int
    ) -> Batcher[Any, Any]:
        s = self.settings
        return Batcher(
            fn,
            name=name,
            max_batch_size=max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            live_max_pending=s.live_max_pending,
        )

    # -- graph runs (batcher worker threads) -----------------------------------------------

    def _bank_dim(self) -> int:
        if self.manifest.bank.enabled:
            return self.manifest.bank.feature_dim
        spec = next((t for t in self.manifest.graphs["head"].inputs if t.name == "bank"), None)
        if spec is not None and isinstance(spec.shape[-1], int):
            return spec.shape[-1]
        return 1

    def _mask_dtype(self) -> Any:
        spec = next((t for t in self.manifest.graphs["head"].inputs if t.name == "mask"), None)
        return np.bool_ if spec is None or spec.dtype == "bool" else np.dtype(spec.dtype)

    def _legacy_shared_window(self) -> bool:
        """A bundle exported before ``bank.shared_window``: find out by running the head once
        (`core.bank_layout.head_shares_window`, what export now does and records)."""
        names = set(self.head.input_names)
        inputs = {t.name: t.shape for t in self.manifest.graphs["head"].inputs if t.name in names}
        return head_shares_window(self.head.run, inputs, self.bank_dim, self.mask_dtype)

    def _run_detector(self, items: list[_DetItem]) -> list[Detections]:
        t0 = time.perf_counter()
        out = self.detector.detect_prepared([i.images for i in items], [i.transform for i in items])
        self.stats.observe("detect_run", time.perf_counter() - t0)
        return out

    @staticmethod
    def backbone_feeds(items: list[_BackboneItem]) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        """One backbone feed per clip size in ``items`` (clips of different sizes cannot share
        a tensor), with the positions of the items it holds. Public for bench_pipeline."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.fast.shape, []).append(i)
        feeds = []
        for idxs in groups.values():
            rows = [
                np.concatenate(
                    [np.full((len(items[i].boxes), 1), b, np.float32), items[i].boxes], axis=1
                )
                for b, i in enumerate(idxs)
            ]
            # A batch of one is a view (no copy of the clip); larger batches must be stacked.
            feed = {
                "slow": _stack([items[i].slow for i in idxs]),  # (B, 3, T_s, H', W')
                "fast": _stack([items[i].fast for i in idxs]),  # (B, 3, T_f, H', W')
                # (K, 5) batch index, x1, y1, x2, y2 (clip pixels)
                "boxes": np.concatenate(rows).astype(np.float32, copy=False),
            }
            feeds.append((idxs, feed))
        return feeds

    def _run_backbone(self, items: list[_BackboneItem]) -> list[_Features]:
        t0 = time.perf_counter()
        results: list[_Features | None] = [None] * len(items)
        for idxs, feed in self.backbone_feeds(items):
            out = self.backbone.run(feed)
            bank_out = self.bank_backbone.run(feed) if self.bank_backbone is not None else out
            person, glob = out["person"], out["global"]  # (K, D), (B, D)
            splits = np.cumsum([len(items[i].boxes) for i in idxs])[:-1]
            for b, (i, p, q) in enumerate(
                zip(
                    idxs,
                    np.split(person, splits),
                    np.split(bank_out["person"], splits),
                    strict=True,
                )
            ):
                results[i] = _Features(p, glob[b], q)
        self.stats.observe("backbone_run", time.perf_counter() - t0)
        return [r for r in results if r is not None]

    def head_feeds(self, items: list[_HeadItem]) -> list[dict[str, np.ndarray]]:
        """The head runs for ``items``, in order. Public for bench_pipeline.

        With a window-sharing head (`_probe_shared_window`) one run per keyframe, its window
        passed once; otherwise one run for all their persons with per-person copies.
        """
        if self.head_shares_window:
            return [
                {
                    "person": it.person.astype(np.float32, copy=False),
                    "global_per_person": it.global_per_person.astype(np.float32, copy=False),
                    "bank": it.bank[None].astype(np.float32, copy=False),
                    "mask": it.mask[None].astype(self.mask_dtype, copy=False),
                }
                for it in items
            ]
        return [self.head_feed(items)]

    def head_feed(self, items: list[_HeadItem]) -> dict[str, np.ndarray]:
        """The head's feed for ``items``: K = all their persons, each with its window."""
        counts = [it.person.shape[0] for it in items]
        feed: dict[str, np.ndarray] = {
            "person": np.concatenate([it.person for it in items]).astype(np.float32, copy=False),
            "global_per_person": np.concatenate([it.global_per_person for it in items]).astype(
                np.float32, copy=False
            ),
        }
        if "bank" in self.head.input_names:
            # (K, W, D'): each person sees its keyframe's window.
            feed["bank"] = np.concatenate(
                [
                    np.broadcast_to(it.bank, (n, *it.bank.shape))
                    for it, n in zip(items, counts, strict=True)
                ]
            ).astype(np.float32, copy=False)
            feed["mask"] = np.concatenate(
                [
                    np.broadcast_to(it.mask, (n, *it.mask.shape))
                    for it, n in zip(items, counts, strict=True)
                ]
            ).astype(self.mask_dtype, copy=False)
        return feed

    def _run_head(self, items: list[_HeadItem]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        runs = [self.head.run(feed)["action"] for feed in self.head_feeds(items)]
        probs = runs[0] if len(runs) == 1 else np.concatenate(runs)  # (K, C) probabilities
        self.stats.observe("head_run", time.perf_counter() - t0)
        counts = [it.person.shape[0] for it in items]
        return list(np.split(probs, np.cumsum(counts)[:-1]))

    # -- per keyframe ----------------------------------------------------------------------

    def _inflight_floor(self, session: StreamSession) -> int:
        # The producer waits for a slot at detect-due time; the oldest in-flight keyframe needs
        # frames up to after_s later, so fewer slots than that would stall the stream.
        g = session.ring.geometry
        return math.ceil(g.after_s * g.keyframe_rate) + 2

    async def _detect_and_track(
        self, session: StreamSession, kf: _Keyframe, prev: _Keyframe | None, kind: Kind
    ) -> TrackedPersons | None:
        t0 = time.perf_counter()
        dets: Detections | None
        try:
            dets = await self.det_batcher.submit(
                kf.det_item, kind=kind, stream_id=session.stream_id
            )
        except Dropped as e:
            self.stats.count_drop(e.reason)
            dets = None
        self.stats.observe("detect", time.perf_counter() - t0)
        if prev is not None:
            # Tracking is sequential per stream: wait for the previous keyframe's update.
            with contextlib.suppress(Exception):
                await asyncio.shield(prev.tracked)
        if dets is None:
            kf.tracked.set_result(None)
            return None
        t1 = time.perf_counter()
        if kf.det_item.segment != session.tracked_segment:
            # The first tracked keyframe after a pts gap: tracks do not carry across it.
            session.tracker.reset()
            session.tracked_segment = kf.det_item.segment
        tracked = session.tracker.update(dets, kf.time)
        keep = tracked.scores >= self.detector.score_threshold
        persons = tracked[np.flatnonzero(keep)]
        self.stats.observe("track", time.perf_counter() - t1)
        kf.tracked.set_result(persons)
        return persons

    async def _features(
        self, session: StreamSession, kf: _Keyframe, prev: _Keyframe | None, kind: Kind
    ) -> _KeyframeResult | None:
        """Detection, tracking, clip and backbone for one keyframe."""
        persons = await self._detect_and_track(session, kf, prev, kind)
        clip = await kf.clip
        if persons is None or clip is None:
            return None
        self.stats.counters["keyframes"] += 1
        if len(persons) == 0:
            return _KeyframeResult(kf.time, persons, kf.frame_hw, None)
        h, w = kf.frame_hw
        ch, cw = clip.size_hw
        # Frame pixels -> normalised -> clip pixels (training's boxes_to_pixels on the clip).
        scale = np.array([cw / w, ch / h, cw / w, ch / h], np.float32)
        item = _BackboneItem(clip.slow, clip.fast, (persons.boxes * scale).astype(np.float32))
        t0 = time.perf_counter()
        try:
            feats = await self.bb_batcher.submit(item, kind=kind, stream_id=session.stream_id)
        except Dropped as e:
            self.stats.count_drop(e.reason)
            return None
        self.stats.observe("backbone", time.perf_counter() - t0)
        return _KeyframeResult(kf.time, persons, kf.frame_hw, feats)

    async def _bank_write(
        self, stream_id: str, res: _KeyframeResult, window: tuple[int, int]
    ) -> BankWindow | None:
        if not self.bank_enabled or res.features is None:
            return None
        t0 = time.perf_counter()
        win = await self.bank.write_and_read(
            stream_id,
            int(round(res.time)),
            res.persons.track_ids,
            res.features.bank,
            window,
            self.manifest.bank.persons_per_second,
            scores=res.persons.scores,
        )
        self.stats.observe("bank", time.perf_counter() - t0)
        return win

    def bank_input(self, window: BankWindow | None, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The head's (W, D') bank input and (W,) mask for keyframe ``t``: slot-aligned for a
        time-aware head (manifest ``bank.layout: slots``), packed rows otherwise; empty
        (all masked) without a window."""
        spec = self.manifest.bank
        if window is None:
            return (
                np.zeros((self.bank_capacity, self.bank_dim), np.float32),
                np.zeros(self.bank_capacity, bool),
            )
        if spec.layout == "slots":
            return window.slotted(
                int(round(t)), spec.slot_origin_s, spec.window_seconds, spec.persons_per_second
            )
        return window.padded(self.bank_capacity)

    async def _head(
        self,
        stream_id: str,
        video: str,
        res: _KeyframeResult,
        window: BankWindow | None,
        kind: Kind,
    ) -> list[Prediction]:
        if res.features is None or len(res.persons) == 0:
            return []
        n = len(res.persons)
        bank, mask = self.bank_input(window, res.time)
        context: Context = (
            "none" if window is None else "degraded" if window.degraded else res.context
        )
        item = _HeadItem(
            res.features.person,
            np.broadcast_to(res.features.global_, (n, res.features.global_.shape[0])),
            bank,
            mask,
        )
        t0 = time.perf_counter()
        probs = await self.head_batcher.submit(item, kind=kind, stream_id=stream_id)
        self.stats.observe("head", time.perf_counter() - t0)
        if context == "degraded":
            self.stats.counters["degraded"] += n
        h, w = res.frame_hw
        out = []
        for i in range(n):
            box = tuple(float(v) for v in res.persons.boxes[i])
            norm = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
            out.append(
                Prediction(
                    video=video,
                    time=res.time,
                    track_id=int(res.persons.track_ids[i]),
                    box=box,  # type: ignore[arg-type]
                    box_norm=norm,
                    score=float(res.persons.scores[i]),
                    probs=probs[i],
                    labels=self.labels,
                    context=context,
                )
            )
        self.stats.counters["predictions"] += n
        return out

    # -- files -----------------------------------------------------------------------------

    async def annotate_file(
        self,
        path: StrPath,
        *,
        video_id: str | None = None,
        progress: Callable[[float], None] | None = None,
        keep_bank: bool = False,
        stream_id: str | None = None,
    ) -> AsyncIterator[Prediction]:
        """Predictions for a video file, in time order (center clips, second bank pass).

        Raises `service.errors.VideoInputError` for a file the decoder refuses.
        ``keep_bank`` leaves the stream's bank entries in place (tests, benchmarks).
        """
        from service.decode import decode_frames, prestart

        video = video_id or Path(path).stem
        sid = stream_id or f"file-{uuid.uuid4().hex[:12]}"
        if stream_id is None and self.bank_enabled:
            self.bank.new_stream(sid)  # made up here: its bank windows need no shared store
        session = StreamSession(
            sid,
            self.manifest,
            self.detector,
            alignment="center",
            max_pts_gap_s=self.settings.max_pts_gap_s,
        )
        s = self.settings
        max_inflight = max(s.max_inflight, self._inflight_floor(session))
        slots = asyncio.Semaphore(max_inflight)
        loop = asyncio.get_running_loop()
        worker = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{sid}")
        decoder = await loop.run_in_executor(
            worker,
            lambda: decode_frames(path, s.decode_limits, isolated=s.isolated_decode),
        )
        self.last_info = decoder.info
        order: asyncio.Queue[_Keyframe | None] = asyncio.Queue()
        pending_clips: deque[_Keyframe] = deque()
        tasks: set[asyncio.Task[Any]] = set()

        def next_step() -> (
            tuple[float, int, list[tuple[float, _DetItem]], list[Clip], float] | None
        ):
            """Frames up to the first one that makes a keyframe or clip due (at most
            `_FRAMES_PER_HOP`): one executor hop per few frames, not per frame, keeps the
            loop's wake-ups off the CPU the graphs need. Order is unchanged: only the last
            frame of a hop can carry detections or clips."""
            n = 0
            pts = 0.0
            while n < _FRAMES_PER_HOP:
                t0 = time.perf_counter()
                try:
                    frame = next(decoder)
                except StopIteration:
                    break
                n += 1
                pts = frame.pts_seconds
                entered = loop.time()  # monotonic: safe to read from this worker thread
                dets, clips = session.step(pts, frame.image)
                self.stats.observe("decode", time.perf_counter() - t0)
                if dets or clips:
                    return pts, n, dets, clips, entered
            return (pts, n, [], [], 0.0) if n else None

        async def produce() -> None:
            prev: _Keyframe | None = None
            frame_hw: tuple[int, int] | None = None
            try:
                while True:
                    step = await loop.run_in_executor(worker, next_step)
                    if step is None:
                        break
                    pts, n_frames, dets, clips, entered = step
                    self.stats.counters["frames"] += n_frames
                    if progress is not None:
                        progress(pts)
                    frame_hw = session.ring.frame_hw
                    ready = deque(clips)
                    # Clips of keyframes already in flight first: they free in-flight slots
                    # (waiting for a slot while holding them would stall the stream).
                    while ready and pending_clips:
                        pending_clips.popleft().clip.set_result(ready.popleft())
                    for t, item in dets:
                        await slots.acquire()
                        assert frame_hw is not None
                        kf = _Keyframe.new(t, item, frame_hw, loop, entered)
                        pending_clips.append(kf)
                        task = loop.create_task(self._file_keyframe(session, kf, prev, slots))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        await order.put(kf)
                        prev = kf
                    while ready:  # a clip due in the same step as its own detection
                        pending_clips.popleft().clip.set_result(ready.popleft())
                clips = await loop.run_in_executor(worker, session.finish)
                for clip in clips:
                    pending_clips.popleft().clip.set_result(clip)
            finally:
                for kf in pending_clips:
                    if not kf.clip.done():
                        kf.clip.set_result(None)
                await order.put(None)

        producer = loop.create_task(produce())
        waiting: deque[_KeyframeResult] = deque()
        written: list[float] = []
        hi = self.file_window[1]
        try:
            while True:
                kf_or_none = await order.get()
                ended = kf_or_none is None
                if kf_or_none is not None:
                    res = await kf_or_none.result
                    if res is not None:
                        waiting.append(res)
                        written.append(res.time)
                # Second pass: keyframe s is final once the features of s + hi are in the bank
                # (the keyframes before it are, too: results are awaited in order).
                ready: list[_KeyframeResult] = []
                while waiting and (
                    ended
                    or not self.bank_enabled
                    or (written and written[-1] >= waiting[0].time + hi)
                ):
                    ready.append(waiting.popleft())
                if ready:
                    groups = await asyncio.gather(*(self._file_head(sid, video, r) for r in ready))
                    for preds in groups:
                        for p in preds:
                            yield p
                if ended:
                    break
            await producer  # re-raises a decode error
        finally:
            if not producer.done():
                producer.cancel()
            for t in list(tasks):
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(producer, *tasks, return_exceptions=True)
            decoder.close()
            if s.isolated_decode:
                # A warm decoder for the next upload, started once this one no longer needs CPU.
                worker.submit(prestart)
            worker.shutdown(wait=False)
            if not keep_bank and self.bank_enabled:
                with contextlib.suppress(Exception):
                    await self.bank.drop_stream(sid)
        self.last_stream_id = sid

    async def _file_keyframe(
        self,
        session: StreamSession,
        kf: _Keyframe,
        prev: _Keyframe | None,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            res = await self._features(session, kf, prev, "upload")
            if res is not None and res.features is not None and self.bank_enabled:
                # First pass: store this second; the window is read in the second pass.
                win = await self._bank_write(session.stream_id, res, (0, 0))
                if win is not None and win.degraded:
                    res.context = "degraded"
            kf.result.set_result(res)
            self.stats.observe("keyframe_file", asyncio.get_running_loop().time() - kf.due_at)
        except BaseException as e:
            if not kf.result.done():
                kf.result.set_exception(e)
            if not kf.tracked.done():
                kf.tracked.set_result(None)
            raise
        finally:
            slots.release()

    async def _file_head(self, sid: str, video: str, res: _KeyframeResult) -> list[Prediction]:
        window = None
        if self.bank_enabled and res.features is not None:
            t0 = time.perf_counter()
            window = await self.bank.read_window(
                sid, int(round(res.time)), self.file_window, self.manifest.bank.persons_per_second
            )
            self.stats.observe("bank", time.perf_counter() - t0)
        return await self._head(sid, video, res, window, "upload")

    # -- live ------------------------------------------------------------------------------

    def live_session(
        self, stream_id: str, *, video: str | None = None, max_output: int = 256
    ) -> LiveSession:
        return LiveSession(self, stream_id, video=video or stream_id, max_output=max_output)

    async def close(self) -> None:
        for b in (self.det_batcher, self.bb_batcher, self.head_batcher):
            await b.close()
        await self.bank.close()
        if self.settings.isolated_decode:
            from service.decode import discard_spare

            discard_spare()


class KeyframePredictions(list[Prediction]):
    """One live keyframe's predictions (a plain list, so callers are unaffected) plus its
    time: a keyframe with nobody in view still says which second it was."""

    def __init__(self, time: float, predictions: Sequence[Prediction] = ()) -> None:
        super().__init__(predictions)
        self.time = float(time)


class LiveSession:
    """A live stream: push frames as they arrive, read per-keyframe predictions as they are made.

    Causal clips (ending at the keyframe) and the causal bank window ``[t - 60, t]``; keyframes
    the batchers drop when the service falls behind are counted, never retried. Bank times are
    the stream's whole seconds, so a reconnecting client should keep its presentation clock.

    ``results()`` yields one list of predictions per processed keyframe, in time order. Its
    buffer holds at most ``max_output`` keyframes; a client that stops reading loses the
    oldest (counted as ``output_dropped``).
    """

    def __init__(self, engine: Engine, stream_id: str, *, video: str, max_output: int) -> None:
        self.engine = engine
        self.stream_id = stream_id
        self.video = video
        self.session = StreamSession(
            stream_id,
            engine.manifest,
            engine.detector,
            alignment="causal",
            max_pts_gap_s=engine.settings.max_pts_gap_s,
        )
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"live-{stream_id}")
        self._prev: _Keyframe | None = None
        self._pending_clips: deque[_Keyframe] = deque()
        self._order: deque[_Keyframe] = deque()
        self._out: deque[list[Prediction]] = deque(maxlen=max_output)
        self._out_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._emitter: asyncio.Task[None] | None = None
        self._kf_event = asyncio.Event()
        self._ended = False
        self.keyframes_done = 0
        # Every k-th keyframe when the model is slower than real time (service/stride.py).
        self.stride = StrideController(keyframe_rate=float(engine.manifest.keyframe_rate))
        self.stride.seed(engine.keyframe_time_estimate())
        self.session.keep = self.stride.keep
        engine.live_sessions.add(self)

    async def push_frame(self, image: np.ndarray, pts: float) -> None:
        """Add one decoded RGB (h, w, 3) uint8 frame with its presentation time in seconds."""
        loop = asyncio.get_running_loop()
        if self._emitter is None:
            self._emitter = loop.create_task(self._emit())
        t0 = time.perf_counter()
        entered = loop.time()
        skipped = self.session.skipped
        dets, clips = await loop.run_in_executor(self._worker, self.session.step, pts, image)
        self.engine.stats.observe("decode", time.perf_counter() - t0)
        self.engine.stats.counters["frames"] += 1
        if self.session.skipped > skipped:
            self.engine.stats.counters["keyframes_skipped_stride"] += self.session.skipped - skipped
        for t, item in dets:
            hw = self.session.ring.frame_hw
            assert hw is not None
            kf = _Keyframe.new(t, item, hw, loop, entered)
            self._pending_clips.append(kf)
            task = loop.create_task(self._keyframe(kf, self._prev))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._order.append(kf)
            self._kf_event.set()
            self._prev = kf
        # Causal clips are due in the same step as their detection: keyframes first, then clips.
        for clip in clips:
            self._pending_clips.popleft().clip.set_result(clip)

    async def keyframes_idle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until this stream has no keyframe in flight.

        Only waits when every in-flight keyframe already has its clip (causal clips get theirs
        in the step that detects them): a keyframe still waiting for later frames would
        otherwise wait for the very frame held back here.
        """
        if timeout <= 0 or self._pending_clips:
            return
        busy = [kf.result for kf in self._order if not kf.result.done()]
        if busy:
            await asyncio.wait(busy, timeout=timeout)

    async def _keyframe(self, kf: _Keyframe, prev: _Keyframe | None) -> None:
        eng = self.engine
        try:
            res = await eng._features(self.session, kf, prev, "live")
            if res is not None and res.features is not None:
                win = await eng._bank_write(self.stream_id, res, eng.live_window)
                res.predictions = await eng._head(self.stream_id, self.video, res, win, "live")
            if res is not None and res.features is not None:
                # Only keyframes that ran the backbone say what a keyframe costs.
                self.stride.observe(asyncio.get_running_loop().time() - kf.due_at)
            kf.result.set_result(res)
        except Dropped as e:
            eng.stats.count_drop(e.reason)
            kf.result.set_result(None)
        except BaseException as e:
            if not kf.tracked.done():
                kf.tracked.set_result(None)
            if not kf.result.done():
                kf.result.set_exception(e)
            raise
        finally:
            eng.stats.observe("keyframe_live", asyncio.get_running_loop().time() - kf.due_at)

    async def _emit(self) -> None:
        while True:
            while not self._order:
                if self._ended:
                    self._out_event.set()
                    return
                self._kf_event.clear()
                await self._kf_event.wait()
            kf = self._order.popleft()
            try:
                res = await kf.result
            except Exception:  # noqa: BLE001 - a failed keyframe must not stop the stream
                log.exception("live %s: keyframe %.1f failed", self.stream_id, kf.time)
                res = None
            self.keyframes_done += 1
            if res is not None:
                if len(self._out) == self._out.maxlen:
                    self.engine.stats.counters["output_dropped"] += 1
                self._out.append(KeyframePredictions(kf.time, res.predictions))
                self._out_event.set()

    async def end(self) -> None:
        """The stream ended: finish the last keyframes' clips (edge padding) and drain."""
        loop = asyncio.get_running_loop()
        clips = await loop.run_in_executor(self._worker, self.session.finish)
        for clip in clips:
            self._pending_clips.popleft().clip.set_result(clip)
        for kf in self._pending_clips:
            if not kf.clip.done():
                kf.clip.set_result(None)
        self._ended = True
        self._kf_event.set()
        if self._emitter is not None:
            await self._emitter
        self._out_event.set()

    async def results(self) -> AsyncIterator[list[Prediction]]:
        """Per-keyframe predictions until `end()` has drained the stream."""
        while True:
            while self._out:
                yield self._out.popleft()
            if self._ended and (self._emitter is None or self._emitter.done()):
                return
            self._out_event.clear()
            await self._out_event.wait()

    def drain(self) -> list[list[Prediction]]:
        """Whatever is buffered now, without waiting."""
        out = list(self._out)
        self._out.clear()
        return out

    def status(self) -> dict[str, object]:
        """The stream's stride and keyframe time, for the WebSocket status message."""
        return {**self.stride.status(), "keyframes_skipped": self.session.skipped}

    async def close(self) -> None:
        self.engine.live_sessions.discard(self)
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._emitter is not None:
            self._emitter.cancel()
            with contextlib.suppress(BaseException):
                await self._emitter
        self._worker.shutdown(wait=False)

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

Batching across streams: each batcher cuts batches from every stream's requests;
`service.feeds` turns a batch into the graph's inputs (clips of one size stacked with their
boxes as one (K, 5) tensor; the persons of several keyframes as K head rows).

Files (`Engine.annotate_file`, run by `service.file_run.FileRun`) use **center** clips (as in
training; predictions lag by half a clip) and, when the bundle has a bank, a **second pass**
over stored features: the head for keyframe ``t`` runs once the features of ``t + 30`` are in
the bank (or at end of stream) and reads ``[t - 30, t + 30]``, exactly the window training used.
Uploads wait when a batcher is full. Live streams (`LiveSession`) use **causal** clips ending at
the keyframe and the causal bank window ``[t - 60, t]``; when a batcher is full their oldest
keyframes are dropped (counted in `EngineStats`).

Memory per stream is bounded (see `service.stream.StreamSession.nbytes`): the ring buffer keeps
only frames nearest to some clip sample (uint8 at the short side, normalised only when a clip is
cut) plus the previous source frame for keyframe detection; at most ``max_inflight`` clips of an
upload wait for the backbone (live streams are capped by the batchers' per-stream pending
limit); the file second pass keeps the features of the seconds awaiting their future context;
the bank keeps ``retention`` seconds of person features. Figures per preset: docs/internals.md
("Per-stream memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from core.manifest import BundleError, load_manifest
from service.bank import BankWindow, FeatureBank, InProcessBank
from service.batching import Batcher, Dropped
from service.detector import PersonDetector, load_user_detector
from service.feeds import (
    BackboneItem,
    DetItem,
    Features,
    HeadItem,
    backbone_feeds,
    backbone_item,
    head_feeds,
    head_item,
    split_rows,
)
from service.file_run import FileRun
from service.limits import DecodeLimits
from service.records import Context, Prediction
from service.runtime import Runtime, RuntimeSettings, create_runtime
from service.scheduler import DEFAULT_MAX_GAP_S
from service.stream import Keyframe, KeyframeResult, StreamSession
from service.stride import StrideController
from service.threads import int8_speed_note, thread_policy
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
    idle_decode: uploads decode at idle CPU priority (Linux SCHED_IDLE); None = when the
        backbone's threads cover every core (`service.threads.ThreadPolicy.decode_idle`).
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
    idle_decode: bool | None = None


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
        self.idle_decode = (
            self.thread_policy.decode_idle if s.idle_decode is None else s.idle_decode
        )
        self.cpu_note = int8_speed_note(m)
        if self.cpu_note:
            log.warning("%s", self.cpu_note)
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
        self.det_batcher: Batcher[DetItem, Detections] = self._batcher(
            self._run_detector, "detector", s.detector_batch
        )
        self.bb_batcher: Batcher[BackboneItem, Features] = self._batcher(
            self._run_backbone, "backbone", self.backbone_batch_size()
        )
        self.head_batcher: Batcher[HeadItem, np.ndarray] = self._batcher(
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

    def _run_detector(self, items: list[DetItem]) -> list[Detections]:
        t0 = time.perf_counter()
        out = self.detector.detect_prepared([i.images for i in items], [i.transform for i in items])
        self.stats.observe("detect_run", time.perf_counter() - t0)
        return out

    def _run_backbone(self, items: list[BackboneItem]) -> list[Features]:
        t0 = time.perf_counter()
        results: list[Features | None] = [None] * len(items)
        for idxs, feed in backbone_feeds(items):
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
                results[i] = Features(p, glob[b], q)
        self.stats.observe("backbone_run", time.perf_counter() - t0)
        return [r for r in results if r is not None]

    def head_feeds(self, items: list[HeadItem]) -> list[dict[str, np.ndarray]]:
        """The head runs for ``items`` (`service.feeds.head_feeds` with this bundle's head).
        Public for bench_pipeline."""
        return head_feeds(
            items,
            shares_window=self.head_shares_window,
            with_bank="bank" in self.head.input_names,
            mask_dtype=self.mask_dtype,
        )

    def _run_head(self, items: list[HeadItem]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        runs = [self.head.run(feed)["action"] for feed in self.head_feeds(items)]
        probs = runs[0] if len(runs) == 1 else np.concatenate(runs)  # (K, C) probabilities
        self.stats.observe("head_run", time.perf_counter() - t0)
        return split_rows(probs, [it.person.shape[0] for it in items])

    # -- per keyframe ----------------------------------------------------------------------

    async def _detect_and_track(
        self, session: StreamSession, kf: Keyframe, prev: Keyframe | None, kind: Kind
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
        self, session: StreamSession, kf: Keyframe, prev: Keyframe | None, kind: Kind
    ) -> KeyframeResult | None:
        """Detection, tracking, clip and backbone for one keyframe."""
        persons = await self._detect_and_track(session, kf, prev, kind)
        clip = await kf.clip
        if persons is None or clip is None:
            return None
        self.stats.counters["keyframes"] += 1
        if len(persons) == 0:
            return KeyframeResult(kf.time, persons, kf.frame_hw, None)
        item = backbone_item(clip, persons.boxes, kf.frame_hw)
        t0 = time.perf_counter()
        try:
            feats = await self.bb_batcher.submit(item, kind=kind, stream_id=session.stream_id)
        except Dropped as e:
            self.stats.count_drop(e.reason)
            return None
        self.stats.observe("backbone", time.perf_counter() - t0)
        return KeyframeResult(kf.time, persons, kf.frame_hw, feats)

    async def _bank_write(
        self, stream_id: str, res: KeyframeResult, window: tuple[int, int]
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
        res: KeyframeResult,
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
        item = head_item(res.features, bank, mask)
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
        """Predictions for a video file, in time order (center clips, second bank pass;
        `service.file_run`).

        Raises `service.errors.VideoInputError` for a file the decoder refuses.
        ``keep_bank`` leaves the stream's bank entries in place (tests, benchmarks).
        """
        sid = stream_id or f"file-{uuid.uuid4().hex[:12]}"
        if stream_id is None and self.bank_enabled:
            self.bank.new_stream(sid)  # made up here: its bank windows need no shared store
        run = FileRun(
            self,
            path,
            video=video_id or Path(path).stem,
            stream_id=sid,
            progress=progress,
            keep_bank=keep_bank,
        )
        await run.open()
        assert run.decoder is not None
        self.last_info = run.decoder.info  # the decoded video's probe (CLI summary, benches)
        async for prediction in run.predictions():
            yield prediction

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
        self._prev: Keyframe | None = None
        self._pending_clips: deque[Keyframe] = deque()
        self._order: deque[Keyframe] = deque()
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
            kf = Keyframe.new(t, item, hw, loop, entered)
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

    async def _keyframe(self, kf: Keyframe, prev: Keyframe | None) -> None:
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

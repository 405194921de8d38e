"""One uploaded file through the engine (`Engine.annotate_file`): center clips and, when the
bundle has a bank, a second pass over the stored features.

Three parts, all on the engine's event loop except the decode hop:

* `FileRun._next_step` (the run's worker thread): decoded frames into the `StreamSession`
  until one makes a keyframe or a clip due.
* `FileRun._produce` (a task): keyframes get an in-flight slot and a task
  (`_keyframe`: detection, tracking, backbone, bank write); clips go to their keyframes.
* `FileRun.predictions` (the caller's iteration): results in keyframe order; keyframe ``t``
  gets the head (`_head`) once the features of ``t + hi`` are in the bank (``hi`` the file
  window's upper end) or the stream ended, so it reads exactly the window training used.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from typing import TYPE_CHECKING, Any

from service.feeds import DetItem
from service.records import Prediction
from service.ringbuffer import Clip
from service.stream import Keyframe, KeyframeResult, StreamSession
from service.threads import idle_priority

if TYPE_CHECKING:
    from service.decode import VideoDecoder
    from service.engine import Engine

__all__ = ["FileRun"]

# Decoded frames handed from the decode worker thread to the loop per hop.
FRAMES_PER_HOP = 16

_Step = tuple[float, int, list[tuple[float, DetItem]], list[Clip], float]


class FileRun:
    """One file's run: its session, decoder, in-flight keyframes and their order.

    Create it, ``await open()`` (starts the decoder; raises `service.errors.VideoInputError`
    for a file the decoder refuses), then iterate `predictions()` once. ``keep_bank`` leaves the
    stream's bank entries in place afterwards.
    """

    def __init__(
        self,
        engine: Engine,
        path: str | PathLike[str],
        *,
        video: str,
        stream_id: str,
        progress: Callable[[float], None] | None = None,
        keep_bank: bool = False,
    ) -> None:
        self.engine = engine
        self.path = path
        self.video = video
        self.sid = stream_id
        self.progress = progress
        self.keep_bank = keep_bank
        self.session = StreamSession(
            stream_id,
            engine.manifest,
            engine.detector,
            alignment="center",
            max_pts_gap_s=engine.settings.max_pts_gap_s,
        )
        self.slots = asyncio.Semaphore(max(engine.settings.max_inflight, self._inflight_floor()))
        self.loop = asyncio.get_running_loop()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{stream_id}")
        self.decoder: VideoDecoder | None = None
        self.order: asyncio.Queue[Keyframe | None] = asyncio.Queue()
        self.pending_clips: deque[Keyframe] = deque()
        self.tasks: set[asyncio.Task[Any]] = set()

    def _inflight_floor(self) -> int:
        # The producer waits for a slot at detect-due time; the oldest in-flight keyframe needs
        # frames up to after_s later, so fewer slots than that would stall the stream.
        g = self.session.ring.geometry
        return math.ceil(g.after_s * g.keyframe_rate) + 2

    async def open(self) -> None:
        """Start decoding (in the run's worker thread). Beside a backbone that holds every
        core, the worker thread and the decoder process run at idle CPU priority
        (service/threads.py, `ThreadPolicy.decode_idle`; `EngineSettings.idle_decode`)."""
        from service.decode import decode_frames

        s = self.engine.settings
        idle = self.engine.idle_decode

        def start() -> VideoDecoder:
            if idle:
                idle_priority()  # this run's own worker thread, for the rest of the run
            return decode_frames(self.path, s.decode_limits, isolated=s.isolated_decode, idle=idle)

        self.decoder = await self.loop.run_in_executor(self.worker, start)

    # -- decode thread ---------------------------------------------------------------------

    def _next_step(self) -> _Step | None:
        """Frames up to the first one that makes a keyframe or clip due (at most
        `FRAMES_PER_HOP`): one executor hop per few frames, not per frame, keeps the loop's
        wake-ups off the CPU the graphs need. Order is unchanged: only the last frame of a hop
        can carry detections or clips."""
        assert self.decoder is not None
        stats = self.engine.stats
        n = 0
        pts = 0.0
        while n < FRAMES_PER_HOP:
            t0 = time.perf_counter()
            try:
                frame = next(self.decoder)
            except StopIteration:
                break
            n += 1
            pts = frame.pts_seconds
            entered = self.loop.time()  # monotonic: safe to read from this worker thread
            dets, clips = self.session.step(pts, frame.image)
            stats.observe("decode", time.perf_counter() - t0)
            if dets or clips:
                return pts, n, dets, clips, entered
        return (pts, n, [], [], 0.0) if n else None

    # -- first pass: keyframes in flight ---------------------------------------------------

    def _start_keyframe(self, kf: Keyframe, prev: Keyframe | None) -> None:
        self.pending_clips.append(kf)
        task = self.loop.create_task(self._keyframe(kf, prev))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _give_clip(self, clip: Clip) -> None:
        self.pending_clips.popleft().clip.set_result(clip)

    async def _produce(self) -> None:
        prev: Keyframe | None = None
        frame_hw: tuple[int, int] | None = None
        try:
            while True:
                step = await self.loop.run_in_executor(self.worker, self._next_step)
                if step is None:
                    break
                pts, n_frames, dets, clips, entered = step
                self.engine.stats.counters["frames"] += n_frames
                if self.progress is not None:
                    self.progress(pts)
                frame_hw = self.session.ring.frame_hw
                ready = deque(clips)
                # Clips of keyframes already in flight first: they free in-flight slots
                # (waiting for a slot while holding them would stall the stream).
                while ready and self.pending_clips:
                    self._give_clip(ready.popleft())
                for t, item in dets:
                    await self.slots.acquire()
                    assert frame_hw is not None
                    kf = Keyframe.new(t, item, frame_hw, self.loop, entered)
                    self._start_keyframe(kf, prev)
                    await self.order.put(kf)
                    prev = kf
                while ready:  # a clip due in the same step as its own detection
                    self._give_clip(ready.popleft())
            for clip in await self.loop.run_in_executor(self.worker, self.session.finish):
                self._give_clip(clip)
        finally:
            for kf in self.pending_clips:
                if not kf.clip.done():
                    kf.clip.set_result(None)
            await self.order.put(None)

    async def _keyframe(self, kf: Keyframe, prev: Keyframe | None) -> None:
        eng = self.engine
        try:
            res = await eng._features(self.session, kf, prev, "upload")
            if res is not None and res.features is not None and eng.bank_enabled:
                # First pass: store this second; the window is read in the second pass.
                win = await eng._bank_write(self.sid, res, (0, 0))
                if win is not None and win.degraded:
                    res.context = "degraded"
            kf.result.set_result(res)
            eng.stats.observe("keyframe_file", self.loop.time() - kf.due_at)
        except BaseException as e:
            if not kf.result.done():
                kf.result.set_exception(e)
            if not kf.tracked.done():
                kf.tracked.set_result(None)
            raise
        finally:
            self.slots.release()

    # -- second pass: the head over the stored window --------------------------------------

    async def _head(self, res: KeyframeResult) -> list[Prediction]:
        eng = self.engine
        window = None
        if eng.bank_enabled and res.features is not None:
            t0 = time.perf_counter()
            window = await eng.bank.read_window(
                self.sid,
                int(round(res.time)),
                eng.file_window,
                eng.manifest.bank.persons_per_second,
            )
            eng.stats.observe("bank", time.perf_counter() - t0)
        return await eng._head(self.sid, self.video, res, window, "upload")

    async def predictions(self) -> AsyncIterator[Prediction]:
        """Predictions in time order; cleans up (tasks, decoder, bank entries) when done."""
        eng = self.engine
        producer = self.loop.create_task(self._produce())
        waiting: deque[KeyframeResult] = deque()
        written: list[float] = []
        hi = eng.file_window[1]
        try:
            while True:
                kf_or_none = await self.order.get()
                ended = kf_or_none is None
                if kf_or_none is not None:
                    res = await kf_or_none.result
                    if res is not None:
                        waiting.append(res)
                        written.append(res.time)
                # Second pass: keyframe s is final once the features of s + hi are in the bank
                # (the keyframes before it are, too: results are awaited in order).
                ready: list[KeyframeResult] = []
                while waiting and (
                    ended
                    or not eng.bank_enabled
                    or (written and written[-1] >= waiting[0].time + hi)
                ):
                    ready.append(waiting.popleft())
                if ready:
                    groups = await asyncio.gather(*(self._head(r) for r in ready))
                    for preds in groups:
                        for p in preds:
                            yield p
                if ended:
                    break
            await producer  # re-raises a decode error
        finally:
            await self._close(producer)

    async def _close(self, producer: asyncio.Task[None]) -> None:
        from service.decode import prestart

        eng = self.engine
        if not producer.done():
            producer.cancel()
        for t in list(self.tasks):
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(producer, *self.tasks, return_exceptions=True)
        if self.decoder is not None:
            self.decoder.close()
        if eng.settings.isolated_decode:
            # A warm decoder for the next upload, started once this one no longer needs CPU;
            # from the loop's default executor, not this run's worker, whose idle CPU class
            # (`open`) the new process would inherit, live streams' decoders included.
            self.loop.run_in_executor(None, prestart)
        self.worker.shutdown(wait=False)
        if not self.keep_bank and eng.bank_enabled:
            with contextlib.suppress(Exception):
                await eng.bank.drop_stream(self.sid)

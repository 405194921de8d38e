"""One stream's state between frames: the keyframes in flight and the synchronous
`StreamSession` (ring buffer, keyframe scheduler, tracker) that turns frames into keyframes
due for detection and clips ready for the backbone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.manifest import BundleManifest
from core.sampling import Alignment
from service.detector import PersonDetector
from service.feeds import DetItem, Features
from service.records import Context, Prediction
from service.ringbuffer import Clip, FrameRing
from service.scheduler import DEFAULT_MAX_GAP_S, KeyframeScheduler, check_pts
from service.tracker import ByteTracker
from service.types import TrackedPersons

__all__ = ["Keyframe", "KeyframeResult", "StreamSession"]


@dataclass
class Keyframe:
    time: float
    det_item: DetItem
    frame_hw: tuple[int, int]
    due_at: float  # loop time when it became detect-due
    clip: asyncio.Future[Clip | None]
    tracked: asyncio.Future[TrackedPersons | None]
    result: asyncio.Future[KeyframeResult | None]

    @classmethod
    def new(
        cls,
        time: float,
        det_item: DetItem,
        frame_hw: tuple[int, int],
        loop: asyncio.AbstractEventLoop,
        due_at: float | None = None,
    ) -> Keyframe:
        """Detect-due at ``due_at`` (loop time; default now): the moment the frame that made
        it due entered the engine, so its preparation (resize, detector letterbox, clip
        assembly) counts as the keyframe's processing. Clip, tracking, result still to come."""
        return cls(
            time, det_item, frame_hw, loop.time() if due_at is None else due_at,
            loop.create_future(), loop.create_future(), loop.create_future(),
        )  # fmt: skip


@dataclass
class KeyframeResult:
    """A keyframe after the backbone (and, live, after the head)."""

    time: float
    persons: TrackedPersons
    frame_hw: tuple[int, int]
    features: Features | None
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

    def step(self, pts: float, image: np.ndarray) -> tuple[list[tuple[float, DetItem]], list[Clip]]:
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
            dets.append((t, DetItem(images, transform, self.segment)))
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

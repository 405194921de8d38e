"""Per-stream ring buffer: frames resized once, stamped with presentation time, cut into clips.

Data flow for one stream::

    decoded frame (h, w, 3) uint8 RGB, pts seconds
        -> update(): kept only if it can be the nearest frame to some clip sample time
           -> resized ONCE so the short side is ``short_side`` (core.preprocess)
              -> stored as (H', W', 3) uint8 with its pts
        -> clip(t): core.sampling picks the frames (the same function training uses)
           -> core.preprocess.preprocess_clip + pack_pathways (the same functions training
              uses) -> fast (3, T_f, H', W') and slow (3, T_f // alpha, H', W') float32

**Train/serve skew.** Training (core/clips.py, its frame cache) and this buffer call the
same torch-free functions in ``core.preprocess`` on the same decoded frames: the resize to
the short side (uint8 out) and the normalisation. So the served tensors are bit-identical to
training's (tests/service/test_ringbuffer.py compares them). The resize is per frame here and
per clip in training; it is elementwise, so both give the same bytes. The sampling rule is
shared code too (`core.sampling`).

**Which frames are kept.** Keyframes are at ``n / keyframe_rate`` and a clip's samples at
fixed offsets from its keyframe, so the set of all sample times is known in advance. A frame
can only ever be picked if a sample time falls inside its "nearest" cell (half-way to its
neighbours), which is known once the next frame arrives. Frames no sample can pick are never
resized or stored: for 30 fps video and the AVA presets (every 2nd frame at 30 fps) that is
half of them. Picking the nearest frame among the kept frames gives the same frame as among
all frames, since the true nearest frame is always kept.

**Padding.** A sample time before the first frame takes the first frame and one after the last
frame takes the last frame (edge frames repeat), exactly as `core.sampling` and training do.
At a stream's end call `finish()` so the last frame is kept.

**Memory.** `release_before(time)` drops frames no pending clip can use (the engine calls it
with the first sample time of the oldest keyframe whose clip is not assembled yet). What stays
is at most the frames nearest to the sample times of the keyframes in flight; ``max_frames``
is a hard cap on top (a safety net; evictions are counted). Bytes per stored frame:
``H' * W' * 3`` (128 x 171: 66 KB, 256 x 341: 262 KB); frames are normalised to float32 only
when a clip is cut (4x the bytes, for the clip's lifetime only).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.manifest import Preprocessing
from core.preprocess import pack_pathways, preprocess_clip, resize_short_side
from core.sampling import Alignment, ClipSpec, nearest_frame_indices

__all__ = ["Clip", "ClipGeometry", "FrameRing"]

Float32 = npt.NDArray[np.float32]
Uint8 = npt.NDArray[np.uint8]
# Cell edges are widened by this much (1 us, as core.sampling's tie tolerance): a frame
# whose cell touches a sample time is kept, so float noise can only keep an extra frame.
_EPS = 1e-6


@dataclass(frozen=True)
class ClipGeometry:
    """Where a clip's samples sit relative to its keyframe, in seconds (from the manifest):
    the bundle's `core.sampling.ClipSpec` with the stream's alignment, and the keyframe rate."""

    clip: ClipSpec
    alpha: int
    keyframe_rate: float
    offsets_s: npt.NDArray[np.float64]  # (T_f,), clip.offsets_s()

    @classmethod
    def from_manifest(
        cls, prep: Preprocessing, alignment: Alignment, keyframe_rate: float = 1.0
    ) -> ClipGeometry:
        clip = prep.clip(alignment)
        return cls(clip, prep.alpha, float(keyframe_rate), clip.offsets_s())

    @property
    def num_frames(self) -> int:
        return self.clip.num_frames

    @property
    def alignment(self) -> Alignment:
        return self.clip.alignment

    @property
    def before_s(self) -> float:
        """How far the first sample is before the keyframe."""
        return float(-self.offsets_s[0])

    @property
    def after_s(self) -> float:
        """How far the last sample is after the keyframe (0 for causal clips)."""
        return float(self.offsets_s[-1])

    def times(self, keyframe_time: float) -> npt.NDArray[np.float64]:
        # Same arithmetic as core.sampling.clip_times (keyframe + offsets / fps).
        return float(keyframe_time) + self.offsets_s

    def any_sample_in(self, lo: float, hi: float) -> bool:
        """Is some sample time ``n / keyframe_rate + offset`` (n integer) inside [lo, hi]?"""
        kr = self.keyframe_rate
        a = (lo - _EPS - self.offsets_s) * kr
        b = (hi + _EPS - self.offsets_s) * kr
        return bool(np.any(np.ceil(a) <= np.floor(b)))


@dataclass(frozen=True)
class Clip:
    """The backbone's input for one keyframe.

    fast: (3, T_f, H', W') float32; slow: (3, T_f // alpha, H', W') float32, normalised.
    frame_pts: (T_f,) presentation time of each fast frame (for tests and debugging).
    """

    keyframe_time: float
    fast: Float32
    slow: Float32
    frame_pts: npt.NDArray[np.float64]

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.fast.shape[2]), int(self.fast.shape[3])


class FrameRing:
    """Bounded store of one stream's preprocessed frames; `clip()` assembles a keyframe's clip.

    Knobs:
      max_frames: hard cap on stored frames (oldest evicted first, counted in ``evicted``).
        It only matters if the caller stops calling `release_before` (a bug or a stalled
        pipeline); the default fits the frames ~3 clip spans of keyframes need.
    """

    def __init__(
        self,
        prep: Preprocessing,
        *,
        alignment: Alignment,
        keyframe_rate: float = 1.0,
        max_frames: int | None = None,
    ) -> None:
        if prep.crop is not None:
            raise ValueError(
                f"preprocessing.crop={prep.crop}: the service runs the model on full frames "
                "(people at the edges keep their boxes); export the bundle with crop null"
            )
        self.prep = prep
        self.geometry = ClipGeometry.from_manifest(prep, alignment, keyframe_rate)
        span = self.geometry.before_s + self.geometry.after_s
        # Distinct sample times in a window of three clip spans plus two keyframe periods;
        # each can pin at most two frames (a halfway tie keeps both neighbours).
        windows = math.ceil((3 * span + 2 / keyframe_rate) * keyframe_rate) + 1
        self.max_frames = max_frames or 2 * windows * prep.num_frames
        self._pts: deque[float] = deque()
        self._frames: deque[Uint8] = deque()  # (H', W', 3) at the short side
        self._pending: tuple[float, npt.NDArray[np.uint8]] | None = None
        self._pending_lo = -math.inf  # lower edge of the pending frame's nearest cell
        self._last_kept: float | None = None
        self.latest_pts: float | None = None
        self.first_pts: float | None = None
        self.frame_hw: tuple[int, int] | None = None  # source (h, w)
        self.size_hw: tuple[int, int] | None = None  # stored (H', W')
        self.finished = False
        self.seen = 0
        self.kept = 0
        self.evicted = 0

    # -- input ---------------------------------------------------------------------------

    def update(self, pts: float, image: npt.NDArray[np.uint8]) -> None:
        """Add the next frame (presentation order, strictly increasing pts)."""
        if self.finished:
            raise RuntimeError("FrameRing.update after finish(); call reset() for a new stream")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame must be (h, w, 3) uint8 RGB, got {image.shape} {image.dtype}")
        pts = float(pts)
        if self.latest_pts is not None and pts <= self.latest_pts:
            raise ValueError(f"frame pts must increase: {pts} after {self.latest_pts}")
        hw = (int(image.shape[0]), int(image.shape[1]))
        if self.frame_hw is None:
            self.frame_hw, self.first_pts = hw, pts
        elif hw != self.frame_hw:
            raise ValueError(f"frame size changed from {self.frame_hw} to {hw} mid-stream")
        self.seen += 1
        if self._pending is not None:
            prev_pts, prev_image = self._pending
            hi = 0.5 * (prev_pts + pts)
            if self.geometry.any_sample_in(self._pending_lo, hi):
                self._store(prev_pts, prev_image)
            self._pending_lo = hi
        self._pending = (pts, image)
        self.latest_pts = pts

    def finish(self) -> None:
        """End of stream: the last frame's cell reaches +inf (it pads every later sample)."""
        self._materialise_pending()
        self.finished = True

    def reset(self) -> None:
        """Forget everything (a new stream on the same session)."""
        self.__init__(  # type: ignore[misc]
            self.prep,
            alignment=self.geometry.alignment,
            keyframe_rate=self.geometry.keyframe_rate,
            max_frames=self.max_frames,
        )

    def release_before(self, time: float) -> None:
        """Drop frames that cannot be the nearest frame to any sample time >= ``time``."""
        # Frame j cannot be nearest to a time >= pts[j + 1]: once the next kept frame is at or
        # before ``time``, frame j can go (training's _ClipAssembler uses the same rule).
        while len(self._pts) >= 2 and self._pts[1] <= time:
            self._pts.popleft()
            self._frames.popleft()

    # -- output --------------------------------------------------------------------------

    def ready(self, keyframe_time: float) -> bool:
        """All frames the clip can use have arrived (a frame at/after its last sample, or EOF)."""
        if self.latest_pts is None:
            return False
        return self.finished or self.latest_pts >= float(self.geometry.times(keyframe_time)[-1])

    def clip(self, keyframe_time: float) -> Clip:
        """The clip around ``keyframe_time`` (call once `ready` says so)."""
        targets = self.geometry.times(keyframe_time)
        if not self.finished and self._pending is not None and self._pending[0] <= targets[-1]:
            # The newest frame may be a sample's nearest: keep it without waiting for its
            # successor (possibly one extra resize; never a wrong frame).
            self._materialise_pending()
        if not self._pts:
            raise RuntimeError("FrameRing.clip: no frames stored")
        times = np.fromiter(self._pts, dtype=np.float64, count=len(self._pts))
        idx = nearest_frame_indices(targets, times)
        frames = list(self._frames)
        stacked = np.stack([frames[i] for i in idx])  # (T_f, H', W', 3) uint8
        p = self.prep
        # Frames are at the short side already, so this only normalises and lays out; it is
        # still training's function, called as training calls it.
        x = preprocess_clip(
            stacked, short_side=p.short_side, mean=p.mean, std=p.std, pixel_scale=p.pixel_scale
        )  # (3, T_f, H', W')
        slow, fast = pack_pathways(x, self.geometry.alpha)
        return Clip(float(keyframe_time), fast, slow, times[idx])

    @property
    def num_frames(self) -> int:
        return len(self._pts)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._frames) + (
            self._pending[1].nbytes if self._pending is not None else 0
        )

    # -- internals -----------------------------------------------------------------------

    def _materialise_pending(self) -> None:
        if self._pending is None:
            return
        pts, image = self._pending
        if self._last_kept is None or pts > self._last_kept:
            self._store(pts, image)

    def _store(self, pts: float, image: npt.NDArray[np.uint8]) -> None:
        if self._last_kept is not None and pts <= self._last_kept:
            return
        frame = resize_short_side(image, self.prep.short_side)  # (H', W', 3) uint8, a copy
        self.size_hw = (int(frame.shape[0]), int(frame.shape[1]))
        self._pts.append(pts)
        self._frames.append(frame)
        self._last_kept = pts
        self.kept += 1
        while len(self._pts) > self.max_frames:
            self._pts.popleft()
            self._frames.popleft()
            self.evicted += 1

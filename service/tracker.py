"""ByteTrack-style person tracker tuned for one keyframe per second.

Per update (one keyframe)::

    detections --split by score--> high (>= track_thresh), low ([low_thresh, track_thresh))
    all tracks --Kalman predict(dt)--> predicted boxes + centre covariance
    1st association: high x (tracked + lost)          centre within the Kalman gate
    2nd association: low  x (still-unmatched tracks that were tracked last update)
                                                      gate and IoU >= low_min_iou
    unmatched high with score >= new_track_thresh -> new track (fresh id)
    unmatched tracks -> lost; lost for more than max_lost updates -> removed

The two tiers are ByteTrack's idea (Zhang et al., ECCV 2022): low-score boxes are mostly
occluded people, so they may only *continue* a track, never start one. Assignment is Hungarian
(``scipy.optimize.linear_sum_assignment``).

Why not ByteTrack's IoU cost and gate: at 1 Hz a walking person moves about 0.8 box heights
between updates while a standing box is about 0.4 heights wide, so on a track's first step (no
velocity yet) the predicted and detected boxes usually do not overlap and IoU is 0, so an
IoU-gated tracker starts a new id every second for walkers. The cost here is

    cost = (1 - IoU) + d2 / gate_chi2,      pairs with d2 >= gate_chi2 are not allowed,

where d2 is the squared Mahalanobis distance of the detection's centre from the track's
predicted centre under the Kalman covariance (DeepSORT's gate, Wojke et al. 2017). The gate
widens by itself where it should: a new track (unknown velocity) or a lost one (covariance grew
while unobserved) accepts a long step, a steady track only a small deviation from its predicted
path. IoU still breaks ties between close candidates. tests/service/test_tracker.py
(``test_random_crowd_idf1``) holds the cost to its measured IDF1 on a random crowd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from core.boxes import iou_matrix
from service.types import Detections, TrackedPersons

_GATED = 1e6  # cost for pairs outside the gate; far above any allowed cost (< 2)


def _xyxy_to_cxcywh(box: np.ndarray) -> np.ndarray:
    return np.array(
        [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]],
        dtype=np.float64,
    )


@dataclass
class _KalmanBox:
    """Constant-velocity Kalman filter on (cx, cy, w, h, vcx, vcy, vw, vh), pixels and px/s.

    Noise standard deviations are fractions of the box height, so one setting fits near and far
    people (ByteTrack does the same); velocities are per second, not per frame.
    """

    x: np.ndarray  # (8,) state
    p: np.ndarray  # (8, 8) covariance
    meas_std: float
    pos_std: float
    vel_std: float

    @classmethod
    def start(
        cls,
        box: np.ndarray,
        *,
        meas_std: float,
        pos_std: float,
        vel_std: float,
        init_vel_std: float,
    ) -> _KalmanBox:
        z = _xyxy_to_cxcywh(box)
        h = max(z[3], 1.0)
        x = np.concatenate([z, np.zeros(4)])
        std = np.array([2 * meas_std * h] * 4 + [init_vel_std * h] * 4)
        return cls(x, np.diag(std**2), meas_std, pos_std, vel_std)

    def predict(self, dt: float, *, freeze_size: bool) -> None:
        if freeze_size:
            # A lost track has no fresh evidence about scale; extrapolating size change
            # for seconds makes boxes collapse or balloon (ByteTrack zeroes vh likewise).
            self.x[6:] = 0.0
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt
        h = max(self.x[3], 1.0)
        # White-noise model: variance grows linearly with the gap, so a missed keyframe
        # (dt = 2 s) widens the uncertainty instead of pretending nothing happened.
        q = np.diag([(self.pos_std * h) ** 2] * 4 + [(self.vel_std * h) ** 2] * 4) * dt
        self.x = f @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)
        self.p = f @ self.p @ f.T + q

    def update(self, box: np.ndarray) -> None:
        z = _xyxy_to_cxcywh(box)
        h = max(z[3], 1.0)
        r = np.eye(4) * (self.meas_std * h) ** 2
        hp = self.p[:4]  # H @ P with H = [I4 0]
        s = hp[:, :4] + r
        k = np.linalg.solve(s, hp).T  # (8, 4) = P H^T S^-1 (S symmetric)
        self.x = self.x + k @ (z - self.x[:4])
        self.p = self.p - k @ hp
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)

    def centre_distance2(self, centres: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of (D, 2) detection centres from the predicted centre."""
        r = np.eye(2) * (self.meas_std * max(self.x[3], 1.0)) ** 2
        s = self.p[:2, :2] + r  # (2, 2) innovation covariance of the centre
        diff = centres - self.x[:2]  # (D, 2)
        return np.einsum("ni,ij,nj->n", diff, np.linalg.inv(s), diff)

    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclass
class _Track:
    track_id: int
    kf: _KalmanBox
    lost_updates: int = 0  # consecutive updates without a match; 0 = tracked


@dataclass
class ByteTracker:
    """Stable person ids across keyframes (one update per keyframe, ~1 Hz).

    Knobs (defaults chosen for 1 Hz keyframes; each trades one error for another):

    track_thresh: detections at or above it are "high" and associate first with every live
        track. Higher -> fewer false tracks from clutter, but occluded people drop to the low
        tier and can only continue tracks. The pipeline may set it to the bundle's detector
        threshold (0.8) and pass boxes down to low_thresh: then only boxes the model was
        evaluated on start tracks, and low-score continuations are flagged by their score.
    low_thresh: detections below it are ignored entirely. Lower -> occluded people keep their
        track longer; too low -> background blobs keep dead tracks alive.
    new_track_thresh: an unmatched high detection must reach it to start a track. Above
        track_thresh (as in ByteTrack) so a flickering borderline box does not spawn ids.
    gate_chi2: Mahalanobis gate on the centre (chi-square, 2 dof; 9.21 = 99%). It scales
        with the Kalman uncertainty, so it is the knob for "how far may a person move in one
        keyframe". Larger -> fewer id breaks for sudden turns or long occlusions, more wrong
        joins between neighbours.
    low_min_iou: low-score boxes must also overlap the prediction this much (they are less
        reliable, so a far-away low box never continues a track).
    max_lost: updates (= seconds at 1 Hz) a lost track is kept for re-association. Longer ->
        survives longer occlusions, but a lost track may capture a different person who
        appears nearby.
    meas_std / pos_std / vel_std / init_vel_std: Kalman noise as fractions of box height
        (per second for process terms). vel_std is much larger than ByteTrack's per-frame
        value because people accelerate, stop and turn within one second; larger -> follows
        manoeuvres and widens the gate, smaller -> smoother extrapolation through occlusions.
        init_vel_std is the prior on a new person's speed (0.8 h/s covers walking).
    """

    track_thresh: float = 0.5
    low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    gate_chi2: float = 9.21
    low_min_iou: float = 0.1
    max_lost: int = 3
    meas_std: float = 0.05
    pos_std: float = 0.05
    vel_std: float = 0.3
    init_vel_std: float = 0.8
    _tracks: list[_Track] = field(default_factory=list, init=False, repr=False)
    _next_id: int = field(default=1, init=False, repr=False)
    _last_time: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.low_thresh <= self.track_thresh <= self.new_track_thresh <= 1:
            raise ValueError(
                "ByteTracker: need 0 <= low_thresh <= track_thresh <= new_track_thresh <= 1, "
                f"got {self.low_thresh}, {self.track_thresh}, {self.new_track_thresh}"
            )
        if self.max_lost < 0:
            raise ValueError(f"ByteTracker.max_lost must be >= 0, got {self.max_lost}")
        if self.gate_chi2 <= 0:
            raise ValueError(f"ByteTracker.gate_chi2 must be > 0, got {self.gate_chi2}")

    def reset(self) -> None:
        """Forget every track. Ids keep increasing: an id is never reused by this tracker."""
        self._tracks = []
        self._last_time = None

    @property
    def num_tracks(self) -> int:
        """Tracks held (tracked + lost)."""
        return len(self._tracks)

    def update(self, detections: Detections, time_s: float) -> TrackedPersons:
        """Associate this keyframe's detections; returns the persons with ids.

        Every high detection that matches or starts a track is returned, and every low
        detection that continues a track. time_s must increase between calls (the gap sets
        the Kalman prediction step, so dropped keyframes are handled).
        """
        if self._last_time is not None:
            dt = time_s - self._last_time
            if dt <= 0:
                raise ValueError(
                    f"ByteTracker.update: time_s must increase, got {time_s} after "
                    f"{self._last_time}; call reset() when a stream restarts"
                )
            for tr in self._tracks:
                tr.kf.predict(dt, freeze_size=tr.lost_updates > 0)
        self._last_time = time_s

        scores = detections.scores
        high = np.flatnonzero(scores >= self.track_thresh)
        low = np.flatnonzero((scores >= self.low_thresh) & (scores < self.track_thresh))
        boxes = detections.boxes.astype(np.float64)

        out_ids: list[int] = []
        out_det: list[int] = []

        # 1st tier: high detections against all tracks (lost ones too: re-identification
        # after a short occlusion happens here).
        pool = list(range(len(self._tracks)))
        matches, rest_tracks, rest_high = self._associate(pool, high, boxes, min_iou=0.0)
        # 2nd tier: low detections continue only tracks that were tracked last update.
        tracked_rest = [i for i in rest_tracks if self._tracks[i].lost_updates == 0]
        low_matches, _, _ = self._associate(tracked_rest, low, boxes, min_iou=self.low_min_iou)
        unmatched_tracks = set(rest_tracks) - {ti for ti, _ in low_matches}

        for ti, di in matches + low_matches:
            tr = self._tracks[ti]
            tr.kf.update(boxes[di])
            tr.lost_updates = 0
            out_ids.append(tr.track_id)
            out_det.append(di)

        kept: list[_Track] = []
        for i, tr in enumerate(self._tracks):
            if i in unmatched_tracks:
                tr.lost_updates += 1
                if tr.lost_updates > self.max_lost:
                    continue
            kept.append(tr)
        self._tracks = kept

        for di in rest_high:
            if scores[di] < self.new_track_thresh:
                continue
            kf = _KalmanBox.start(
                boxes[di],
                meas_std=self.meas_std,
                pos_std=self.pos_std,
                vel_std=self.vel_std,
                init_vel_std=self.init_vel_std,
            )
            self._tracks.append(_Track(self._next_id, kf))
            out_ids.append(self._next_id)
            out_det.append(int(di))
            self._next_id += 1

        order = np.argsort(np.asarray(out_det, dtype=np.int64), kind="stable")
        det_index = np.asarray(out_det, dtype=np.int64)[order]
        return TrackedPersons(
            track_ids=np.asarray(out_ids, dtype=np.int64)[order],
            boxes=detections.boxes[det_index],
            scores=detections.scores[det_index],
            det_index=det_index,
        )

    def _associate(
        self, track_idx: list[int], det_idx: np.ndarray, boxes: np.ndarray, *, min_iou: float
    ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Hungarian matching on (1 - IoU) + d2 / gate_chi2, gated by d2 and min_iou.

        Returns (matches as (track index, detection index), unmatched tracks, unmatched dets).
        """
        if not track_idx or len(det_idx) == 0:
            return [], list(track_idx), [int(d) for d in det_idx]
        dets = boxes[det_idx]  # (D, 4)
        pred = np.stack([self._tracks[i].kf.box() for i in track_idx])  # (T, 4)
        iou = iou_matrix(pred, dets)  # (T, D)
        centres = (dets[:, :2] + dets[:, 2:]) / 2  # (D, 2)
        d2 = np.stack([self._tracks[i].kf.centre_distance2(centres) for i in track_idx])  # (T, D)
        allowed = (d2 < self.gate_chi2) & (iou >= min_iou)
        cost = np.where(allowed, 1.0 - iou + d2 / self.gate_chi2, _GATED)
        rows, cols = linear_sum_assignment(cost)
        matches = [
            (track_idx[r], int(det_idx[c])) for r, c in zip(rows, cols, strict=True)
            if cost[r, c] < _GATED
        ]  # fmt: skip
        matched_t = {t for t, _ in matches}
        matched_d = {d for _, d in matches}
        return (
            matches,
            [t for t in track_idx if t not in matched_t],
            [int(d) for d in det_idx if int(d) not in matched_d],
        )

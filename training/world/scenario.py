"""Who does what when: the seeded script of one world video, and its keyframe labels.

A `VideoScript` is pure data drawn from one ``numpy.random.Generator``: people (with an
`Appearance`), each a list of activity `Segment`s with feet positions, plus the camera
shake. Rendering (`render.py`) and annotation (`annotate`) both read the script, so the
pixels and the labels cannot disagree.

Timing conventions (why they look the way they do):

* Segment boundaries sit on half seconds (``k + 0.5``), so each keyframe (an integer
  second) falls in the middle of exactly one segment and gets that segment's labels.
  The only exceptions are the 0.4 s dashes in and out around an evidence event, which
  contain no keyframe on purpose.
* Keyframes are annotated from second 2 to second ``seconds - 2``: a 2.1 s clip centred
  on them then lies inside the video, so no clip needs edge padding.
* A person is annotated at a keyframe only if at least `MIN_VISIBLE` of their box is
  visible: inside the frame and not covered by the boxes of people nearer the camera.

Long-term stories (see `classes.LONG_TERM`): a person dashes in at the frame edge,
performs the evidence event (2 s, its own AVA class), dashes out, stays away ~10 s, comes
back 10+ s after the evidence and behaves like anyone else, and is gone for good before
30 s have passed. So for every annotated keyframe of that person, the evidence is within
a +-30 s window exactly when the long-term label is on, except the two event keyframes
themselves (where the clip shows the event).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from training.world import classes as C
from training.world.figures import (
    EVENT_VANISH,
    RUN_SPEED,
    WALK_SPEED,
    Appearance,
    Pose,
    figure_box,
    place,
    pose_at,
    skeleton,
)

MIN_VISIBLE = 0.4
FIRST_KEYFRAME = 2  # and the last is seconds - 2 (see the module docstring)


@dataclass(frozen=True)
class Stage:
    """Frame size, frame rate and the perspective of the floor."""

    width: int
    height: int
    fps: int

    @property
    def horizon(self) -> float:
        return 0.45 * self.height

    @property
    def y_far(self) -> float:
        return 0.58 * self.height

    @property
    def y_near(self) -> float:
        return 0.96 * self.height

    def body_height(self, feet_y: float, scale: float) -> float:
        """Pixel height of a standing person whose feet are at ``feet_y`` (perspective)."""
        u = (feet_y - self.y_far) / (self.y_near - self.y_far)
        return scale * self.height * (0.27 + 0.29 * u)

    def x_bounds(self, h: float) -> tuple[float, float]:
        """Feet x range that keeps an upright figure inside the frame."""
        return 0.3 * h + 3, self.width - 0.3 * h - 3

    def offscreen_x(self, side: int, h: float) -> float:
        """Feet x at which a figure is fully outside the left (-1) or right (+1) edge."""
        return -0.65 * h if side < 0 else self.width + 0.65 * h


@dataclass(frozen=True)
class Segment:
    """One activity from ``t0`` to ``t1`` (seconds); feet move linearly (x0,y0)->(x1,y1)."""

    t0: float
    t1: float
    activity: str
    x0: float
    y0: float
    x1: float
    y1: float
    facing: int  # +1 faces right, -1 faces left
    phase: float  # desynchronises periodic motion between people


@dataclass(frozen=True)
class FigureState:
    """A person at one instant, in world pixels (before camera shake)."""

    person_id: int
    points: npt.NDArray[np.float64]  # (NUM_JOINTS, 2) pixels
    pose: Pose
    body_height: float
    facing: int
    feet_y: float
    box: tuple[float, float, float, float]  # pixels xyxy, unclipped
    segment: Segment


@dataclass
class PersonScript:
    person_id: int
    look: Appearance
    segments: list[Segment] = field(default_factory=list)

    def segment_at(self, t: float) -> Segment | None:
        for seg in self.segments:
            if seg.t0 <= t < seg.t1:
                return seg
        return None

    def state_at(self, t: float, stage: Stage) -> FigureState | None:
        seg = self.segment_at(t)
        if seg is None:
            return None
        u = (t - seg.t0) / (seg.t1 - seg.t0)
        x = seg.x0 + (seg.x1 - seg.x0) * u
        y = seg.y0 + (seg.y1 - seg.y0) * u
        h = stage.body_height(y, self.look.scale)
        pose = pose_at(seg.activity, t - seg.t0, seg.t1 - seg.t0, seg.phase)
        points = place(skeleton(pose), x, y, h, seg.facing)
        return FigureState(
            self.person_id, points, pose, h, seg.facing, y, figure_box(points, h), seg
        )


@dataclass(frozen=True)
class Evidence:
    """A long-term story: ``person_id`` performed ``event_id`` and the prop vanished at
    ``time``; the label ``state_id`` is on at keyframes t with 10 <= t - time <= 30."""

    person_id: int
    state_id: int
    event_id: int
    start: float  # the event segment's start
    time: float  # evidence time: the moment the prop disappears


@dataclass
class VideoScript:
    video_id: str
    seed: int
    seconds: int
    stage: Stage
    persons: list[PersonScript]
    evidence: list[Evidence]
    camera: npt.NDArray[np.int64]  # (frames, 2) integer image shift (dx, dy) per frame

    @property
    def num_frames(self) -> int:
        return self.seconds * self.stage.fps

    def states_at(self, t: float) -> list[FigureState]:
        """Everyone present at ``t``, far to near (drawing order: nearer people occlude)."""
        states = [s for p in self.persons if (s := p.state_at(t, self.stage)) is not None]
        states.sort(key=lambda s: (s.feet_y, s.person_id))
        return states


# -- appearance ------------------------------------------------------------------------------

# Shirt colours chosen to be told apart at a glance (and at 8x8 feature-map cells), and
# unlike the props' yellow, magenta and cyan: the link from a person to their past features
# in the bank rests mostly on the shirt.
_SHIRTS = (
    (215, 35, 35), (240, 130, 25), (130, 215, 40), (25, 120, 50), (0, 150, 140),
    (70, 160, 240), (30, 45, 145), (120, 55, 190), (240, 125, 170), (125, 75, 35),
    (235, 235, 230), (35, 35, 38), (135, 135, 140), (115, 20, 45),
)  # fmt: skip
_PANTS = ((40, 45, 70), (25, 25, 30), (85, 70, 50), (60, 60, 65), (30, 50, 40), (95, 95, 110))
_SKIN = ((241, 200, 170), (224, 172, 135), (198, 140, 100), (160, 105, 70), (110, 70, 45))
_HAIR = ((30, 22, 18), (70, 45, 25), (120, 85, 40), (200, 170, 110), (90, 90, 90))


class _Wardrobe:
    """Hands out appearances; shirt colours repeat only after the whole palette is used."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.order = [int(k) for k in rng.permutation(len(_SHIRTS))]
        self.used = 0

    def next(self) -> Appearance:
        rng = self.rng
        base = np.array(_SHIRTS[self.order[self.used % len(_SHIRTS)]], dtype=np.float64)
        self.used += 1
        shirt = np.clip(base + rng.uniform(-12, 12, size=3), 0, 255).astype(int)
        return Appearance(
            shirt=(int(shirt[0]), int(shirt[1]), int(shirt[2])),
            pants=_PANTS[int(rng.integers(len(_PANTS)))],
            skin=_SKIN[int(rng.integers(len(_SKIN)))],
            hair=_HAIR[int(rng.integers(len(_HAIR)))],
            scale=float(rng.uniform(0.9, 1.1)),
        )


# -- building one person's timeline ---------------------------------------------------------


class _Builder:
    """Appends segments to one person's timeline, tracking where the feet are."""

    def __init__(
        self,
        stage: Stage,
        rng: np.random.Generator,
        person: PersonScript,
        t: float,
        x: float,
        y: float,
        facing: int,
    ) -> None:
        self.stage, self.rng, self.person = stage, rng, person
        self.t, self.x, self.y, self.facing = t, x, y, facing

    @property
    def h(self) -> float:
        return self.stage.body_height(self.y, self.person.look.scale)

    def add(
        self,
        activity: str,
        duration: float,
        x1: float | None = None,
        y1: float | None = None,
        facing: int | None = None,
    ) -> None:
        x1 = self.x if x1 is None else x1
        y1 = self.y if y1 is None else y1
        facing = self.facing if facing is None else facing
        seg = Segment(
            self.t,
            self.t + duration,
            activity,
            self.x,
            self.y,
            x1,
            y1,
            facing,
            float(self.rng.uniform(0, 1)),
        )
        self.person.segments.append(seg)
        self.t, self.x, self.y, self.facing = seg.t1, x1, y1, facing

    def walk_to(self, x1: float, y1: float | None = None, speed: float = WALK_SPEED) -> None:
        dist = abs(x1 - self.x)
        duration = max(1, math.ceil(dist / (speed * self.h) - 0.25))
        self.add("walk" if speed <= WALK_SPEED else "run", duration, x1, y1, _sign(x1 - self.x))

    def exit(self) -> None:
        """Walk out through the nearer side edge."""
        side = -1 if self.x < self.stage.width / 2 else 1
        self.walk_to(self.stage.offscreen_x(side, self.h))

    def wander(self, until: float, allow_fall: bool = True) -> None:
        """Solo activities until about ``until``: stand, walk, run, jump, bend, fall."""
        rng, stage = self.rng, self.stage
        fell = not allow_fall
        while self.t < until - 1.0:
            lo, hi = stage.x_bounds(self.h)
            weights = {"stand": 3.0, "walk": 3.6, "run": 1.4, "jump": 1.0, "bend": 0.9}
            if not fell:
                weights["fall"] = 1.8
            names = sorted(weights)
            p = np.array([weights[n] for n in names])
            choice = names[int(rng.choice(len(names), p=p / p.sum()))]
            if choice == "stand":
                if rng.uniform() < 0.3:
                    self.facing = -self.facing
                self.add("stand", int(rng.integers(2, 6)))
            elif choice == "walk":
                target = float(rng.uniform(lo, hi))
                if abs(target - self.x) < 0.6 * self.h:
                    continue
                y1 = float(np.clip(self.y + rng.normal(0, 0.04 * stage.height), *self._y_range()))
                self.walk_to(target, y1)
            elif choice == "run":
                side = 1 if hi - self.x > self.x - lo else -1
                room = (hi - self.x) if side > 0 else (self.x - lo)
                duration = min(int(rng.integers(1, 3)), int(room // (RUN_SPEED * self.h)))
                if duration < 1:
                    continue
                self.add("run", duration, self.x + side * duration * RUN_SPEED * self.h, None, side)
            elif choice == "jump":
                self.add("jump", int(rng.integers(2, 4)))
            elif choice == "bend":
                self.add("bend", int(rng.integers(2, 4)))
            else:
                # Falls backwards: the body lies between x and x - facing * h; keep it in frame.
                if not lo < self.x - self.facing * self.h < hi:
                    self.facing = -self.facing
                self.add("fall", 1)
                self.add("lie", int(rng.integers(2, 4)))
                self.add("getup", 1)
                self.add("stand", int(rng.integers(1, 3)))
                fell = True

    def _y_range(self) -> tuple[float, float]:
        return self.stage.y_far, self.stage.y_near


def _sign(v: float) -> int:
    return 1 if v >= 0 else -1


# -- the director -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldParams:
    """Knobs of one video's script."""

    seconds: int
    min_persons: int = 2
    max_persons: int = 4


class _Director:
    def __init__(self, stage: Stage, params: WorldParams, rng: np.random.Generator) -> None:
        self.stage, self.params, self.rng = stage, params, rng
        self.persons: list[PersonScript] = []
        self.evidence: list[Evidence] = []
        self.wardrobe = _Wardrobe(rng)
        self.occupancy = np.zeros(params.seconds + 1, dtype=np.int64)

    def new_person(self) -> PersonScript:
        person = PersonScript(len(self.persons), self.wardrobe.next())
        self.persons.append(person)
        return person

    def depth(self) -> float:
        return float(self.rng.uniform(self.stage.y_far, self.stage.y_near))

    def commit(self, person: PersonScript) -> None:
        for seg in person.segments:
            lo = max(0, math.ceil(seg.t0))
            hi = min(self.params.seconds, math.ceil(seg.t1))
            self.occupancy[lo:hi] += 1

    def builder_entering(self, person: PersonScript, t: float, y: float) -> _Builder:
        side = -1 if self.rng.uniform() < 0.5 else 1
        h = self.stage.body_height(y, person.look.scale)
        x = self.stage.offscreen_x(side, h)
        return _Builder(self.stage, self.rng, person, t, x, y, -side)

    # -- stories ----------------------------------------------------------------------------

    def long_term_story(self, state_id: int, e: int) -> None:
        event_id, activity = C.LONG_TERM[state_id]
        stage, rng = self.stage, self.rng
        person = self.new_person()
        y = self.depth()
        h = stage.body_height(y, person.look.scale)
        side = -1 if rng.uniform() < 0.5 else 1
        x_off = stage.offscreen_x(side, h)
        lo, hi = stage.x_bounds(h)
        x_event = lo if side < 0 else hi
        b = _Builder(stage, rng, person, e - 0.9, x_off, y, -side)
        # Dash in, do the event at the edge, dash out: the dashes hold no keyframe, so the
        # person is annotated only at the event's own two keyframes (e, e + 1).
        b.add("run", 0.4, x_event)
        b.add(activity, 2.0)
        b.add("run", 0.4, x_off, None, side)
        evidence_time = e - 0.5 + EVENT_VANISH
        self.evidence.append(Evidence(person.person_id, state_id, event_id, e - 0.5, evidence_time))
        # Back 10+ s later from either side; gone before the 30 s are up.
        back = self.builder_entering(person, e + 11.5, self.depth())
        lo, hi = stage.x_bounds(back.h)
        back.walk_to(float(rng.uniform(lo, hi)))
        back.wander(until=e + 24.5)
        latest_exit = evidence_time + C.LONG_TERM_MAX_GAP
        side = -1 if back.x < stage.width / 2 else 1
        target = stage.offscreen_x(side, back.h)
        if back.t + math.ceil(abs(target - back.x) / (WALK_SPEED * back.h)) > latest_exit:
            back.walk_to(target, speed=RUN_SPEED)
        else:
            back.exit()
        assert back.t <= latest_exit + 0.5, "long-term story overran its window"
        self.commit(person)

    def conversation(self, t_meet: float, at_start: bool) -> None:
        stage, rng = self.stage, self.rng
        a, b_ = self.new_person(), self.new_person()
        y = self.depth()
        ha = stage.body_height(y, a.look.scale)
        hb = stage.body_height(y, b_.look.scale)
        gap = 0.52 * max(ha, hb)
        xm = float(rng.uniform(0.3, 0.7)) * stage.width
        xa, xb = xm - gap / 2, xm + gap / 2
        if at_start:
            ba = _Builder(stage, rng, a, 0.0, xa, y, 1)
            bb = _Builder(stage, rng, b_, 0.0, xb, y, -1)
        else:
            ba = _Builder(stage, rng, a, 0.0, stage.offscreen_x(-1, ha), y, 1)
            bb = _Builder(stage, rng, b_, 0.0, stage.offscreen_x(1, hb), y, -1)
            # Both arrive at t_meet: each starts as early as its own walk needs.
            for builder, target in ((ba, xa), (bb, xb)):
                duration = max(1, math.ceil(abs(target - builder.x) / (WALK_SPEED * builder.h)))
                builder.t = t_meet - duration
                builder.add("walk", duration, target)
        first = True
        if rng.uniform() < 0.8:
            self._both(ba, bb, "shake", "shake", 1.5 if at_start else 1.0)
            first = False
        speaker = int(rng.integers(2))
        for _ in range(int(rng.integers(2, 5))):
            # At the video start the first segment ends on a half second, like all others.
            turn = int(rng.integers(2, 5)) + (0.5 if first and at_start else 0.0)
            first = False
            if rng.uniform() < 0.15:
                self._both(ba, bb, "stand", "stand", turn)
            elif speaker == 0:
                self._both(ba, bb, "talk", "watch", turn)
            else:
                self._both(ba, bb, "watch", "talk", turn)
            speaker = 1 - speaker
        if rng.uniform() < 0.12:
            self._both(ba, bb, "shake", "shake", 1)
        for builder in (ba, bb):
            if rng.uniform() < 0.35:
                builder.wander(until=builder.t + float(rng.integers(6, 16)))
            builder.exit()
            self.commit(builder.person)

    @staticmethod
    def _both(ba: _Builder, bb: _Builder, act_a: str, act_b: str, duration: float) -> None:
        ba.add(act_a, duration, facing=1)
        bb.add(act_b, duration, facing=-1)

    def wanderer(self, t: int) -> None:
        stage, rng, seconds = self.stage, self.rng, self.params.seconds
        person = self.new_person()
        y = self.depth()
        if t == 0:
            h = stage.body_height(y, person.look.scale)
            lo, hi = stage.x_bounds(h)
            x = float(rng.uniform(lo, hi))
            b = _Builder(stage, rng, person, 0.0, x, y, 1 if rng.uniform() < 0.5 else -1)
            b.add("stand", 0.5 + int(rng.integers(1, 4)))
        else:
            b = self.builder_entering(person, t - 0.5, y)
            lo, hi = stage.x_bounds(b.h)
            b.walk_to(float(rng.uniform(lo, hi)))
        until = min(seconds + 2.0, t + float(rng.integers(10, 31)))
        # Leave room under the crowd limit: stop before the first over-full second.
        crowded = np.flatnonzero(self.occupancy[t:] >= self.params.max_persons)
        if crowded.size:
            until = min(until, t + float(crowded[0]) - 6.0)
        b.wander(until=max(until, b.t + 2.0))
        if b.t < seconds:
            b.exit()
        self.commit(person)

    def direct(self) -> None:
        seconds, rng = self.params.seconds, self.rng
        last_kf = seconds - FIRST_KEYFRAME
        # 1. Conversations, roughly one every 20 s, where two more people fit.
        n_pairs = max(1, round(seconds / 20))
        for k in range(n_pairs):
            at_start = k == 0 and rng.uniform() < 0.5
            if at_start:
                self.conversation(0.0, True)
                continue
            for _ in range(12):
                t_meet = float(rng.integers(6, max(7, seconds - 8))) + 0.5
                window = self.occupancy[int(t_meet) - 5 : int(t_meet) + 12]
                if window.size and window.max() + 2 <= self.params.max_persons:
                    self.conversation(t_meet, False)
                    break
        # 2. One long-term story per class per started minute, when the video is long enough
        #    for at least one labelled keyframe (evidence + 10 s <= last keyframe).
        for state_id in sorted(C.LONG_TERM):
            stories = max(1, seconds // 60)
            for k in range(stories):
                lo = 2 + k * 60
                hi = min(lo + 25, last_kf - 12)
                if hi < lo:
                    continue
                self.long_term_story(state_id, int(rng.integers(lo, hi + 1)))
        # 3. Wanderers keep at least min_persons around and sometimes add one more.
        for t in range(seconds - 3):
            guard = 0
            while self.occupancy[t] < self.params.min_persons and guard < 3:
                self.wanderer(t)
                guard += 1
            if self.occupancy[t] < self.params.max_persons and rng.uniform() < 0.03:
                self.wanderer(t)


def _camera_shake(rng: np.random.Generator, frames: int) -> npt.NDArray[np.int64]:
    """Slow, small hand-held drift: a damped random walk, rounded to +-2 pixels."""
    out = np.zeros((frames, 2), dtype=np.int64)
    state = np.zeros(2)
    for i in range(frames):
        state = 0.9 * state + rng.normal(0.0, 0.35, size=2)
        out[i] = np.clip(np.round(state), -2, 2).astype(np.int64)
    return out


def make_video_script(video_id: str, seed: int, stage: Stage, params: WorldParams) -> VideoScript:
    """The whole script of one world video, from its seed alone."""
    rng = np.random.default_rng(seed)
    director = _Director(stage, params, rng)
    director.direct()
    camera = _camera_shake(rng, params.seconds * stage.fps)
    return VideoScript(
        video_id, seed, params.seconds, stage, director.persons, director.evidence, camera
    )


# -- keyframe labels -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyframeLabel:
    """One annotated person at one keyframe: normalised box and AVA ids (pose first)."""

    video_id: str
    timestamp: int
    person_id: int
    box: tuple[float, float, float, float]  # normalised xyxy, clipped to the frame
    labels: tuple[int, ...]
    visible: float


def _visible_fraction(
    box: tuple[float, float, float, float],
    nearer: list[tuple[float, float, float, float]],
    width: int,
    height: int,
) -> float:
    """Share of ``box`` inside the frame and not under any nearer person's box."""
    x1, y1, x2, y2 = box
    area = max(1e-6, (x2 - x1) * (y2 - y1))
    cx1, cy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    cx2, cy2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    if cx2 <= cx1 or cy2 <= cy1:
        return 0.0
    free = np.ones((cy2 - cy1, cx2 - cx1), dtype=bool)
    for ox1, oy1, ox2, oy2 in nearer:
        a, b = max(cx1, math.floor(ox1)), min(cx2, math.ceil(ox2))
        c, d = max(cy1, math.floor(oy1)), min(cy2, math.ceil(oy2))
        if b > a and d > c:
            free[c - cy1 : d - cy1, a - cx1 : b - cx1] = False
    return min(1.0, float(free.sum()) / area)


def annotate(script: VideoScript) -> list[KeyframeLabel]:
    """Ground truth of every keyframe, sorted by (timestamp, person_id)."""
    stage = script.stage
    out: list[KeyframeLabel] = []
    for t in range(FIRST_KEYFRAME, script.seconds - FIRST_KEYFRAME + 1):
        dx, dy = (int(v) for v in script.camera[min(t * stage.fps, script.num_frames - 1)])
        states = script.states_at(float(t))
        boxes = {s.person_id: _shift(s.box, dx, dy) for s in states}
        for s in sorted(states, key=lambda s: s.person_id):
            # Nearer = feet lower in the image; equal depth (conversation partners) does
            # not count as occlusion.
            nearer = [boxes[o.person_id] for o in states if o.feet_y > s.feet_y + 1.0]
            visible = _visible_fraction(boxes[s.person_id], nearer, stage.width, stage.height)
            if visible < MIN_VISIBLE:
                continue
            labels = list(C.activity_labels(s.segment.activity, t - s.segment.t0))
            for ev in script.evidence:
                gap = t - ev.time
                if (
                    ev.person_id == s.person_id
                    and C.LONG_TERM_MIN_GAP <= gap <= C.LONG_TERM_MAX_GAP
                ):
                    labels.append(ev.state_id)
            x1, y1, x2, y2 = boxes[s.person_id]
            norm = (
                min(max(x1 / stage.width, 0.0), 1.0),
                min(max(y1 / stage.height, 0.0), 1.0),
                min(max(x2 / stage.width, 0.0), 1.0),
                min(max(y2 / stage.height, 0.0), 1.0),
            )
            out.append(KeyframeLabel(script.video_id, t, s.person_id, norm, tuple(labels), visible))
    return out


def _shift(
    box: tuple[float, float, float, float], dx: int, dy: int
) -> tuple[float, float, float, float]:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


# -- the classification variant --------------------------------------------------------------


def make_classification_script(
    clip_id: str, seed: int, stage: Stage, class_id: int, seconds: int = 2
) -> VideoScript:
    """One person, mostly centred, doing one pose/motion class for the whole clip.

    Runs (and half of the walks) are filmed with a panning camera that follows the person,
    as in sports footage, so they stay in frame; the moving background then carries the
    motion too.
    """
    rng = np.random.default_rng(seed)
    wardrobe = _Wardrobe(rng)
    person = PersonScript(0, wardrobe.next())
    # Near people (about half the frame height): the label is all about the person, so
    # the person should dominate the frame, as in Kinetics clips.
    depth = stage.y_near - stage.y_far
    y = float(rng.uniform(stage.y_far + 0.55 * depth, stage.y_far + 0.95 * depth))
    h = stage.body_height(y, person.look.scale)
    facing = 1 if rng.uniform() < 0.5 else -1
    x = stage.width / 2 + float(rng.uniform(-0.1, 0.1)) * stage.width
    activity = C.CLASSIFICATION_ACTIVITY[class_id]
    end = seconds + 1.0
    b = _Builder(stage, rng, person, -1.0, x, y, facing)
    pan = False
    if activity in ("walk", "run"):
        speed = WALK_SPEED if activity == "walk" else RUN_SPEED
        pan = activity == "run" or rng.uniform() < 0.5
        travel = speed * h * (end + 1.0)
        if not pan:  # start off-centre so the walk crosses the middle
            b.x = x - facing * speed * h * (seconds / 2 + 1.0)
        b.add(activity, end + 1.0, b.x + facing * travel)
    elif activity == "fall":
        start = float(rng.uniform(0.3, 0.7))
        if not 0.1 * stage.width < x - facing * h < 0.9 * stage.width:
            b.facing = -facing
        b.add("stand", start + 1.0)
        b.add("fall", 1.0)
        b.add("lie", end - b.t)
    elif activity == "getup":
        start = float(rng.uniform(0.3, 0.7))
        b.add("lie", start + 1.0)
        b.add("getup", 1.0)
        b.add("stand", end - b.t)
    elif activity == "bend":
        b.add("stand", 1.0 + float(rng.uniform(0.0, 0.3)))
        b.add("bend", seconds - 0.4)
        b.add("stand", end - b.t)
    else:
        b.add(activity, end + 1.0)
    frames = seconds * stage.fps
    camera = _camera_shake(rng, frames)
    if pan:
        for i in range(frames):
            state = person.state_at(i / stage.fps, stage)
            assert state is not None
            camera[i, 0] += int(round(x - (state.points[0, 0])))
    return VideoScript(clip_id, seed, seconds, stage, [person], [], camera)

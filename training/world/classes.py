"""The world's classes: which real AVA ids it uses, and what each activity is labelled.

Four kinds (the dataset card explains each):

* **pose** (AVA ids 1..14, exactly one per annotated person): told apart by motion;
* **interaction** (person-person, labelled on the person doing it);
* **event**: a short, loud, visible action that is the *evidence* for a long-term class;
* **long-term**: a remembered state, on only while the same person's evidence event lies
  10..30 s in the past. Inside a 2 s clip a person with it looks exactly like one without.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.ava import AVA_NAMES, POSE_IDS, LabelMap


@dataclass(frozen=True)
class WorldClass:
    id: int
    kind: str  # "pose" | "interaction" | "event" | "long_term"
    short: str  # for drawing on previews

    @property
    def name(self) -> str:
        return AVA_NAMES[self.id - 1]


# Ordered as the label map is written: pose classes first, then the rest by id.
WORLD_CLASSES: tuple[WorldClass, ...] = (
    WorldClass(1, "pose", "bend"),
    WorldClass(5, "pose", "fall down"),
    WorldClass(6, "pose", "get up"),
    WorldClass(7, "pose", "jump"),
    WorldClass(8, "pose", "lie"),
    WorldClass(10, "pose", "run"),
    WorldClass(12, "pose", "stand"),
    WorldClass(14, "pose", "walk"),
    WorldClass(17, "long_term", "carry (hidden)"),
    WorldClass(26, "event", "put on"),
    WorldClass(36, "event", "pick up"),
    WorldClass(37, "long_term", "listen (music)"),
    WorldClass(68, "interaction", "hand shake"),
    WorldClass(79, "interaction", "talk to"),
    WorldClass(80, "interaction", "watch person"),
)
CLASS_BY_ID: dict[int, WorldClass] = {c.id: c for c in WORLD_CLASSES}
assert all((c.kind == "pose") == (c.id in POSE_IDS) for c in WORLD_CLASSES)

STAND, WALK, RUN, JUMP, BEND, FALL, LIE, GET_UP = 12, 14, 10, 7, 1, 5, 8, 6
HAND_SHAKE, TALK_TO, WATCH_PERSON = 68, 79, 80
PUT_ON, PICK_UP = 26, 36
LISTEN, CARRY = 37, 17

# Long-term class -> (evidence event class, the activity that performs it).
LONG_TERM: dict[int, tuple[int, str]] = {LISTEN: (PUT_ON, "puton"), CARRY: (PICK_UP, "pickup")}
# The rule, in seconds: on at keyframe t iff the same person's evidence time e has
# MIN_GAP <= t - e <= MAX_GAP. 30 s keeps the evidence inside a +-30 s (61 s) bank window
# and inside a causal 60 s one, so a bank model can always see it when the label is on.
LONG_TERM_MIN_GAP = 10.0
LONG_TERM_MAX_GAP = 30.0

# Which classes the imbalance claim is measured on (card and test).
COMMON_IDS: tuple[int, ...] = (STAND, WALK)
RARE_IDS: tuple[int, ...] = (FALL, GET_UP, HAND_SHAKE)
IMBALANCE_MIN_RATIO = 10.0

# The clip-level (Kinetics-style) variant: one person, one pose/motion label per clip.
CLASSIFICATION_IDS: tuple[int, ...] = (STAND, WALK, RUN, JUMP, BEND, FALL, GET_UP, LIE)


def activity_labels(activity: str, tau: float) -> tuple[int, ...]:
    """AVA ids of a keyframe ``tau`` s into a segment of ``activity`` (long-term excluded).

    The pose comes first; exactly one pose per annotated person.
    """
    if activity in ("stand", "walk", "run", "jump", "bend", "fall", "lie", "getup"):
        return (ACTIVITY_POSE[activity],)
    if activity == "talk":
        return (STAND, TALK_TO)
    if activity == "watch":
        return (STAND, WATCH_PERSON)
    if activity == "shake":
        return (STAND, HAND_SHAKE)
    if activity == "pickup":
        # Bent over the object during the first second, upright holding it up after.
        return (BEND if tau < 1.0 else STAND, PICK_UP)
    if activity == "puton":
        return (STAND, PUT_ON)
    raise ValueError(f"unknown activity {activity!r}")


ACTIVITY_POSE: dict[str, int] = {
    "stand": STAND,
    "walk": WALK,
    "run": RUN,
    "jump": JUMP,
    "bend": BEND,
    "fall": FALL,
    "lie": LIE,
    "getup": GET_UP,
}
# Activity a classification clip of each class shows (fall / get up get context around).
CLASSIFICATION_ACTIVITY: dict[int, str] = {v: k for k, v in ACTIVITY_POSE.items()}


def world_label_map() -> LabelMap:
    return LabelMap.from_ids(c.id for c in WORLD_CLASSES)

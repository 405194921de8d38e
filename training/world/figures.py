"""Articulated stick-and-ellipse figures: motion programs, forward kinematics, drawing.

A figure is seen from the side. Its skeleton lives in *body units*: ``x`` points the way
the figure faces, ``y`` points up, the feet stand on ``y = 0`` and 1.0 is the standing
height. A motion program (`pose_at`) turns an activity and the seconds since it began
into joint angles; `skeleton` turns the angles into joint positions; `place` maps them
to image pixels (``X = feet_x + facing * x * h``, ``Y = feet_y - y * h``) and
`draw_figure` paints them with PIL.

Every motion is periodic or eased so that a 2 s clip at 15 fps shows it clearly: the
classes the world asks a clip model to separate (stand / walk / run / jump / bend / fall)
differ in *motion*, not only in a single frame's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import ImageDraw

RGB = tuple[int, int, int]

# Segment lengths in body units (fractions of standing height).
L_THIGH = 0.25
L_SHIN = 0.24
L_TORSO = 0.29
L_NECK = 0.05
HEAD_R = 0.068
L_UARM = 0.16
L_FARM = 0.15
L_FOOT = 0.07

# Speeds in body heights per second; gait cycles in seconds (two steps per cycle).
WALK_SPEED = 0.55
RUN_SPEED = 1.45
WALK_CYCLE = 1.0
RUN_CYCLE = 0.56
JUMP_CYCLE = 0.9

# Props of the two evidence events: deliberately loud colours that no shirt uses.
BALL_RGB: RGB = (255, 226, 0)
BAND_RGBS: tuple[RGB, RGB] = ((255, 0, 200), (0, 235, 255))
# Moment (seconds into the 2 s event) the prop disappears for good: the evidence time.
EVENT_VANISH = 1.9

# Joint indices into a skeleton array (J, 2).
PELVIS, NECK, HEAD, SHOULDER = 0, 1, 2, 3
ELBOW = (4, 5)
HAND = (6, 7)
KNEE = (8, 9)
ANKLE = (10, 11)
TOE = (12, 13)
NUM_JOINTS = 14


@dataclass(frozen=True)
class Appearance:
    """What makes one person recognisable: clothes, skin, hair and build."""

    shirt: RGB
    pants: RGB
    skin: RGB
    hair: RGB
    scale: float  # multiplies the perspective height (0.88..1.1): tall and short people


@dataclass
class Pose:
    """Joint angles in radians. Index 0 is the near limb (drawn in front), 1 the far one.

    Leg and arm angles are absolute, measured from straight down, positive = forward;
    knee bends the shin backwards, elbow bends the forearm forwards. ``rot`` tips the
    whole body about the feet (negative = backwards, -pi/2 = lying on the back).
    """

    lean: float = 0.0
    nod: float = 0.0
    thigh: list[float] = field(default_factory=lambda: [0.04, -0.04])
    knee: list[float] = field(default_factory=lambda: [0.05, 0.05])
    uarm: list[float] = field(default_factory=lambda: [0.06, -0.05])
    elbow: list[float] = field(default_factory=lambda: [0.15, 0.15])
    rot: float = 0.0
    lift: float = 0.0  # body units above the ground (jumping)
    mouth: float = 0.0  # 0 closed .. 1 wide open
    ball: str | None = None  # None, "ground" (in front of the feet) or "hand"
    band: float | None = None  # None, or 0 (held between raised hands) .. 1 (on the head)
    flash: int = 0  # which of BAND_RGBS to paint this frame


def ease(u: float) -> float:
    """Smooth 0 -> 1 over u in [0, 1] (clamped): cosine ease-in/out."""
    u = min(max(u, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * u)


def lerp(a: float, b: float, u: float) -> float:
    return a + (b - a) * u


# -- motion programs -------------------------------------------------------------------------


def _stand(tau: float, phase: float) -> Pose:
    sway = math.sin(2 * math.pi * (0.3 * tau + phase))
    return Pose(lean=0.02 * sway, uarm=[0.06 + 0.02 * sway, -0.05])


def _walk(tau: float, phase: float) -> Pose:
    phi = 2 * math.pi * (tau / WALK_CYCLE + phase)
    s, c = math.sin(phi), math.cos(phi)
    return Pose(
        lean=0.05,
        thigh=[0.42 * s, -0.42 * s],
        # The knee bends while its leg swings forward (derivative of the thigh angle > 0).
        knee=[0.08 + 0.65 * max(0.0, c), 0.08 + 0.65 * max(0.0, -c)],
        uarm=[-0.38 * s, 0.38 * s],
        elbow=[0.3, 0.3],
    )


def _run(tau: float, phase: float) -> Pose:
    phi = 2 * math.pi * (tau / RUN_CYCLE + phase)
    s, c = math.sin(phi), math.cos(phi)
    return Pose(
        lean=0.3,
        thigh=[0.2 + 0.75 * s, 0.2 - 0.75 * s],
        knee=[0.35 + 1.35 * max(0.0, c), 0.35 + 1.35 * max(0.0, -c)],
        uarm=[-0.85 * s, 0.85 * s],
        elbow=[1.55, 1.55],
        lift=0.035 * abs(s),
    )


def _jump(tau: float, phase: float) -> Pose:
    u = ((tau / JUMP_CYCLE) + phase) % 1.0
    crouch, air = 0.0, 0.0
    if u < 0.25:
        crouch = ease(u / 0.25)
    elif u < 0.33:
        crouch = 1.0 - ease((u - 0.25) / 0.08)
    elif u < 0.78:
        air = math.sin(math.pi * (u - 0.33) / 0.45)
    else:
        crouch = 0.8 * math.sin(math.pi * (u - 0.78) / 0.22)
    arms = -0.7 * crouch + 2.7 * air
    return Pose(
        lean=0.45 * crouch,
        thigh=[0.95 * crouch + 0.25 * air, 0.95 * crouch + 0.15 * air],
        knee=[1.8 * crouch + 0.5 * air, 1.8 * crouch + 0.4 * air],
        uarm=[arms, arms - 0.15],
        elbow=[0.2, 0.2],
        lift=0.32 * air,
    )


def _bend(tau: float, duration: float) -> Pose:
    b = ease(tau / 0.7) * (1.0 - ease((tau - (duration - 0.7)) / 0.7))
    return Pose(
        lean=1.35 * b,
        thigh=[-0.22 * b + 0.03, -0.22 * b - 0.03],
        knee=[0.12 * b, 0.12 * b],
        uarm=[0.3 * b, 0.18 * b],
        elbow=[0.1, 0.1],
    )


def _fall(tau: float) -> Pose:
    stumble = ease(tau / 0.25)
    down = ease((tau - 0.25) / 0.6)
    arms_down = ease((tau - 0.85) / 0.15)
    arms = lerp(2.2 * stumble, 0.15, arms_down)
    return Pose(
        lean=-0.15 * stumble * (1 - down),
        thigh=[0.25 * stumble * (1 - down), 0.1 * stumble * (1 - down)],
        knee=[0.6 * math.sin(math.pi * down), 0.4 * math.sin(math.pi * down)],
        uarm=[arms, arms - 0.3],
        elbow=[0.3, 0.3],
        rot=-0.5 * math.pi * down,
    )


def _lie(tau: float, phase: float) -> Pose:
    breath = math.sin(2 * math.pi * (0.4 * tau + phase))
    return Pose(
        lean=0.02 * breath,
        thigh=[0.0, 0.02],
        knee=[0.03, 0.03],
        uarm=[0.12, 0.08],
        elbow=[0.1, 0.1],
        rot=-0.5 * math.pi,
    )


def _get_up(tau: float) -> Pose:
    # Sit up while tucking the legs (first half), then rise from the crouch (second half).
    sit = ease(tau / 0.5)
    rise = ease((tau - 0.5) / 0.5)
    tuck = sit * (1 - rise)
    return Pose(
        lean=0.55 * tuck,
        thigh=[1.25 * tuck, 1.15 * tuck],
        knee=[2.3 * tuck, 2.2 * tuck],
        uarm=[0.9 * tuck + 0.05, 0.6 * tuck - 0.05],
        elbow=[0.3, 0.3],
        rot=-0.5 * math.pi * (1 - sit),
    )


def _talk(tau: float, phase: float) -> Pose:
    p = _stand(tau, phase)
    p.nod = 0.2 * math.sin(2 * math.pi * (2.2 * tau + phase))
    p.mouth = 0.5 + 0.5 * math.sin(2 * math.pi * (3.3 * tau + phase))
    # The near hand gestures: a clearly visible, talk-only rhythm.
    p.uarm[0] = 0.65 + 0.35 * math.sin(2 * math.pi * (1.1 * tau + phase))
    p.elbow[0] = 1.3 + 0.45 * math.sin(2 * math.pi * (1.7 * tau + phase))
    return p


def _watch(tau: float, phase: float) -> Pose:
    # Still, hands clasped in front: attention without motion.
    p = _stand(tau, phase)
    p.lean = 0.0
    p.uarm = [0.3, 0.25]
    p.elbow = [1.25, 1.25]
    return p


def _shake(tau: float, phase: float) -> Pose:
    p = _stand(tau, phase)
    p.lean = 0.08
    p.uarm[0] = 1.2 + 0.22 * math.sin(2 * math.pi * 3.0 * tau)
    p.elbow[0] = 0.2
    return p


def _pickup(tau: float) -> Pose:
    down = ease(tau / 0.8) * (1.0 - ease((tau - 1.1) / 0.4))
    reach_up = ease((tau - 1.1) / 0.4) * (1.0 - ease((tau - 1.8) / 0.2))
    p = Pose(
        lean=1.4 * down,
        thigh=[-0.2 * down + 0.03, -0.2 * down - 0.03],
        knee=[0.4 * down, 0.4 * down],
        uarm=[0.55 * down + 3.0 * reach_up, 0.2 * down],
        elbow=[0.0, 0.1],
    )
    if tau < 0.9:
        p.ball = "ground"
    elif tau < EVENT_VANISH:
        p.ball = "hand"
    return p


def _put_on(tau: float) -> Pose:
    up = ease(tau / 0.5) * (1.0 - ease((tau - 1.5) / 0.4))
    on_head = ease((tau - 0.5) / 0.7)
    p = Pose(
        uarm=[2.75 * up - 0.5 * on_head * up, 2.6 * up - 0.5 * on_head * up],
        elbow=[0.4 * up + 1.3 * on_head * up, 0.4 * up + 1.3 * on_head * up],
    )
    if tau < EVENT_VANISH:
        p.band = on_head
        p.flash = int(tau * 7.5) % 2  # alternate colours every two frames at 15 fps
    return p


def pose_at(activity: str, tau: float, duration: float, phase: float) -> Pose:
    """The pose ``tau`` seconds into an activity segment of ``duration`` seconds.

    ``phase`` (0..1) desynchronises people doing the same thing.
    """
    if activity == "stand":
        return _stand(tau, phase)
    if activity == "walk":
        return _walk(tau, phase)
    if activity == "run":
        return _run(tau, phase)
    if activity == "jump":
        return _jump(tau, phase)
    if activity == "bend":
        return _bend(tau, duration)
    if activity == "fall":
        return _fall(tau)
    if activity == "lie":
        return _lie(tau, phase)
    if activity == "getup":
        return _get_up(tau)
    if activity == "talk":
        return _talk(tau, phase)
    if activity == "watch":
        return _watch(tau, phase)
    if activity == "shake":
        return _shake(tau, phase)
    if activity == "pickup":
        return _pickup(tau)
    if activity == "puton":
        return _put_on(tau)
    raise ValueError(f"unknown activity {activity!r}")


# -- kinematics ------------------------------------------------------------------------------


def _down(angle: float) -> npt.NDArray[np.float64]:
    """Unit vector at ``angle`` from straight down, positive = forward."""
    return np.array([math.sin(angle), -math.cos(angle)])


def skeleton(pose: Pose) -> npt.NDArray[np.float64]:
    """Joint positions (NUM_JOINTS, 2) in body units, feet on the ground."""
    j = np.zeros((NUM_JOINTS, 2))
    # The pelvis sits as high as the longer (straighter) leg reaches, so a foot is grounded.
    reach = [
        L_THIGH * math.cos(pose.thigh[i]) + L_SHIN * math.cos(pose.thigh[i] - pose.knee[i])
        for i in (0, 1)
    ]
    j[PELVIS] = (0.0, max(reach) + 0.02)
    up = np.array([math.sin(pose.lean), math.cos(pose.lean)])
    j[NECK] = j[PELVIS] + L_TORSO * up
    head_dir = np.array([math.sin(pose.lean + pose.nod), math.cos(pose.lean + pose.nod)])
    j[HEAD] = j[NECK] + (L_NECK + HEAD_R) * head_dir
    j[SHOULDER] = j[NECK] - 0.03 * up
    for i in (0, 1):
        j[ELBOW[i]] = j[SHOULDER] + L_UARM * _down(pose.uarm[i])
        j[HAND[i]] = j[ELBOW[i]] + L_FARM * _down(pose.uarm[i] + pose.elbow[i])
        j[KNEE[i]] = j[PELVIS] + L_THIGH * _down(pose.thigh[i])
        j[ANKLE[i]] = j[KNEE[i]] + L_SHIN * _down(pose.thigh[i] - pose.knee[i])
        j[TOE[i]] = j[ANKLE[i]] + (L_FOOT, -0.01)
    if pose.rot != 0.0:
        c, s = math.cos(pose.rot), math.sin(pose.rot)
        x, y = j[:, 0].copy(), j[:, 1].copy()
        j[:, 0] = x * c - y * s
        j[:, 1] = x * s + y * c
        # Tipping must not push the body through the floor: rest the lowest point on it.
        lowest = float(j[:, 1].min()) - 0.03
        if lowest < 0:
            j[:, 1] -= lowest
    j[:, 1] += pose.lift
    return j


def place(
    joints: npt.NDArray[np.float64], feet_x: float, feet_y: float, height: float, facing: int
) -> npt.NDArray[np.float64]:
    """Body units -> image pixels (x right, y down)."""
    out = np.empty_like(joints)
    out[:, 0] = feet_x + facing * joints[:, 0] * height
    out[:, 1] = feet_y - joints[:, 1] * height
    return out


def figure_box(points: npt.NDArray[np.float64], height: float) -> tuple[float, float, float, float]:
    """Tight pixel box (x1, y1, x2, y2) around a placed figure, limb thickness included."""
    pad = 0.035 * height
    head = points[HEAD]
    r = HEAD_R * height
    x1 = min(float(points[:, 0].min()) - pad, head[0] - r)
    x2 = max(float(points[:, 0].max()) + pad, head[0] + r)
    y1 = min(float(points[:, 1].min()) - pad, head[1] - r)
    y2 = float(points[:, 1].max()) + pad * 0.5
    return (x1, y1, x2, y2)


# -- drawing ---------------------------------------------------------------------------------


def _shade(rgb: RGB, k: float) -> RGB:
    return (int(rgb[0] * k), int(rgb[1] * k), int(rgb[2] * k))


def _limb(
    draw: ImageDraw.ImageDraw,
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    width: float,
    rgb: RGB,
) -> None:
    w = max(2, int(round(width)))
    draw.line([(a[0], a[1]), (b[0], b[1])], fill=rgb, width=w)
    r = w / 2.0
    # Round caps at both ends so limbs join like joints, not like sticks.
    for p in (a, b):
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=rgb)


def draw_figure(
    draw: ImageDraw.ImageDraw,
    points: npt.NDArray[np.float64],
    pose: Pose,
    look: Appearance,
    height: float,
    facing: int,
) -> None:
    """Paint one placed figure (far limbs, torso, head, near limbs, props)."""
    limb_w = 0.058 * height
    leg_w = 0.068 * height
    for side, k in ((1, 0.68), (0, 1.0)):
        pants = _shade(look.pants, k)
        shirt = _shade(look.shirt, k)
        _limb(draw, points[PELVIS], points[KNEE[side]], leg_w, pants)
        _limb(draw, points[KNEE[side]], points[ANKLE[side]], leg_w, pants)
        _limb(draw, points[ANKLE[side]], points[TOE[side]], leg_w * 0.8, _shade((40, 34, 30), k))
        if side == 1:
            _limb(draw, points[SHOULDER], points[ELBOW[side]], limb_w, shirt)
            _limb(draw, points[ELBOW[side]], points[HAND[side]], limb_w, shirt)
            _hand(draw, points[HAND[side]], limb_w, _shade(look.skin, k))
            # Torso after the far limbs, before the near ones.
            _limb(draw, points[PELVIS], points[SHOULDER], 0.13 * height, look.shirt)
            _head(draw, points, pose, look, height, facing)
    _limb(draw, points[SHOULDER], points[ELBOW[0]], limb_w, look.shirt)
    _limb(draw, points[ELBOW[0]], points[HAND[0]], limb_w, look.shirt)
    _hand(draw, points[HAND[0]], limb_w, look.skin)
    _props(draw, points, pose, height, facing)


def _hand(draw: ImageDraw.ImageDraw, p: npt.NDArray[np.float64], w: float, rgb: RGB) -> None:
    r = max(1.5, 0.65 * w)
    draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=rgb)


def _head(
    draw: ImageDraw.ImageDraw,
    points: npt.NDArray[np.float64],
    pose: Pose,
    look: Appearance,
    height: float,
    facing: int,
) -> None:
    hx, hy = points[HEAD]
    r = HEAD_R * height
    _limb(draw, points[NECK], points[HEAD], 0.05 * height, look.skin)
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=look.skin)
    # Hair: the back-and-top half of the head, so the face side shows which way they look.
    start = 180 if facing > 0 else 270
    draw.pieslice([hx - r, hy - r, hx + r, hy + r], start - 45, start + 135, fill=look.hair)
    # Direction the face points in image space (rotated with the body when lying).
    fx = points[HEAD][0] - points[NECK][0]
    fy = points[HEAD][1] - points[NECK][1]
    n = math.hypot(fx, fy) or 1.0
    ux, uy = fx / n, fy / n  # "up" along the head
    vx, vy = -uy * facing, ux * facing  # "forward" for the face: up turned 90 deg
    ex, ey = hx + 0.55 * r * vx + 0.2 * r * ux, hy + 0.55 * r * vy + 0.2 * r * uy
    er = max(1.0, 0.14 * r)
    draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(20, 20, 20))
    if r >= 4:
        mx, my = hx + 0.55 * r * vx - 0.45 * r * ux, hy + 0.55 * r * vy - 0.45 * r * uy
        mh = max(0.8, (0.08 + 0.3 * pose.mouth) * r)
        mw = 0.22 * r
        draw.ellipse([mx - mw, my - mh, mx + mw, my + mh], fill=(90, 20, 25))


def _props(
    draw: ImageDraw.ImageDraw,
    points: npt.NDArray[np.float64],
    pose: Pose,
    height: float,
    facing: int,
) -> None:
    if pose.ball is not None:
        if pose.ball == "hand":
            bx, by = points[HAND[0]]
        else:
            bx = points[TOE[0]][0] + facing * 0.2 * height
            by = max(points[TOE[0]][1], points[TOE[1]][1]) - 0.05 * height
        r = max(2.5, 0.055 * height)
        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=BALL_RGB, outline=(90, 60, 0))
    if pose.band is not None:
        hands = (points[HAND[0]] + points[HAND[1]]) / 2.0
        above = hands + np.array([0.0, -0.04 * height])
        cx, cy = (1 - pose.band) * above + pose.band * points[HEAD]
        r = 1.35 * HEAD_R * height
        w = max(2, int(round(0.045 * height)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=BAND_RGBS[pose.flash], width=w)

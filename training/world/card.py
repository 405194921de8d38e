"""The dataset card (CARD.md) of a generated world, written from its dataset.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.world import classes as C

_KIND_TEXT = {
    "pose": "pose (exactly one per person)",
    "interaction": "person-person interaction",
    "event": "evidence event (short, loud, visible)",
    "long_term": "long-term context (remembered state)",
}

_WHY = {
    1: "bows at the waist (2-3 s) or bends over to pick something up",
    5: "tips over backwards within one second",
    6: "sits up with tucked legs, then rises",
    7: "repeated jumps in place: crouch, take off, arms up",
    8: "lies on the back, still",
    10: "fast gait, torso leaning forward, bent arms pumping",
    12: "upright, slight sway (also the pose of talk / watch / shake)",
    14: "normal gait with arm swing",
    17: "picked a bright yellow ball up 10-30 s ago and pocketed it: it carries an object "
    "nobody can see any more",
    26: "raises a flashing magenta/cyan headband over the head and puts it on (2 s)",
    36: "bends down, picks up a bright yellow ball, holds it high, pockets it (2 s)",
    37: "put on (now hidden) headphones 10-30 s ago: it is listening to music",
    68: "partners face each other, near hands meet and pump (1 s)",
    79: "faces the partner, head nods, mouth opens and closes, one hand gestures",
    80: "faces the partner who talks, still, hands clasped",
}


def write_card(path: Path, info: dict[str, Any]) -> None:
    cfg = info["config"]
    width, height = info["size"]
    videos = info["videos"]
    n_train = sum(1 for v in videos if v["split"] == "train")
    n_val = len(videos) - n_train
    min_visible = info["keyframes"]["min_visible"]
    lines = [
        "# Synthetic AVA world",
        "",
        "A procedurally generated stand-in for AVA, written by `avaserve make-world` "
        f"(generator v{info['generator_version']}, seed {info['seed']}). It exists so that the "
        "whole method (person detector, SlowFast, the long-term feature bank, the evaluator) "
        "can be trained and measured end to end on a CPU. It is not a benchmark of real "
        "human action recognition.",
        "",
        "## What is in it",
        "",
        f"* {n_train} train and {n_val} val videos of {cfg['seconds']} s, {width}x{height}, "
        f"{info['fps']} fps, H.264 (libx264, yuv420p, crf {cfg['crf']}, one GOP per second).",
        f"* {cfg['min_persons']}-{cfg['max_persons']} people at a time (as the script aims; "
        "the long-term stories briefly leave fewer). People enter and leave through the side "
        "edges, walk in depth, and occlude each other (drawn far to near).",
        "* Each person is an articulated side-view figure (head with face, torso, arms with "
        "elbows, legs with knees, feet) with its own shirt colour (no two people of a video "
        "share a shirt colour until the 14-colour palette runs out), trousers, skin tone, hair and "
        "height; size follows the floor's perspective. Backgrounds: a wall with random "
        "rectangles over a tiled floor; camera: +-2 px drift, gaussian noise (sigma 3), "
        "brightness flicker.",
        "* Annotations in the AVA format: `annotations/{train,val}.csv` "
        "(`video_id,timestamp,x1,y1,x2,y2,action_id,person_id`, no header, boxes "
        "normalised, one row per person and action), `label_map.pbtxt` (ActivityNet "
        "format, these classes only), empty `excluded_{train,val}.csv`, and `dataset.json` "
        "(fps, size, `time_offset` 0, every seed, class counts, the long-term rule and every "
        "evidence event).",
        "",
        "## Annotation rules",
        "",
        f"* Keyframes are integer seconds {info['keyframes']['first']} .. seconds - "
        f"{info['keyframes']['first']}: a 2.1 s clip centred on one lies inside the video, "
        "so no clip needs padding.",
        f"* A person is annotated at a keyframe iff at least {min_visible:.0%} "
        "of their box is visible: inside the frame and not under the box of a person nearer "
        "the camera (box-based, so a conservative estimate). Boxes are tight around the "
        "figure (limbs and props' hands included) and clipped to the frame.",
        "* Person ids are stable within a video (a person who leaves and returns keeps "
        "theirs) and never reused.",
        "* Every annotated person has exactly one pose class; the others come on top.",
        "",
        "## Classes",
        "",
        "| AVA id | name | kind | what it looks like | train | val |",
        "|---:|---|---|---|---:|---:|",
    ]
    for c in info["classes"]:
        lines.append(
            f"| {c['id']} | {c['name']} | {_KIND_TEXT[c['kind']]} | {_WHY[c['id']]} | "
            f"{c['count_train']} | {c['count_val']} |"
        )
    imb = info["imbalance"]
    common = ", ".join(C.CLASS_BY_ID[i].name for i in imb["common_ids"])
    rare = ", ".join(C.CLASS_BY_ID[i].name for i in imb["rare_ids"])
    lines += [
        "",
        "## Imbalance",
        "",
        f"Like AVA, the label distribution is long-tailed. The common classes ({common}) are "
        f"at least {imb['min_ratio']:g}x as frequent as each rare one ({rare}): "
        f"min(common) / max(rare) = {imb['ratio_train']} on train and {imb['ratio_val']} on "
        "val (null = a rare class is absent from that split). Talk to / watch (a person) "
        "are frequent too; the evidence events occur twice per story. So label subsampling "
        "and CP-IA have something to do.",
        "",
        "## Long-term context",
        "",
    ]
    for lt in info["long_term"]:
        lines.append(f"* **{lt['name']}** ({lt['id']}): {lt['rule']}.")
    lines += [
        "",
        "How the stories run: the person dashes in at the frame edge, performs the evidence "
        "event (which is itself labelled, at its two keyframes), dashes out, stays away for "
        "about 10 s, comes back, behaves like anyone else (walks, stands, jumps, runs, "
        "bends, may fall) and leaves for good before 30 s have passed since the evidence. "
        "The prop vanishes at the evidence time, so from the next second on a person with "
        "the label looks exactly like one without it, and the evidence is at least 10 s "
        "(far more than half a clip) away from every labelled keyframe: a 2 s clip model "
        "can only guess. A bank of per-second person features covering +-30 s (or the past "
        "60 s) holds the evidence exactly when the label is on, except at the two event "
        "keyframes themselves, whose clip shows the event. The shirt colours make the "
        "person-to-bank link learnable.",
        "",
        "Why these ids: AVA has no class for a remembered state, so two whose meaning is "
        "unobservable at a glance were chosen: *listen (e.g., to music)* after putting on "
        "headphones that are then hidden, and *carry/hold (an object)* for an object that "
        "was picked up and pocketed. Their evidence events use the AVA classes *dress/put "
        "on clothing* and *lift/pick up*.",
        "",
    ]
    if "classification" in info:
        cls = info["classification"]
        names = ", ".join(f"{c['name']} ({c['id']})" for c in cls["classes"])
        lines += [
            "## Classification variant (Kinetics-style pre-training)",
            "",
            f"`classification/clips/*.mp4`: {cls['train_clips']} train and {cls['val_clips']} "
            f"val clips of {cls['clip_seconds']} s, one person, mostly centred, one label per "
            f"clip, balanced over {len(cls['classes'])} classes: {names}. Runs and half of "
            "the walks are filmed with a camera that pans with the person. "
            f"{cls['csv']}. Seeds are disjoint from each other and from the videos'.",
            "",
            "Learnability (measured while building generator v1, seed 0, 100 train / 20 val "
            "clips per class): a 4-layer 3D CNN trained from scratch on 15 frames at 64x48 "
            "reached 0% top-1 error on the 160 val clips after 10 epochs (0.6% after 15, one "
            "get up taken for fall down); with 40 clips per "
            "class it memorised backgrounds instead (46% error), hence the default.",
            "",
        ]
    lines += [
        "## Seeds and reproducibility",
        "",
        "Each video's seed is `seed * 100000 + split_code * 10000 + index` (split codes: "
        "0 train, 1 val, 2/3 classification train/val), so splits never share a seed. A "
        "video depends on its seed only; the same seed gives byte-identical annotation "
        "CSVs. The mp4 bytes depend on the libx264 build.",
        "",
        "## Known limitations",
        "",
        "* Side views only; no turning in depth, no real 3D, no lighting changes, no "
        "motion blur. Figures are drawn without anti-aliasing.",
        "* Visibility is judged from boxes, not silhouettes, so some annotated people are "
        "more hidden, or some dropped ones less hidden, than the rule suggests.",
        "* Long-term persons only do solo activities after they return (never talk), and "
        "their dashes in and out are faster than anyone else's walk.",
        "* A handful of keyframes right at the video start or end, or around a fall, "
        "have boxes whose size changes quickly (lying figures are wide and flat).",
        "* Activity boundaries are instantaneous at half seconds; the label of a keyframe "
        "is the activity of its second, not a human's judgement of the clip.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")

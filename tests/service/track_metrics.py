"""Tracking quality: CLEAR-MOT counts (FP, FN, ID switches, MOTA) and IDF1.

Inputs are flat lists of ``(frame, id, box)`` with ``box`` xyxy (any consistent unit), for the
ground truth and the tracker's predictions. A GT box and a predicted box *match* in a frame when
their IoU is at least ``iou_thresh`` (0.5, the MOTChallenge convention).

CLEAR MOT (Bernardin & Stiefelhagen, 2008), per frame:
  1. keep last frame's correspondences (gt id -> pred id) that still match;
  2. match the remaining boxes by Hungarian assignment maximising IoU;
  3. an ID switch is a GT id whose matched pred id differs from the one it last matched
     (in any earlier frame, so a switch across a gap is counted too);
  MOTA = 1 - (FN + FP + IDSW) / number of GT boxes.

IDF1 (Ristani et al., ECCV 2016 workshops): each GT identity may be paired with at most one
predicted identity for the **whole sequence**. For a pair (g, p), ``m(g, p)`` is the number of
frames where both exist and their boxes match. The pairing maximising ``sum m`` (a global
bipartite matching, solved exactly with the Hungarian algorithm) gives IDTP;
IDFN = |GT boxes| - IDTP, IDFP = |pred boxes| - IDTP, IDF1 = 2 IDTP / (|GT| + |pred|).
Maximising IDTP is the same as the paper's minimum-cost matching (cost of a pair = its FN + FP
frames, cost of leaving an id unpaired = its length), since the total length is constant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from core.boxes import iou_matrix

Row = tuple[int, int, Sequence[float]]  # (frame, id, box xyxy)


@dataclass(frozen=True)
class TrackMetrics:
    num_gt: int  # GT boxes
    num_pred: int  # predicted boxes
    matches: int  # CLEAR-MOT matched boxes
    false_positives: int
    misses: int
    id_switches: int
    mota: float
    idtp: int
    idfp: int
    idfn: int
    idf1: float
    idp: float  # IDTP / |pred|
    idr: float  # IDTP / |GT|


def _by_frame(rows: Iterable[Row]) -> dict[int, tuple[list[int], np.ndarray]]:
    grouped: dict[int, list[tuple[int, Sequence[float]]]] = defaultdict(list)
    for frame, ident, box in rows:
        grouped[int(frame)].append((int(ident), box))
    out: dict[int, tuple[list[int], np.ndarray]] = {}
    for frame, items in grouped.items():
        ids = [i for i, _ in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"track_metrics: id repeated within frame {frame}")
        out[frame] = (ids, np.asarray([b for _, b in items], dtype=np.float64).reshape(-1, 4))
    return out


def evaluate_tracks(
    gt: Iterable[Row], pred: Iterable[Row], *, iou_thresh: float = 0.5
) -> TrackMetrics:
    """CLEAR-MOT counts and IDF1 of ``pred`` against ``gt`` (see the module docstring)."""
    gt_f = _by_frame(gt)
    pr_f = _by_frame(pred)
    gt_ids = sorted({i for ids, _ in gt_f.values() for i in ids})
    pr_ids = sorted({i for ids, _ in pr_f.values() for i in ids})
    g_col = {g: k for k, g in enumerate(gt_ids)}
    p_col = {p: k for k, p in enumerate(pr_ids)}
    co = np.zeros((len(gt_ids), len(pr_ids)), dtype=np.int64)  # m(g, p)

    num_gt = sum(len(ids) for ids, _ in gt_f.values())
    num_pred = sum(len(ids) for ids, _ in pr_f.values())
    matches = switches = 0
    last_match: dict[int, int] = {}  # gt id -> pred id it last matched (any earlier frame)
    prev_pairs: dict[int, int] = {}  # correspondences of the previous frame

    for frame in sorted(set(gt_f) | set(pr_f)):
        g_ids, g_boxes = gt_f.get(frame, ([], np.zeros((0, 4))))
        p_ids, p_boxes = pr_f.get(frame, ([], np.zeros((0, 4))))
        if not g_ids or not p_ids:
            prev_pairs = {}
            continue
        iou = iou_matrix(g_boxes, p_boxes)  # (G, P)
        ok = iou >= iou_thresh
        for gi, pi in zip(*np.nonzero(ok), strict=True):
            co[g_col[g_ids[gi]], p_col[p_ids[pi]]] += 1

        pairs: dict[int, int] = {}
        # 1. keep still-valid correspondences from the previous frame
        g_pos = {g: k for k, g in enumerate(g_ids)}
        p_pos = {p: k for k, p in enumerate(p_ids)}
        for g, p in prev_pairs.items():
            if g in g_pos and p in p_pos and ok[g_pos[g], p_pos[p]]:
                pairs[g] = p
        # 2. Hungarian on the rest
        free_g = [k for k, g in enumerate(g_ids) if g not in pairs]
        used_p = set(pairs.values())
        free_p = [k for k, p in enumerate(p_ids) if p not in used_p]
        if free_g and free_p:
            sub = iou[np.ix_(free_g, free_p)]
            cost = np.where(sub >= iou_thresh, 1.0 - sub, 1e6)
            for r, c in zip(*linear_sum_assignment(cost), strict=True):
                if cost[r, c] < 1e6:
                    pairs[g_ids[free_g[r]]] = p_ids[free_p[c]]
        # 3. switches
        for g, p in pairs.items():
            if g in last_match and last_match[g] != p:
                switches += 1
            last_match[g] = p
        matches += len(pairs)
        prev_pairs = pairs

    fp = num_pred - matches
    fn = num_gt - matches
    mota = 1.0 - (fn + fp + switches) / num_gt if num_gt else 0.0

    idtp = 0
    if co.size:
        rows, cols = linear_sum_assignment(co, maximize=True)
        idtp = int(co[rows, cols].sum())
    denom = num_gt + num_pred
    return TrackMetrics(
        num_gt=num_gt,
        num_pred=num_pred,
        matches=matches,
        false_positives=fp,
        misses=fn,
        id_switches=switches,
        mota=mota,
        idtp=idtp,
        idfp=num_pred - idtp,
        idfn=num_gt - idtp,
        idf1=2 * idtp / denom if denom else 1.0,
        idp=idtp / num_pred if num_pred else 0.0,
        idr=idtp / num_gt if num_gt else 0.0,
    )

"""Data balancing for AVA training: the co-occurrence matrix, CP-IA and LS (report B).

An *instance* here is one person box at one keyframe with its set of action labels, held
as one row of a multi-hot label matrix ``labels`` of shape (N, C) (columns in label-map
order). Report B balances AVA's long-tailed label distribution in two steps, in this
order (DESIGN.md, "Data balancing"):

1. **CP-IA**, correlation-preserving instance augmentation (`plan_cpia`, `apply_cpia`):
   duplicate boxes of rare classes, spatially jittered, each copy carrying *all* the
   labels of its source box, so that a rare class's diagonal count grows while what it
   co-occurs with, ``P(j | i) = M[i, j] / M[i, i]``, stays as it was.
2. **LS**, label subsampling (`ls_drop_probabilities`, `subsample_labels`): drop
   individual labels of the most frequent classes at random.

`balance` runs both, LS on the counts *after* CP-IA. Everything is seeded and pure: the
functions return new arrays and plans, never change their inputs. docs/balancing.md
states the LS reading and the CP-IA algorithm with measured figures.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BalanceResult",
    "CpiaPlan",
    "apply_cpia",
    "balance",
    "conditional_cooccurrence",
    "cooccurrence_matrix",
    "frequent_classes",
    "ls_drop_probabilities",
    "multi_hot",
    "plan_cpia",
    "subsample_labels",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Report B: T = 0.3 is the largest probability with which LS drops a label.
LS_MAX_DROP = 0.3
# Report B: classes with more than 10,000 training instances are "frequent" (AVA v2.2).
AVA_FREQUENT_THRESHOLD = 10_000


def multi_hot(label_sets: Iterable[Iterable[int]], num_classes: int) -> BoolArray:
    """(N, C) bool matrix from N sets of column indices (0-based, < ``num_classes``)."""
    sets = [list(s) for s in label_sets]
    out = np.zeros((len(sets), num_classes), dtype=bool)
    for n, cols in enumerate(sets):
        for c in cols:
            if not 0 <= c < num_classes:
                raise ValueError(
                    f"multi_hot: column {c} of instance {n} is outside 0..{num_classes - 1}"
                )
            out[n, c] = True
    return out


def _as_bool(labels: npt.ArrayLike) -> BoolArray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be a (N, C) multi-hot matrix, got shape {arr.shape}")
    return arr > 0


def cooccurrence_matrix(
    labels: npt.ArrayLike | Sequence[Iterable[int]], num_classes: int | None = None
) -> IntArray:
    """(C, C) label co-occurrence counts ``M = Y^T Y`` of a (N, C) multi-hot ``Y``.

    ``M[i, i]`` is the number of instances of class ``i``; ``M[i, j]`` the number of
    instances labelled with both ``i`` and ``j`` (report B's matrix). ``labels`` is either
    the multi-hot matrix or, with ``num_classes``, a sequence of sets of column indices.
    """
    y = (
        multi_hot(labels, num_classes)  # type: ignore[arg-type]
        if num_classes is not None
        else _as_bool(labels)  # type: ignore[arg-type]
    )
    yi = y.astype(np.int64)  # (N, C)
    return yi.T @ yi  # (C, C)


def conditional_cooccurrence(m: npt.ArrayLike) -> FloatArray:
    """``P[i, j] = M[i, j] / M[i, i]``, the share of class ``i``'s instances that also carry
    ``j`` (rows of classes with no instance are 0). These are the ratios CP-IA preserves."""
    mat = np.asarray(m, dtype=np.float64)
    diag = np.diag(mat)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(diag[:, None] > 0, mat / diag[:, None], 0.0)
    return out


# --------------------------------------------------------------------------------------
# CP-IA
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpiaPlan:
    """What CP-IA decided: which instances to duplicate and how to jitter each copy.

    ``indices``: (D,) source-instance index of each of the D copies (an instance copied
    ``k`` times appears ``k`` times). ``jitter``: (D, 4) per-copy box offsets
    ``(dx1, dy1, dx2, dy2)`` as fractions of the source box's width/height (apply with
    `training.augment.apply_box_jitter`). ``copies``: (N,) copies per instance.
    ``targets``: (C,) the diagonal count each class was raised towards; ``counts_before`` /
    ``counts_after``: (C,) diagonals before / after (after = before + labels of the copies).
    ``augmented``: the classes that got copies at their own turn (step 3 below) -- the
    rows whose ``P(. | i)`` CP-IA keeps. A class pushed past its target only by copies
    made for rarer classes is not in it; its row moves towards theirs.
    """

    indices: IntArray
    jitter: FloatArray
    copies: IntArray
    targets: IntArray
    counts_before: IntArray
    counts_after: IntArray
    augmented: IntArray

    def __post_init__(self) -> None:
        d = self.indices.shape[0]
        if self.jitter.shape != (d, 4):
            raise ValueError(f"CpiaPlan: {d} copies but jitter of shape {self.jitter.shape}")
        if int(self.copies.sum()) != d:
            raise ValueError(f"CpiaPlan: copies sum to {int(self.copies.sum())}, not {d}")


def plan_cpia(
    labels: npt.ArrayLike,
    *,
    target: int,
    max_copies: int = 10,
    budget: int | None = None,
    jitter_ratio: float = 0.05,
    method: str = "pursuit",
    seed: int = 0,
) -> CpiaPlan:
    """Plan correlation-preserving instance augmentation (report B's CP-IA).

    ``labels``: (N, C) multi-hot. Each class ``i`` with ``0 < c_i < target`` (``c`` the
    diagonal of the co-occurrence matrix) is raised towards ``t_i = min(target, max_c)``
    by duplicating whole instances; every copy keeps all labels of its source.

    The algorithm, exactly ("rarest first, matching pursuit"):

    1. Multiplicity ``m_n = 1`` for every instance (the original itself).
    2. Visit the classes with ``0 < c_i < t_i`` in increasing order of their original
       count ``c_i`` (ties: lower column first).
    3. For class ``i`` let ``D = t_i - c'_i``, with ``c'_i`` its count including the copies
       made so far for rarer classes (those copies carried ``i`` too, so they count).
       With ``r`` row ``i`` of the current matrix, add ``D`` copies one at a time: among
       the label sets ("signatures") of ``i``'s instances, take the ``s`` that brings
       ``r`` closest to the proportional row after the copy, ``w = (r_i + 1) P(. | i)``,
       i.e. maximising ``2 y_s . (w - r) - |y_s|^2``, and copy the instance of that
       signature with the lowest multiplicity (ties: a seeded random rank). No instance
       goes beyond ``1 + max_copies``, no more than ``budget`` copies in all. Each copy contains
       ``i``, so it adds exactly 1 to ``c'_i``: the deficit is met exactly unless the cap
       or the budget stops it.
    4. Each copy gets box jitter ``(dx1, dy1, dx2, dy2) ~ U(-jitter_ratio, jitter_ratio)``.

    ``method="water"`` replaces step 3's choice by plain water-filling (the least-copied
    instance of ``i``, whatever its labels); it is kept for comparison.

    What is preserved, and what cannot be: row ``i`` of the matrix is the sum of the
    label vectors of ``i``'s instances weighted by their multiplicities. If they all had
    the same multiplicity, ``P(j | i)`` would not move. The rarest class is levelled first
    and its row is kept to integer rounding. A less rare class ``k`` inherits the copies
    of the instances it shares with rarer classes; the pursuit step then picks label sets
    that pull row ``k`` back towards ``P(. | k)``. Two limits remain. First, Bayes:
    ``P(i | j) = P(j | i) c_i / c_j``, so when ``c_i`` grows more than ``c_j`` the entry
    ``P(i | j)`` must grow with it; CP-IA keeps ``P(j | i)`` for the co-labels ``j`` at
    least as frequent as ``i`` (``c_j >= c_i``), the conditionals of a rare class given
    what it is seen with, and lets ``P(rarer | i)`` rise by the ratio of the
    multipliers. Second, exclusive labels (poses): mass taken by inherited copies of a
    rare pose cannot be given back to the other poses without overshooting ``t_i``.
    The tests measure both (docs/balancing.md has the figures).

    ``max_copies`` bounds how often one box is repeated (over-fitting to a few boxes is
    the cost of oversampling); ``budget`` bounds the dataset growth.
    """
    y = _as_bool(labels)  # (N, C)
    n, c = y.shape
    if target < 1:
        raise ValueError(f"plan_cpia: target must be >= 1, got {target}")
    if max_copies < 0:
        raise ValueError(f"plan_cpia: max_copies must be >= 0, got {max_copies}")
    if budget is not None and budget < 0:
        raise ValueError(f"plan_cpia: budget must be >= 0 or None, got {budget}")
    if method not in ("pursuit", "water"):
        raise ValueError(f"plan_cpia: method must be 'pursuit' or 'water', got {method!r}")
    rng = np.random.default_rng(seed)
    counts = y.sum(axis=0).astype(np.int64)  # (C,)
    original_p = conditional_cooccurrence(cooccurrence_matrix(y))  # (C, C) P(j | i)
    max_count = int(counts.max()) if c else 0
    goal = min(target, max_count)
    targets = np.where((counts > 0) & (counts < goal), goal, counts).astype(np.int64)
    mult = np.ones(n, dtype=np.int64)  # (N,) multiplicity incl. the original
    # A fixed random rank per instance breaks ties between equal multiplicities, so which
    # box gets the "+1 remainder" is random but reproducible.
    tie_rank = rng.permutation(n)
    current = counts.copy()
    left = budget if budget is not None else math.inf
    cap = 1 + max_copies
    order = sorted(
        (i for i in range(c) if 0 < counts[i] < targets[i]), key=lambda i: (counts[i], i)
    )
    augmented: list[int] = []
    for i in order:
        deficit = int(targets[i] - current[i])
        if deficit <= 0 or left <= 0:
            continue
        members = np.flatnonzero(y[:, i])  # instances of class i
        amount = int(min(deficit, left))
        if method == "water":
            added = _water_fill(mult, members, tie_rank, amount, cap)  # (N,) copies
        else:
            added = _pursuit_fill(y, mult, members, tie_rank, amount, cap, i, original_p[i])
        if added.sum() == 0:
            continue
        augmented.append(i)
        current += (added[:, None] * y).sum(axis=0)
        left -= int(added.sum())
    copies = mult - 1
    indices = np.repeat(np.arange(n, dtype=np.int64), copies)
    jitter = rng.uniform(-jitter_ratio, jitter_ratio, size=(indices.shape[0], 4))
    return CpiaPlan(
        indices=indices,
        jitter=jitter,
        copies=copies,
        targets=targets,
        counts_before=counts,
        counts_after=current,
        augmented=np.array(augmented, dtype=np.int64),
    )


def _water_fill(
    mult: IntArray, members: IntArray, tie_rank: IntArray, amount: float, cap: int
) -> IntArray:
    """Add up to ``amount`` units to ``mult[members]``, lowest first, none above ``cap``.

    Raises the lowest multiplicities to a common level ``L`` (the largest level whose
    cost fits), then gives the remaining units, one each, to the members at level ``L``
    in ``tie_rank`` order. Changes ``mult`` in place; returns the (N,) units added.
    """
    added = np.zeros_like(mult)
    if amount <= 0 or members.size == 0:
        return added
    m = mult[members]
    room = int(np.clip(cap - m, 0, None).sum())
    amount = min(int(amount), room)
    if amount == 0:
        return added

    def cost(level: int) -> int:
        return int(np.clip(np.minimum(level, cap) - m, 0, None).sum())

    level = int(m.min())
    while level < cap and cost(level + 1) <= amount:
        level += 1
    raised = np.maximum(m, min(level, cap))
    rest = amount - int((raised - m).sum())
    if rest > 0:
        at_level = np.flatnonzero(raised == level)  # all below cap, since rest <= room left
        at_level = at_level[np.argsort(tie_rank[members[at_level]], kind="stable")][:rest]
        raised[at_level] += 1
    added[members] = raised - m
    mult[members] = raised
    return added


def _pursuit_fill(
    y: BoolArray,
    mult: IntArray,
    members: IntArray,
    tie_rank: IntArray,
    amount: int,
    cap: int,
    cls: int,
    p_row: FloatArray,
) -> IntArray:
    """Add ``amount`` copies among ``members`` (instances of class ``cls``) so that the
    class's row ``r`` of the co-occurrence matrix stays proportional to ``p_row``, the
    original ``P(. | cls)``.

    Members are grouped by label set ("signature"). Each step copies one instance of the
    signature ``s`` that brings the row closest to the proportional one *after this
    copy*, ``w = (r[cls] + 1) * p_row``: it minimises ``||r + y_s - w||^2``, i.e.
    maximises ``2 y_s . (w - r) - |y_s|^2`` (a greedy matching pursuit along the path;
    aiming at the final row instead would spend the early copies on the largest label
    sets). Inside the signature the copy goes to the member with the lowest
    multiplicity (``tie_rank`` on ties), so copies spread over boxes like water-filling.
    Changes ``mult`` in place; returns the (N,) copies added.
    """
    added = np.zeros_like(mult)
    sig, group = np.unique(y[members], axis=0, return_inverse=True)  # (S, C), (n_i,)
    group = group.reshape(-1)
    sig_f = sig.astype(np.float64)  # (S, C)
    sig_norm = sig_f.sum(axis=1)  # |y_s|^2 for 0/1 vectors
    row = (mult[members, None] * y[members]).sum(axis=0).astype(np.float64)  # (C,)
    # Per signature, a heap of its members keyed (multiplicity, tie_rank): the next copy
    # of a signature goes to its least-copied box.
    heaps: list[list[tuple[int, int, int]]] = [[] for _ in range(sig.shape[0])]
    for k, g in zip(members.tolist(), group.tolist(), strict=True):
        if mult[k] < cap:
            heaps[g].append((int(mult[k]), int(tie_rank[k]), k))
    for h in heaps:
        heapq.heapify(h)
    for _ in range(amount):
        open_sig = np.array([bool(h) for h in heaps])
        if not open_sig.any():
            break
        wanted = (row[cls] + 1.0) * p_row  # (C,) the proportional row after one more copy
        score = 2.0 * (sig_f @ (wanted - row)) - sig_norm  # (S,)
        score[~open_sig] = -np.inf
        s = int(np.argmax(score))
        m, rank, n = heapq.heappop(heaps[s])
        mult[n] += 1
        added[n] += 1
        row += sig_f[s]
        if m + 1 < cap:
            heapq.heappush(heaps[s], (m + 1, rank, n))
    return added


def apply_cpia(
    labels: npt.ArrayLike, boxes: npt.ArrayLike, plan: CpiaPlan
) -> tuple[BoolArray, npt.NDArray[np.float32], IntArray]:
    """Append the planned copies: returns ``(labels' (N+D, C), boxes' (N+D, 4), source (N+D,))``.

    ``boxes``: (N, 4) normalised xyxy; the copies are jittered with ``plan.jitter`` and
    clipped to ``[0, 1]``. ``source[k]`` is the original instance row ``k`` came from
    (``source[:N] = arange(N)``), so a loader can fetch the right clip for a copy.
    """
    from training.augment import apply_box_jitter

    y = _as_bool(labels)
    b = np.asarray(boxes, dtype=np.float32)
    if b.shape != (y.shape[0], 4):
        raise ValueError(f"apply_cpia: boxes {b.shape} do not match labels {y.shape}")
    copies = apply_box_jitter(b[plan.indices], plan.jitter, width=1.0, height=1.0)
    source = np.concatenate([np.arange(y.shape[0], dtype=np.int64), plan.indices])
    return (
        np.concatenate([y, y[plan.indices]], axis=0),
        np.concatenate([b, copies.astype(np.float32)], axis=0),
        source,
    )


# --------------------------------------------------------------------------------------
# LS
# --------------------------------------------------------------------------------------


def _threshold_count(counts: IntArray, frequent_threshold: float) -> float:
    """A threshold below 1 is a share of all labels (``N = sum of counts``), else a count."""
    if frequent_threshold <= 0:
        raise ValueError(f"frequent_threshold must be > 0, got {frequent_threshold}")
    if frequent_threshold < 1:
        return frequent_threshold * float(counts.sum())
    return float(frequent_threshold)


def frequent_classes(counts: npt.ArrayLike, frequent_threshold: float) -> IntArray:
    """Columns whose count exceeds the threshold (a count, or a share of all labels if < 1).

    With AVA v2.2's training counts and 10,000 this is report B's list: ids 11, 12, 14, 17,
    59, 74, 79, 80 (sit, stand, walk, carry/hold, touch, listen to, talk to, watch a person).
    """
    cnt = np.asarray(counts, dtype=np.int64)
    return np.flatnonzero(cnt > _threshold_count(cnt, frequent_threshold)).astype(np.int64)


def ls_drop_probabilities(
    counts: npt.ArrayLike, *, frequent_threshold: float, max_drop: float = LS_MAX_DROP
) -> FloatArray:
    """(C,) probability that LS drops one label of each class.

    Report B prints ``Prob_i = T - 1/P_i`` (``T = 0.3``, ``P_i = C_i / N``), which is
    negative for every class. Our reading::

        Prob_i = T * (1 - P_thr / P_i) = T * (1 - thr / C_i)   for C_i > thr, else 0

    with ``P_thr = thr / N`` the threshold's share: the printed ``T - 1/P_i`` with the
    share measured in units of the threshold and the ``T`` factored out. It is 0 at the
    threshold (no jump: a class just above it loses almost nothing), grows with the
    class's share, and stays below ``T`` (reached only as ``C_i -> inf``). The expected
    count after LS, ``C_i (1 - T) + T thr``, still increases with ``C_i``, so LS never
    reorders classes: it compresses the head of the distribution towards the threshold.
    """
    cnt = np.asarray(counts, dtype=np.float64)
    if not 0 <= max_drop < 1:
        raise ValueError(f"max_drop must be in [0, 1), got {max_drop}")
    thr = _threshold_count(cnt.astype(np.int64), frequent_threshold)
    with np.errstate(divide="ignore"):
        prob = max_drop * (1.0 - thr / cnt)  # report B's LS, as read above
    return np.where(cnt > thr, prob, 0.0)


def subsample_labels(
    labels: npt.ArrayLike,
    drop_prob: npt.ArrayLike,
    *,
    keep_last_label: bool = True,
    seed: int = 0,
) -> tuple[BoolArray, BoolArray]:
    """Drop each label of class ``i`` independently with probability ``drop_prob[i]``.

    ``labels``: (N, C) multi-hot; ``drop_prob``: (C,). Returns ``(kept (N, C), dropped
    (N, C))``. Labels are dropped, never boxes: every row stays, with its other labels.

    ``keep_last_label`` (default on): a box never loses its *last* label -- if every label
    of a box is drawn, the one with the lowest drop probability (the rarest; lowest
    column on ties) stays. A data pipeline that rebuilds boxes from label rows (an AVA
    CSV has one row per label) would otherwise lose the box itself, and a box whose only
    label was a non-pose class would become a pure negative. The cost: a class that is
    often a box's only label is dropped less often than ``drop_prob`` (roughly
    ``drop_prob[i]`` times the share of its boxes that keep another label). Turn it off
    when the pipeline keeps label-less boxes (`balance`'s output keeps every row); then
    the realised rate is exactly ``drop_prob``, and such a box still trains correctly --
    as a negative for the non-pose classes it never had, and without a pose term.

    Pose labels may be dropped (sit, stand and walk are in report B's frequent list):
    `training.losses.pose_loss` skips the pose term of a box without a pose label, so a
    dropped pose label means "no pose gradient from this box", not "this person has no
    pose". A dropped non-pose label does become a negative, as in report B.
    """
    y = _as_bool(labels)  # (N, C)
    p = np.asarray(drop_prob, dtype=np.float64)
    if p.shape != (y.shape[1],):
        raise ValueError(f"drop_prob has shape {p.shape}, expected ({y.shape[1]},)")
    if np.any((p < 0) | (p >= 1)):
        raise ValueError("drop_prob values must be in [0, 1)")
    rng = np.random.default_rng(seed)
    draw = rng.random(y.shape) < p[None, :]  # (N, C)
    dropped = y & draw
    kept = y & ~dropped
    emptied = np.flatnonzero(y.any(axis=1) & ~kept.any(axis=1))
    if keep_last_label and emptied.size:
        # Among the box's own labels, keep the one LS wanted to drop least.
        masked = np.where(y[emptied], p[None, :], np.inf)  # (E, C)
        keep_col = np.argmin(masked, axis=1)
        kept[emptied, keep_col] = True
        dropped[emptied, keep_col] = False
    return kept, dropped


# --------------------------------------------------------------------------------------
# Both, in report B's order
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BalanceResult:
    """CP-IA then LS. ``labels`` (N+D, C), ``boxes`` (N+D, 4) normalised xyxy, ``source``
    (N+D,) original row of each output row; ``plan`` is CP-IA's; ``drop_prob`` (C,) the LS
    probabilities computed on the post-CP-IA counts; ``dropped`` (N+D, C) what LS removed."""

    labels: BoolArray
    boxes: npt.NDArray[np.float32]
    source: IntArray
    plan: CpiaPlan
    drop_prob: FloatArray
    dropped: BoolArray

    @property
    def counts(self) -> IntArray:
        return self.labels.sum(axis=0).astype(np.int64)


def balance(
    labels: npt.ArrayLike,
    boxes: npt.ArrayLike,
    *,
    frequent_threshold: float,
    cpia_target: int | None = None,
    max_copies: int = 10,
    budget: int | None = None,
    jitter_ratio: float = 0.05,
    max_drop: float = LS_MAX_DROP,
    keep_last_label: bool = True,
    seed: int = 0,
) -> BalanceResult:
    """Report B's balancing: CP-IA first, then LS on the augmented set (DESIGN.md).

    LS's frequencies are those *after* CP-IA: copies of rare boxes carry frequent labels
    too (a rare "row boat" box is also "sit"), and LS is what keeps those from inflating
    the head classes further. ``cpia_target`` defaults to the frequent-class threshold
    (as a count): rare classes are lifted towards the level where LS starts trimming.
    A threshold below 1 is a share of the *input's* labels, converted to a count once.
    """
    y = _as_bool(labels)
    counts = y.sum(axis=0).astype(np.int64)
    # A share threshold is turned into a count once, on the input: CP-IA grows N, and LS
    # must trim at the same level CP-IA lifted to.
    thr = max(1.0, _threshold_count(counts, frequent_threshold))
    target = cpia_target if cpia_target is not None else max(1, int(round(thr)))
    plan = plan_cpia(
        y,
        target=target,
        max_copies=max_copies,
        budget=budget,
        jitter_ratio=jitter_ratio,
        seed=seed,
    )
    aug_labels, aug_boxes, source = apply_cpia(y, boxes, plan)
    prob = ls_drop_probabilities(aug_labels.sum(axis=0), frequent_threshold=thr, max_drop=max_drop)
    # A different stream from CP-IA's, derived from the same seed.
    kept, dropped = subsample_labels(
        aug_labels, prob, keep_last_label=keep_last_label, seed=seed + 1
    )
    return BalanceResult(
        labels=kept, boxes=aug_boxes, source=source, plan=plan, drop_prob=prob, dropped=dropped
    )

"""CP-IA, LS and the co-occurrence matrix on small label matrices (report B's balancing)."""

from __future__ import annotations

import numpy as np
import pytest

from training.balancing import (
    apply_cpia,
    balance,
    conditional_cooccurrence,
    cooccurrence_matrix,
    frequent_classes,
    ls_drop_probabilities,
    multi_hot,
    plan_cpia,
    subsample_labels,
)

# Tolerance on P(j | i) for the augmented rows i and co-labels j at least as frequent as i.
RATIO_TOL = 0.01


def ava_like_labels(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A long-tailed, AVA-shaped (N, 10) label matrix.

    Columns: 0 stand, 1 sit, 2 crawl (poses: exactly one each), 3 talk, 4 watch, 5 carry
    (frequent, independent-ish), 6 row boat (rare, nearly always sitting), 7 hand shake
    (rare, with stand + talk), 8 smoke (rare), 9 answer phone (rare, with talk).
    """
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 10), dtype=bool)
    pose = rng.choice(3, size=n, p=[0.68, 0.30, 0.02])
    y[np.arange(n), pose] = True
    y[:, 3] = rng.random(n) < 0.40
    y[:, 4] = rng.random(n) < 0.35
    y[:, 5] = rng.random(n) < 0.20
    y[:, 6] = (pose == 1) & (rng.random(n) < 0.04)
    y[:, 7] = (pose == 0) & y[:, 3] & (rng.random(n) < 0.03)
    y[:, 8] = rng.random(n) < 0.015
    y[:, 9] = y[:, 3] & (rng.random(n) < 0.05)
    return y


def test_cooccurrence_matrix_by_hand() -> None:
    sets = [{0, 1}, {0}, {1, 2}, set()]
    m = cooccurrence_matrix(sets, num_classes=3)
    expected = np.array([[2, 1, 0], [1, 2, 1], [0, 1, 1]])
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(cooccurrence_matrix(multi_hot(sets, 3).astype(float)), expected)
    p = conditional_cooccurrence(m)
    assert p[0, 1] == pytest.approx(0.5) and p[2, 1] == pytest.approx(1.0)


def test_multi_hot_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        multi_hot([{3}], 3)


def _ratio_errors(y: np.ndarray, y2: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """(max error over co-labels at least as frequent, max error over all co-labels)."""
    m0, m1 = cooccurrence_matrix(y), cooccurrence_matrix(y2)
    err = np.abs(conditional_cooccurrence(m1) - conditional_cooccurrence(m0))[rows]  # (R, C)
    c0 = np.diag(m0)
    as_frequent = c0[None, :] >= c0[rows][:, None]
    return float(err[as_frequent].max()), float(err.max())


def test_cpia_balances_diagonal_and_keeps_cooccurrence_ratios() -> None:
    y = ava_like_labels()
    counts = y.sum(axis=0)
    target = 800
    plan = plan_cpia(y, target=target, max_copies=40, seed=0)
    y2 = np.concatenate([y, y[plan.indices]])
    after = y2.sum(axis=0)
    np.testing.assert_array_equal(after, plan.counts_after)
    # every class below the target reaches it (the cap of 40 copies is not binding here)
    rare = np.flatnonzero(counts < target)
    assert rare.size >= 5
    assert np.all(after[rare] >= target)
    ratio_before = counts.max() / counts.min()
    ratio_after = after.max() / after.min()
    assert ratio_before > 30
    assert ratio_after <= after.max() / target + 1e-9  # shrinks to (largest count) / target
    assert set(plan.augmented.tolist()) <= set(rare.tolist())
    err_frequent, err_all = _ratio_errors(y, y2, plan.augmented)
    assert err_frequent <= RATIO_TOL, err_frequent
    # the rarest class is levelled first: its row is kept to integer rounding
    rarest = int(np.argmin(counts))
    err_rarest, _ = _ratio_errors(y, y2, np.array([rarest]))
    assert err_rarest <= 1.0 / target + 1e-9
    print(
        f"CP-IA: diag max/min {ratio_before:.1f} -> {ratio_after:.2f}; max |dP(j|i)| "
        f"{err_frequent:.4f} (c_j >= c_i), {err_all:.4f} (all j); copies {plan.indices.size}"
    )


def test_cpia_pursuit_beats_water_filling() -> None:
    y = ava_like_labels(seed=1)
    errs = {}
    for method in ("pursuit", "water"):
        plan = plan_cpia(y, target=800, max_copies=40, seed=0, method=method)
        rows = plan.augmented
        errs[method] = _ratio_errors(y, np.concatenate([y, y[plan.indices]]), rows)[0]
    print(f"CP-IA max |dP(j|i)|: pursuit {errs['pursuit']:.4f}, water {errs['water']:.4f}")
    assert errs["pursuit"] <= errs["water"] + 1e-12


def test_cpia_copies_carry_all_labels_and_respect_limits() -> None:
    y = ava_like_labels(n=1500)
    boxes = np.tile(np.array([[0.2, 0.2, 0.6, 0.9]], dtype=np.float32), (y.shape[0], 1))
    plan = plan_cpia(y, target=500, max_copies=3, budget=700, jitter_ratio=0.1, seed=3)
    assert plan.copies.max() <= 3
    assert plan.indices.size <= 700
    labels2, boxes2, source = apply_cpia(y, boxes, plan)
    n = y.shape[0]
    np.testing.assert_array_equal(source[:n], np.arange(n))
    np.testing.assert_array_equal(labels2[n:], y[plan.indices])  # all co-occurring labels
    # jittered by at most 10% of the box size, and still inside the image
    w, h = 0.4, 0.7
    delta = np.abs(boxes2[n:] - boxes[plan.indices])
    assert np.all(delta[:, [0, 2]] <= 0.1 * w + 1e-6) and np.all(delta[:, [1, 3]] <= 0.1 * h + 1e-6)
    assert delta.max() > 0.01
    again = plan_cpia(y, target=500, max_copies=3, budget=700, jitter_ratio=0.1, seed=3)
    np.testing.assert_array_equal(plan.indices, again.indices)


def test_cpia_leaves_frequent_and_absent_classes_alone() -> None:
    y = ava_like_labels(n=1000)
    y[:, 8] = False  # a class with no instance cannot be augmented
    plan = plan_cpia(y, target=300, seed=0)
    assert plan.targets[8] == 0
    copied = y[plan.indices]
    # every copy contains at least one class that was below the target
    below = y.sum(axis=0) < 300
    assert np.all((copied & below[None, :]).any(axis=1))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"target": 0}, "target"),
        ({"target": 10, "max_copies": -1}, "max_copies"),
        ({"target": 10, "budget": -2}, "budget"),
        ({"target": 10, "method": "magic"}, "method"),
    ],
)
def test_cpia_rejects_bad_settings(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        plan_cpia(np.eye(3, dtype=bool), **kwargs)  # type: ignore[arg-type]


def test_ls_probabilities_follow_the_documented_formula() -> None:
    counts = np.array([5_000, 10_000, 20_000, 40_000, 160_000])
    p = ls_drop_probabilities(counts, frequent_threshold=10_000)
    # Prob_i = T * (1 - thr / C_i) above the threshold, T = 0.3; 0 at and below it
    np.testing.assert_allclose(p, [0.0, 0.0, 0.15, 0.225, 0.28125])
    assert np.all(p < 0.3)
    # a threshold below 1 is a share of all labels: 0.05 * 235,000 = 11,750
    p_share = ls_drop_probabilities(counts, frequent_threshold=0.05)
    np.testing.assert_allclose(p_share[2:], 0.3 * (1 - 11_750 / counts[2:]))
    # LS never reorders classes: the expected count after it still grows with C_i
    expected_after = counts * (1 - p)
    assert np.all(np.diff(expected_after) > 0)
    np.testing.assert_array_equal(frequent_classes(counts, 10_000), [2, 3, 4])


def test_ls_empirical_drop_rates_match_formula() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    y = np.zeros((n, 5), dtype=bool)
    y[:, 0] = True  # rare "anchor" column on every box: no box can be emptied
    y[:, 1] = rng.random(n) < 0.9
    y[:, 2] = rng.random(n) < 0.6
    y[:, 3] = rng.random(n) < 0.3
    y[:, 4] = rng.random(n) < 0.02
    counts = y.sum(axis=0)
    counts[0] = 100  # pretend column 0 is rare (its probability is what we pass in)
    p = ls_drop_probabilities(counts, frequent_threshold=3_000)
    assert p[0] == 0 and p[4] == 0 and np.all(p[1:4] > 0)
    kept, dropped = subsample_labels(y, p, seed=11)
    for c in range(5):
        rate = dropped[:, c].sum() / y[:, c].sum()
        sigma = np.sqrt(p[c] * (1 - p[c]) / y[:, c].sum())
        print(f"LS class {c}: p={p[c]:.4f} measured={rate:.4f} (4 sigma = {4 * sigma:.4f})")
        assert abs(rate - p[c]) <= 4 * sigma + 1e-12
    np.testing.assert_array_equal(kept | dropped, y)
    assert not np.any(kept & dropped)


def test_ls_never_touches_rare_classes_and_never_empties_a_box() -> None:
    y = ava_like_labels(n=3000)
    counts = y.sum(axis=0)
    p = ls_drop_probabilities(counts, frequent_threshold=500)
    rare = counts <= 500
    kept, dropped = subsample_labels(y, p, seed=0)
    assert not dropped[:, rare].any()
    np.testing.assert_array_equal(kept[:, rare], y[:, rare])
    assert np.all(kept.any(axis=1) == y.any(axis=1))
    # a box whose only label is frequent keeps it, even with a high drop probability
    single = np.zeros((50, 2), dtype=bool)
    single[:, 0] = True
    kept1, dropped1 = subsample_labels(single, np.array([0.9, 0.0]), seed=0)
    assert kept1[:, 0].all() and not dropped1.any()


def test_balance_runs_cpia_then_ls() -> None:
    y = ava_like_labels(n=3000)
    boxes = np.tile(np.array([[0.1, 0.1, 0.5, 0.8]], dtype=np.float32), (y.shape[0], 1))
    result = balance(y, boxes, frequent_threshold=600, max_copies=10, seed=0)
    shared = balance(y, boxes, frequent_threshold=600 / y.sum(), max_copies=10, seed=0)
    np.testing.assert_allclose(shared.drop_prob, result.drop_prob)  # share == count here
    after_cpia = np.concatenate([y, y[result.plan.indices]])
    # LS probabilities come from the counts after CP-IA, not before
    np.testing.assert_allclose(
        result.drop_prob, ls_drop_probabilities(after_cpia.sum(axis=0), frequent_threshold=600)
    )
    before_p = ls_drop_probabilities(y.sum(axis=0), frequent_threshold=600)
    assert not np.allclose(result.drop_prob, before_p)
    np.testing.assert_array_equal(result.labels | result.dropped, after_cpia)
    assert result.labels.shape[0] == result.boxes.shape[0] == result.source.shape[0]
    c0, c1 = y.sum(axis=0), result.counts
    assert c1.max() / c1.min() < c0.max() / c0.min()


def test_ls_without_last_label_protection_follows_formula_exactly() -> None:
    # every box has a single frequent label: protection would stop all drops
    y = np.zeros((20_000, 2), dtype=bool)
    y[:10_000, 0] = True
    y[10_000:, 1] = True
    p = np.array([0.2, 0.0])
    protected, _ = subsample_labels(y, p, seed=0)
    assert protected[:, 0].sum() == 10_000
    kept, dropped = subsample_labels(y, p, keep_last_label=False, seed=0)
    rate = dropped[:, 0].sum() / 10_000
    assert abs(rate - 0.2) <= 4 * np.sqrt(0.2 * 0.8 / 10_000)
    assert not dropped[:, 1].any()

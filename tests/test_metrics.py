"""Metrics against sklearn and against brute force over thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from mia_bench.metrics import (
    accuracy_at_threshold,
    auc,
    best_balanced_accuracy,
    best_threshold,
    bootstrap_counts,
    bootstrap_roc_metrics,
    bootstrap_threshold_accuracy,
    clopper_pearson,
    epsilon_lower_bound,
    epsilon_threshold,
    fpr_resolution,
    log_fpr_grid,
    mean_roc,
    membership_advantage,
    percentile_ci,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)


def _data(seed: int, n: int = 400, ties: bool = True, shift: float = 0.7):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.45
    s = rng.normal(size=n) + shift * y
    if ties:
        s = np.round(s, 1)  # many tied scores, mixed members and non-members
    return s * 37.0 - 5.0, y  # far outside [0, 1]: no normalisation may be applied


def _brute(s, y):
    """(tpr, fpr, accuracy, balanced accuracy) of ``s >= t`` for every candidate threshold t."""
    cands = np.r_[np.inf, np.unique(s)]
    pred = s[None, :] >= cands[:, None]
    tpr = (pred & y).sum(1) / y.sum()
    fpr = (pred & ~y).sum(1) / (~y).sum()
    acc = (pred == y).mean(1)
    return cands, tpr, fpr, acc, 0.5 * (tpr + 1 - fpr)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_roc_curve_matches_sklearn(seed, ties):
    s, y = _data(seed, ties=ties)
    for drop in (False, True):
        fpr, tpr, thr = roc_curve(s, y, drop_intermediate=drop)
        sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-15)
        np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(thr, sk_thr)
    assert auc(*roc_curve(s, y)[:2]) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_curve_sample_weight_matches_sklearn():
    s, y = _data(5)
    w = np.random.default_rng(0).integers(0, 4, size=s.size).astype(float)
    fpr, tpr, thr = roc_curve(s, y, sample_weight=w)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
    np.testing.assert_array_equal(thr, sk_thr)


def test_roc_rejects_nan_and_single_class():
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_curve(np.array([0.1, 0.2]), np.array([True, True]))


def test_infinite_scores_tie_correctly():
    s = np.array([-np.inf, -np.inf, 0.0, np.inf, np.inf, 1.0])
    y = np.array([True, False, False, True, True, False])
    fpr, tpr, thr = roc_curve(s, y)
    np.testing.assert_array_equal(thr, [np.inf, np.inf, 1.0, 0.0, -np.inf])
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, np.array([-9, -9, 0, 9, 9, 1.0])))


def test_no_normalisation_rank_invariance():
    s, y = _data(3, ties=False)
    a = roc_auc(s, y)
    assert roc_auc(np.tanh(s / 500.0), y) == pytest.approx(a, abs=1e-12)  # monotone maps keep the AUC
    assert roc_auc(s * 1e6 + 1e8, y) == pytest.approx(a, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_tpr_at_fpr_strictly_below(seed):
    s, y = _data(seed, n=3000, ties=True)
    fpr, tpr, _ = roc_curve(s, y)
    for max_fpr in (0.001, 0.01, 0.1, 0.5):
        sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
        assert tpr_at_fpr(fpr, tpr, max_fpr) == sk_tpr[np.where(sk_fpr < max_fpr)[0][-1]]
    # a point with FPR exactly at the bound is excluded
    scores = np.r_[np.arange(10, 0, -1.0), np.arange(-1, -100, -1.0), [11.0, 12.0]]
    labels = np.r_[np.zeros(10, bool), np.zeros(99, bool), [True, True]]
    labels[[1, 3]] = True  # scores 9 and 7 are members
    f, t, _ = roc_curve(scores, labels)
    # descending: 12(m) 11(m) 10(n) 9(m) 8(n) 7(m) ...: FPR 1/107 is first reached at score 10, TPR still 2/4
    n_neg = (~labels).sum()
    assert n_neg == 107
    assert tpr_at_fpr(f, t, 1 / n_neg) == pytest.approx(2 / 4)          # strictly below 1/107: only FPR 0
    assert tpr_at_fpr(f, t, 1 / n_neg + 1e-12) == pytest.approx(3 / 4)  # FPR 1/107 now counts, TPR 3/4
    # batched form agrees with the literal form
    batch_f = np.stack([f, f])
    batch_t = np.stack([t, t])
    np.testing.assert_allclose(tpr_at_fpr(batch_f, batch_t, 0.02), tpr_at_fpr(f, t, 0.02))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_advantage_balanced_accuracy_and_threshold_against_brute_force(seed):
    s, y = _data(seed, n=300)
    cands, tpr, fpr, acc, bal = _brute(s, y)
    f, t, _ = roc_curve(s, y)
    assert membership_advantage(f, t) == pytest.approx((tpr - fpr).max(), abs=1e-12)
    assert best_balanced_accuracy(f, t) == pytest.approx(bal.max(), abs=1e-12)
    assert best_balanced_accuracy(f, t) == pytest.approx(0.5 + 0.5 * membership_advantage(f, t), abs=1e-12)
    # best_threshold: maximal accuracy, ties to the highest threshold (cands are inf then ascending values)
    order = np.r_[0, np.arange(len(cands) - 1, 0, -1)]  # inf, then descending
    best = cands[order][np.argmax(acc[order])]
    thr = best_threshold(s, y)
    assert thr == best
    assert accuracy_at_threshold(s, y, thr) == pytest.approx(acc.max(), abs=1e-12)
    thr_b = best_threshold(s, y, balanced=True)
    assert thr_b == cands[order][np.argmax(bal[order])]
    assert accuracy_at_threshold(s, y, thr_b, balanced=True) == pytest.approx(bal.max(), abs=1e-12)


def test_accuracy_at_threshold_rule():
    s = np.array([0.1, 0.5, 0.5, 0.9])
    y = np.array([False, True, False, True])
    assert accuracy_at_threshold(s, y, 0.5) == pytest.approx(0.75)  # >= threshold => member
    assert accuracy_at_threshold(s, y, np.inf) == pytest.approx(0.5)
    assert best_threshold(np.array([3.0, 1.0]), np.array([True, False])) == 3.0


def test_bootstrap_equals_recomputation_on_resamples():
    s, y = _data(7, n=250)
    shadow_s, shadow_y = _data(8, n=250)
    counts = bootstrap_counts(s.size, 25, seed=3)
    assert counts.shape == (25, s.size) and (counts.sum(1) == s.size).all()
    np.testing.assert_array_equal(counts, bootstrap_counts(s.size, 25, seed=3))
    np.testing.assert_array_equal(counts[:10], bootstrap_counts(s.size, 10, seed=3))
    boot = bootstrap_roc_metrics(s, y, counts)
    acc = bootstrap_threshold_accuracy(shadow_s, shadow_y, s, y, counts)
    for b in range(counts.shape[0]):
        idx = np.repeat(np.arange(s.size), counts[b])  # the resample, as an index list
        f, t, _ = roc_curve(s[idx], y[idx])
        assert boot["auc"][b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
        assert boot["tpr_at_fpr_0.01"][b] == tpr_at_fpr(f, t, 0.01)
        assert boot["tpr_at_fpr_0.001"][b] == tpr_at_fpr(f, t, 0.001)
        assert boot["advantage"][b] == pytest.approx(membership_advantage(f, t), abs=1e-12)
        assert boot["balanced_accuracy"][b] == pytest.approx(best_balanced_accuracy(f, t), abs=1e-12)
        thr = best_threshold(shadow_s[idx], shadow_y[idx])
        assert acc[b] == pytest.approx(accuracy_at_threshold(s[idx], y[idx], thr), abs=1e-12)


def test_percentile_ci_and_mean_roc():
    v = np.arange(101, dtype=float)
    assert percentile_ci(v, 0.9) == pytest.approx((5.0, 95.0))
    grid = log_fpr_grid(11, 1e-5)
    assert grid[0] == pytest.approx(1e-5) and grid[-1] == 1.0
    diag = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    step = (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]))  # perfect attack: vertical then flat
    g, m = mean_roc([diag, step], grid)
    np.testing.assert_allclose(m, (grid + 1.0) / 2.0)


# ------------------------------------------------------------------------------------------- empirical epsilon
def test_clopper_pearson_and_epsilon_lower_bound_by_hand():
    from scipy.stats import beta

    lo, hi = clopper_pearson(np.array([0, 7, 10]), 10, 0.9)
    assert lo[0] == 0 and hi[2] == 1
    assert lo[1] == pytest.approx(beta.ppf(0.05, 7, 4)) and hi[1] == pytest.approx(beta.ppf(0.95, 8, 3))
    tpr_lo, fpr_hi = beta.ppf(0.025, 900, 101), beta.ppf(0.975, 11, 990)
    want = max(np.log((tpr_lo - 1e-5) / fpr_hi), np.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo)))
    assert epsilon_lower_bound(900, 1000, 10, 1000, 1e-5) == pytest.approx(want)
    assert epsilon_lower_bound(50, 100, 50, 100, 1e-5) == 0.0          # chance: no evidence against DP
    assert epsilon_lower_bound(0, 100, 0, 100, 1e-5) == 0.0            # nobody flagged
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound(1, 2, 1, 2, 1.5)


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_epsilon_lower_bound_of_randomised_response_approaches_but_never_exceeds_its_epsilon(eps):
    """Randomised response is exactly eps-DP: a member answers 1 with probability e^eps / (1 + e^eps), a
    non-member with 1 / (1 + e^eps). The bound at the 1-threshold approaches eps with many records, and exceeds
    it in at most about 5% of draws (here: never, Clopper-Pearson is conservative)."""
    p = np.exp(eps) / (1 + np.exp(eps))
    rng = np.random.default_rng(int(eps * 10))
    bounds = []
    for _ in range(200):
        y = np.arange(4000) < 2000
        s = np.where(y, rng.random(4000) < p, rng.random(4000) < 1 - p).astype(float)
        tau = epsilon_threshold(s, y, delta=0.0)
        assert tau == 1.0
        hit = s >= tau
        bounds.append(epsilon_lower_bound((hit & y).sum(), 2000, (hit & ~y).sum(), 2000, delta=0.0))
    bounds = np.array(bounds)
    assert (bounds > eps).mean() <= 0.05
    assert np.median(bounds) > 0.8 * eps


def test_epsilon_threshold_and_fpr_resolution():
    s = np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    y = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    tau = epsilon_threshold(s, y, delta=0.0, confidence=0.5)
    eps_at = {t: epsilon_lower_bound(((s >= t) & y).sum(), 5, ((s >= t) & ~y).sum(), 5, 0.0, 0.5)
              for t in np.r_[np.inf, s]}
    assert eps_at[tau] == max(eps_at.values()) and tau == 6.0
    assert fpr_resolution(y) == 1 / 5
    np.testing.assert_array_equal(fpr_resolution(np.stack([y, ~y, y | True])), [0.2, 0.2, np.nan])

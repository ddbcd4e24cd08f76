"""Membership-inference metrics as small pure numpy functions (in the manner of torchmetrics' functional API).

Conventions: ``scores`` are real numbers, **higher = more likely a member**, used as they are (no sigmoid or
any other normalisation: torchmetrics' binary ROC applies a sigmoid to scores outside [0, 1], per batch,
which changes the ranking of LiRA-style scores). ``labels`` are booleans (True = member). A record is
predicted a member when ``score >= threshold``.

The ROC is computed exactly as ``sklearn.metrics.roc_curve`` does (same points, same tie handling: tied
scores form one ROC step, a diagonal segment), vectorised with one stable sort. The full curve is kept
by default (``drop_intermediate=False``); sklearn's default drops collinear intermediate points, which
never changes the AUC and changes ``tpr_at_fpr`` only where equally spaced collinear points straddle the
FPR bound. LiRA's own plotting code used sklearn's default; the benchmark reports the full curve.

The bootstrap helpers resample *records* with replacement. A resample is represented by multiplicities
``counts[b, i]`` (how often record i was drawn in replicate b), which turns every curve of a resampled data
set into a weighted curve on the original sort order: one sort per score vector, then cumulative sums for
all replicates at once. The results are identical to recomputing each metric on ``scores[idx]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import beta

__all__ = [
    "roc_curve", "auc", "roc_auc", "tpr_at_fpr", "membership_advantage", "best_balanced_accuracy",
    "best_threshold", "accuracy_at_threshold", "log_fpr_grid", "mean_roc", "bootstrap_counts",
    "bootstrap_roc_metrics", "bootstrap_threshold_accuracy", "percentile_ci", "jackknife_counts", "bca_interval",
    "fpr_resolution", "clopper_pearson", "epsilon_lower_bound", "epsilon_threshold", "default_delta",
]


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _as_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D of the same length; got {s.shape} and {y.shape}")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be boolean or 0/1")
        y = y.astype(bool)
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN values")
    return s, y


def _sort_groups(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending order (as sklearn: reversed stable argsort) and the last sorted index of each tied group."""
    order = np.argsort(s, kind="mergesort")[::-1]
    ss = s[order]
    ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), ss.size - 1]  # (np.diff would split tied infinities)
    return order, ends


def roc_curve(scores, labels, *, sample_weight=None, drop_intermediate: bool = False):
    """ROC curve ``(fpr, tpr, thresholds)`` as ``sklearn.metrics.roc_curve``.

    ``thresholds`` decrease; ``thresholds[0] = inf`` (nobody predicted a member), ``fpr[0] = tpr[0] = 0``.
    Point j is the rate of ``score >= thresholds[j]``. Raises ValueError when only one class is present.
    """
    s, y = _as_scores_labels(scores, labels)
    if sample_weight is not None:  # as sklearn: records of weight 0 do not create ROC points
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        keep = sample_weight != 0
        s, y, sample_weight = s[keep], y[keep], sample_weight[keep]
    order, ends = _sort_groups(s)
    yo = y[order]
    if sample_weight is None:
        tps = np.cumsum(yo)[ends].astype(np.float64)
        fps = (ends + 1) - tps
    else:
        w = sample_weight[order]
        tps = np.cumsum(w * yo)[ends]
        fps = np.cumsum(w * ~yo)[ends]
    thresholds = s[order][ends]
    if drop_intermediate and tps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    if tps[-1] <= 0 or fps[-1] <= 0:
        raise ValueError(f"ROC needs both members and non-members; got {tps[-1]:g} members, "
                         f"{fps[-1]:g} non-members")
    return fps / fps[-1], tps / tps[-1], thresholds


def auc(fpr, tpr) -> np.ndarray | float:
    """Area under a curve by the trapezoidal rule (as ``sklearn.metrics.auc``); batched over leading axes."""
    out = _trapezoid(np.asarray(tpr, dtype=np.float64), np.asarray(fpr, dtype=np.float64), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def roc_auc(scores, labels) -> float:
    """ROC AUC of scores against labels (equals ``sklearn.metrics.roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return auc(fpr, tpr)


def tpr_at_fpr(fpr, tpr, max_fpr: float) -> np.ndarray | float:
    """TPR at the largest FPR *strictly below* ``max_fpr``, as LiRA reports it:
    ``tpr[np.where(fpr < max_fpr)[0][-1]]``. Batched over leading axes (curves must be ROC-ordered then)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.ndim == 1:
        below = np.flatnonzero(fpr < max_fpr)
        if below.size == 0:
            raise ValueError(f"no ROC point has FPR < {max_fpr} (the curve must start at FPR 0)")
        return float(tpr[below[-1]])
    idx = (fpr < max_fpr).sum(-1, keepdims=True) - 1  # fpr is non-decreasing along a ROC curve
    if (idx < 0).any():
        raise ValueError(f"no ROC point has FPR < {max_fpr} (the curve must start at FPR 0)")
    return np.take_along_axis(tpr, idx, -1)[..., 0]


def membership_advantage(fpr, tpr) -> np.ndarray | float:
    """Membership advantage ``max_threshold (TPR - FPR)`` (Yeom et al. 2018, maximised over thresholds)."""
    out = np.max(np.asarray(tpr, dtype=np.float64) - np.asarray(fpr, dtype=np.float64), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def best_balanced_accuracy(fpr, tpr) -> np.ndarray | float:
    """Best balanced accuracy over thresholds, ``max (TPR + 1 - FPR) / 2`` (= (1 + advantage) / 2)."""
    out = np.max((np.asarray(tpr, dtype=np.float64) + 1.0 - np.asarray(fpr, dtype=np.float64)) / 2.0, axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def _accuracy_curve(tps, fps, balanced: bool):
    """Accuracy of every ROC point from cumulative member/non-member counts (last column = totals)."""
    pos, neg = tps[..., -1:], fps[..., -1:]
    if balanced:
        return 0.5 * (tps / pos + (neg - fps) / neg)
    return (tps + neg - fps) / (pos + neg)


def best_threshold(scores, labels, *, balanced: bool = False) -> float:
    """Threshold maximising the accuracy of ``score >= threshold => member`` on (scores, labels).

    Candidates are the observed scores and ``+inf`` (predict nobody a member), as in Song & Mittal's
    ``_thre_setting``. ``balanced=True`` maximises ``(TPR + TNR) / 2`` instead (what Song & Mittal's code
    maximises). Ties between candidates go to the highest threshold.
    """
    s, y = _as_scores_labels(scores, labels)
    thresholds, tps, fps = _threshold_counts(s, y)
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("best_threshold needs both members and non-members")
    return float(thresholds[int(np.argmax(_accuracy_curve(tps, fps, balanced)))])


def _threshold_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate thresholds (``+inf``, then every distinct score, decreasing) and the members / non-members
    with ``score >= threshold`` at each: what threshold choosers maximise over (first maximum = highest
    threshold)."""
    order, ends = _sort_groups(s)
    tps = np.r_[0.0, np.cumsum(y[order])[ends]]
    fps = np.r_[0.0, (ends + 1) - tps[1:]]
    return np.r_[np.inf, s[order][ends]], tps, fps


def accuracy_at_threshold(scores, labels, threshold: float, *, balanced: bool = False) -> float:
    """Accuracy of the rule ``score >= threshold => member`` (balanced: mean of TPR and TNR)."""
    s, y = _as_scores_labels(scores, labels)
    pred = s >= threshold
    if balanced:
        return float(0.5 * (pred[y].mean() + (~pred[~y]).mean()))
    return float((pred == y).mean())


def log_fpr_grid(num: int = 201, low: float = 1e-5) -> np.ndarray:
    """Log-spaced FPR grid from ``low`` to 1 (LiRA's plots span 1e-5..1)."""
    return np.logspace(np.log10(low), 0.0, num)


def mean_roc(rocs: Iterable[tuple[np.ndarray, np.ndarray]], grid: np.ndarray | None = None):
    """Mean TPR over several ROC curves on a common FPR grid; returns ``(grid, mean_tpr)``.

    Each curve is linearly interpolated between its points (the randomised-classifier convex hull segment),
    taking the highest TPR at a repeated FPR (the top of a vertical step)."""
    grid = log_fpr_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    curves = []
    for fpr, tpr in rocs:
        fpr = np.asarray(fpr, dtype=np.float64)
        tpr = np.asarray(tpr, dtype=np.float64)
        last = np.r_[np.flatnonzero(np.diff(fpr) > 0), fpr.size - 1]
        curves.append(np.interp(grid, fpr[last], tpr[last]))
    if not curves:
        raise ValueError("mean_roc needs at least one curve")
    return grid, np.mean(curves, axis=0)


# ------------------------------------------------------------------------------------------- bootstrap
def bootstrap_counts(n: int, n_bootstrap: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Multiplicities ``counts[b, i]`` of record i in bootstrap replicate b (n draws with replacement).

    One call per evaluation, shared by every attack and target so that all of them see the same resamples.
    Replicate b draws ``rng.integers(0, n, n)`` in order, so replicate b does not depend on n_bootstrap."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    counts = np.empty((n_bootstrap, n), dtype=np.int32)
    for b in range(n_bootstrap):  # one vectorised draw per replicate (not per record)
        counts[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return counts


def _chunks(n_rows: int, n: int, budget: int = 2_000_000) -> Sequence[slice]:
    step = max(1, budget // max(n, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


class _Sorted:
    """One descending sort of a score vector, shared by every bootstrap chunk."""

    def __init__(self, s: np.ndarray, y: np.ndarray):
        self.order, self.ends = _sort_groups(s)
        self.yo = y[self.order]
        self.thresholds = np.r_[np.inf, s[self.order][self.ends]]

    def cumulative(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-replicate cumulative member / non-member counts at every ROC point, the zero point first.
        Integer sums (exact); multiplicities are < 2^31 / n for any realistic n."""
        w = counts[:, self.order]
        tps = np.zeros((w.shape[0], self.ends.size + 1), dtype=np.int64)
        fps = np.zeros_like(tps)
        tps[:, 1:] = np.cumsum(w * self.yo, axis=1, dtype=np.int64)[:, self.ends]
        fps[:, 1:] = np.cumsum(w, axis=1, dtype=np.int64)[:, self.ends] - tps[:, 1:]
        return tps, fps


def bootstrap_roc_metrics(scores, labels, counts: np.ndarray, max_fprs: Sequence[float] = (0.001, 0.01)):
    """ROC metrics of every bootstrap replicate: dict name -> ``[B]`` array.

    Names: ``auc``, ``tpr_at_fpr_<f>`` for f in max_fprs, ``advantage``, ``balanced_accuracy``. Equal to
    computing each metric on ``(scores[idx], labels[idx])`` for the replicate's resample ``idx``.
    """
    s, y = _as_scores_labels(scores, labels)
    names = ["auc", *[f"tpr_at_fpr_{f:g}" for f in max_fprs], "advantage", "balanced_accuracy"]
    out = {name: np.empty(counts.shape[0]) for name in names}
    srt = _Sorted(s, y)
    for sl in _chunks(counts.shape[0], s.size):
        tps, fps = srt.cumulative(counts[sl])
        with np.errstate(invalid="ignore", divide="ignore"):  # a replicate without members gives NaN
            tpr = tps / tps[:, -1:]
            fpr = fps / fps[:, -1:]
        out["auc"][sl] = auc(fpr, tpr)
        for f in max_fprs:
            out[f"tpr_at_fpr_{f:g}"][sl] = tpr_at_fpr(fpr, tpr, f)
        out["advantage"][sl] = membership_advantage(fpr, tpr)
        out["balanced_accuracy"][sl] = best_balanced_accuracy(fpr, tpr)
    return out


def bootstrap_threshold_accuracy(shadow_scores, shadow_labels, scores, labels, counts: np.ndarray,
                                 *, balanced: bool = False) -> np.ndarray:
    """Attack accuracy of every replicate: the threshold is re-chosen (``best_threshold``) on the resampled
    shadow-model scores and applied to the resampled target scores (same record resample for both)."""
    ss, sy = _as_scores_labels(shadow_scores, shadow_labels)
    ts, ty = _as_scores_labels(scores, labels)
    if ss.shape != ts.shape:
        raise ValueError(f"shadow and target scores must cover the same records; "
                         f"got {ss.shape} and {ts.shape}")
    out = np.empty(counts.shape[0])
    srt = _Sorted(ss, sy)
    for sl in _chunks(counts.shape[0], ss.size):
        c = counts[sl]
        tps, fps = srt.cumulative(c)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = _accuracy_curve(tps.astype(np.float64), fps.astype(np.float64), balanced)
        chosen = srt.thresholds[np.argmax(acc, axis=1)]  # first maximum = highest threshold, as above
        correct = (ts[None, :] >= chosen[:, None]) == ty[None, :]
        if balanced:
            pos = c @ ty
            neg = c @ ~ty
            out[sl] = 0.5 * ((c * (correct & ty)).sum(1) / pos + (c * (correct & ~ty)).sum(1) / neg)
        else:
            out[sl] = (c * correct).sum(1) / c.sum(1)
    return out


def percentile_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (linear interpolation of order statistics; NaN replicates ignored)."""
    v = np.asarray(values, dtype=np.float64)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    if v.size == 0 or np.isnan(v).all():
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanpercentile(v, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def jackknife_counts(n: int, groups: int = 100, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Multiplicities of a grouped (delete-a-group) jackknife: ``counts[g, i] = 0`` when record i is in group g,
    else 1. Records are dealt into ``min(groups, n)`` groups of near-equal size after a seeded shuffle.

    Why grouped: BCa's acceleration is the skewness of the statistic's influence values, and the third
    cumulant of a sum is additive, so the influence of a group of m records has the same skewness ratio as the
    record-level one (``sum U_g^3 / (sum U_g^2)^1.5`` has the same expectation): 100 groups estimate it at
    the cost of 100 weighted curves instead of N leave-one-out ones."""
    g = max(1, min(int(groups), int(n)))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    group = np.empty(n, dtype=np.int64)
    group[rng.permutation(n)] = np.arange(n) % g
    return (group[None, :] != np.arange(g)[:, None]).astype(np.int32)


def bca_interval(estimate: float, replicates, jackknife, confidence: float = 0.95) -> tuple[float, float]:
    """Bias-corrected and accelerated bootstrap interval (Efron 1987; DiCiccio & Efron 1996).

    ``replicates``: the statistic on the bootstrap resamples; ``jackknife``: on the jackknife samples (e.g.
    ``jackknife_counts``). The bias correction ``z0 = Phi^-1(share of replicates below the estimate)``, ties
    counted half as scipy does, recentres the percentiles where the bootstrap distribution leans to one side
    of the estimate (maxima over thresholds such as the advantage, TPR at a low FPR); the acceleration
    ``a = sum d^3 / (6 (sum d^2)^1.5)``, ``d = mean(jack) - jack``, corrects for a standard error that changes
    with the value. NaN replicates (resamples without members) are ignored; with no usable replicate, NaN."""
    v = np.asarray(replicates, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    if v.size == 0 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    share = (np.sum(v < estimate) + 0.5 * np.sum(v == estimate)) / v.size
    share = np.clip(share, 0.5 / v.size, 1.0 - 0.5 / v.size)  # a finite z0 when every replicate is on one side
    z0 = ndtri(share)
    jack = np.asarray(jackknife, dtype=np.float64)
    jack = jack[~np.isnan(jack)]
    d = jack.mean() - jack if jack.size else np.zeros(1)
    den = 6.0 * np.sum(d**2) ** 1.5
    a = float(np.sum(d**3) / den) if den > 0 else 0.0
    z = ndtri(np.array([(1 - confidence) / 2, (1 + confidence) / 2]))
    levels = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.percentile(v, 100 * levels)
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------- resolution, epsilon
def fpr_resolution(labels) -> np.ndarray | float:
    """The smallest non-zero FPR a ROC over these labels can show, ``1 / non-members`` (batched over rows).
    ``tpr_at_fpr(f)`` with ``f <= resolution`` is the TPR at zero false positives."""
    y = np.asarray(labels, dtype=bool)
    neg = (~y).sum(-1)
    out = np.where(neg > 0, 1.0 / np.maximum(neg, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def clopper_pearson(k, n, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial proportion k / n, vectorised; each side holds
    with probability ``(1 + confidence) / 2``."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return lo, hi


def default_delta(n: int) -> float:
    """``1 / N`` rounded down to a power of ten (N = 650 -> 1e-3, N = 1000 -> 1e-3, N = 25000 -> 1e-5): DP-SGD's
    default delta, and the delta of the empirical epsilon bound of a cell without DP."""
    if n < 1:
        raise ValueError(f"cannot set delta for a training set of {n} records")
    return 10.0 ** -len(str(n - 1)) if n > 1 else 0.1


def epsilon_lower_bound(tp, positives, fp, negatives, delta: float, confidence: float = 0.95) -> np.ndarray | float:
    """The epsilon an (epsilon, delta)-DP mechanism needs to allow a test with these counts, at ``confidence``.

    DP bounds every test: ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``. With the
    Clopper-Pearson lower bound on TPR and upper bound on FPR (each at ``(1 + confidence) / 2``, so both hold
    together with probability ``confidence``), ``eps >= max(log((TPR_lo - delta) / FPR_hi),
    log((1 - FPR_hi - delta) / (1 - TPR_lo)), 0)``: the computation of DP auditing (Jagielski et al. 2020,
    Nasr et al. 2021). Vectorised over the counts."""
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1); got {delta}")
    tpr_lo, _ = clopper_pearson(tp, positives, confidence)
    _, fpr_hi = clopper_pearson(fp, negatives, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        second = np.log(np.maximum(1.0 - fpr_hi - delta, 0.0) / (1.0 - tpr_lo))
    out = np.maximum(np.nan_to_num(np.maximum(first, second), nan=0.0, neginf=0.0, posinf=np.inf), 0.0)
    return float(out) if np.ndim(out) == 0 else out


def epsilon_threshold(scores, labels, delta: float, confidence: float = 0.95) -> float:
    """The threshold (an observed score, or +inf) whose ``score >= threshold`` test gives the largest
    ``epsilon_lower_bound`` on (scores, labels). Chosen on a shadow model and applied to the target, so that
    the bound on the target is not inflated by a threshold fitted to the target's own membership."""
    s, y = _as_scores_labels(scores, labels)
    thresholds, tps, fps = _threshold_counts(s, y)
    return float(thresholds[int(np.argmax(epsilon_lower_bound(tps, tps[-1], fps, fps[-1], delta, confidence)))])

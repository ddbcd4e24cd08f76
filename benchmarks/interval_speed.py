"""Interval speed: the batched bootstrap + grouped-jackknife BCa of one target's AUC against scipy's BCa
(``scipy.stats.bootstrap(method="BCa")``: a leave-one-out jackknife over every record plus the resamples, each a
separate AUC computation), side by side in one process. Usage: python benchmarks/interval_speed.py [N] [B]"""

from __future__ import annotations

import sys
import time

import numpy as np
import scipy.stats

from mia_bench.metrics import bca_interval, bootstrap_counts, bootstrap_roc_metrics, jackknife_counts, roc_auc


def ours(s: np.ndarray, y: np.ndarray, b: int) -> tuple[float, float]:
    boot = bootstrap_roc_metrics(s, y, bootstrap_counts(s.size, b, 0))["auc"]
    jack = bootstrap_roc_metrics(s, y, jackknife_counts(s.size, 100, 0))["auc"]
    return bca_interval(roc_auc(s, y), boot, jack)


def theirs(s: np.ndarray, y: np.ndarray, b: int) -> tuple[float, float]:
    def stat(scores, labels):
        return roc_auc(scores, labels) if labels.any() and not labels.all() else np.nan
    ci = scipy.stats.bootstrap((s, y), stat, paired=True, vectorized=False, method="BCa", n_resamples=b,
                               random_state=0).confidence_interval
    return ci.low, ci.high


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1300
    b = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    rng = np.random.default_rng(0)
    y = rng.permutation(n) < n // 2
    s = rng.normal(size=n) + 0.4 * y
    times = {}
    for name, fn in (("batched (mia_bench)", ours), ("scipy.stats.bootstrap", theirs)):
        t0 = time.perf_counter()
        lo, hi = fn(s, y, b)
        times[name] = time.perf_counter() - t0
        print(f"{name:24s} BCa AUC interval [{lo:.4f}, {hi:.4f}]  {times[name]:.3f} s")
    print(f"speed-up: {times['scipy.stats.bootstrap'] / times['batched (mia_bench)']:.0f}x (N={n}, B={b})")


if __name__ == "__main__":
    main()

"""Robust membership inference attack (RMIA, Zarifzadeh et al. 2024).

``Pr(x|theta)`` is the probability of the true label, averaged over the Q queries. ``Pr(x)`` averages it over
the reference models:

* online (``offline: false``): all reference models (IN and OUT for x);
* offline: only the reference models OUT for x, corrected by ``Pr(x) = ((1 + a) Pr_out(x) + (1 - a)) / 2``
  (``offline_a``; the paper tunes ``a`` per setting on a pair of reference models; 0.3 is the default of the
  privacy meter's ``get_out_ref_signals``; the paper's CIFAR-10 configs write ``p_IN = a p_OUT + b`` with
  a = 0.33, b = 0.66, the same formula with ``b = 1 - a``).

With ``r(x) = Pr(x|theta_t) / Pr(x)`` and ``LR(x, z) = r(x) / r(z)``, the score of x is the fraction of
population records z with ``LR(x, z) > gamma``. The z set is all N population records (``num_z`` draws a
seeded subset without replacement); ``Pr(z)`` uses the same online/offline estimate as ``Pr(x)``. The privacy
meter's RMIA paper configs (``research/2023_rmia``) use ``gamma = 2``; its current library code
(``run_rmia``) compares against 1. For a fixed z set the score is a non-decreasing function of ``r(x)``
whatever gamma is, so gamma changes the ROC only through ties: records whose ``r(x) / gamma`` lies beyond
the range of ``r(z)`` share the score 0 or 1, which coarsens the curve at the low-FPR end when gamma is large.

Computation is in log space (``log r = log Pr(x|t) - log Pr(x)``, each a log-mean-exp of log-probabilities, so
probabilities that underflow float64 stay exact), and the pairwise count is ``searchsorted`` on the sorted
``log r(z)``: O(N log N) instead of an N x N matrix. ``LR(x, z) > gamma`` is evaluated as
``log r(z) < log r(x) - log gamma``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from mia_bench.attacks.base import Attack
from mia_bench.signals import Signals


class RMIA(Attack):
    needs_reference = True

    def __init__(self, offline: bool = False, offline_a: float = 0.3, gamma: float = 2.0,
                 num_z: int | None = None, seed: int = 0, name: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= offline_a <= 1.0:
            raise ValueError(f"rmia: offline_a must lie in [0, 1]; got {offline_a}")
        if not gamma > 0:
            raise ValueError(f"rmia: gamma must be > 0; got {gamma}")
        if num_z is not None and int(num_z) < 1:
            raise ValueError(f"rmia: num_z must be a positive int or null (all records); got {num_z}")
        self.offline = bool(offline)
        self.offline_a = float(offline_a)
        self.gamma = float(gamma)
        self.num_z = None if num_z is None else int(num_z)
        self.seed = int(seed)
        self.name = name or ("rmia_offline" if self.offline else "rmia")

    def log_ratio(self, signals: Signals, target: int, ref: np.ndarray) -> np.ndarray:
        """``log r(x) = log Pr(x|theta_t) - log Pr(x)`` for every population record, ``[N]``."""
        lp = signals.true_log_prob                                     # [K, N, Q]
        q = lp.shape[2]
        log_p_target = logsumexp(lp[target], axis=1) - np.log(q)       # log mean_q p_y
        lp_ref = lp[ref]                                               # [R, N, Q]
        if not self.offline:
            log_p_x = logsumexp(lp_ref, axis=(0, 2)) - np.log(lp_ref.shape[0] * q)
            self.info = {}
            return log_p_target - log_p_x
        out = ~signals.masks[ref]                                      # [R, N]
        n_out = out.sum(0)
        with np.errstate(divide="ignore"):
            log_w = np.where(out[:, :, None], 0.0, -np.inf)            # select OUT models in log space
            log_p_out = logsumexp(lp_ref + log_w, axis=(0, 2)) - np.log(np.maximum(n_out, 1) * q)
        empty = n_out == 0
        if empty.any():  # no OUT model for the record: the population average of Pr_out (1 if none at all)
            fallback = logsumexp(log_p_out[~empty]) - np.log((~empty).sum()) if (~empty).any() else 0.0
            log_p_out[empty] = fallback
        self.info = {"n_fallback_out": int(empty.sum())}
        a = self.offline_a
        with np.errstate(divide="ignore"):
            log_p_x = np.logaddexp(np.log1p(a) + log_p_out, np.log(1.0 - a)) - np.log(2.0)
        return log_p_target - log_p_x

    def score(self, signals: Signals, target: int, reference: np.ndarray) -> np.ndarray:
        ref = self.check(signals, target, reference, min_reference=1)
        log_r = self.log_ratio(signals, target, ref)
        log_r_z = log_r
        if self.num_z is not None and self.num_z < log_r.size:
            idx = np.random.default_rng(self.seed).choice(log_r.size, size=self.num_z, replace=False)
            log_r_z = log_r[idx]
        sorted_z = np.sort(log_r_z)
        count = np.searchsorted(sorted_z, log_r - np.log(self.gamma), side="left")  # #{z: log r(z) < .}
        return count / sorted_z.size

"""Likelihood-ratio attack (LiRA, Carlini et al. 2022) on the logit-scaled confidence ``phi``, all Q queries.

For every record and query, Gaussians are fitted to ``phi`` of the reference models that trained on the record
(IN) and of those that did not (OUT); the target is never among them.

* online:  ``score = mean_q [log N(phi_t; mu_in, s_in) - log N(phi_t; mu_out, s_out)]``.
* offline: ``score = mean_q log Phi((phi_t - mu_out) / s_out)``, the paper's one-sided test (log of the OUT
  CDF, ``scipy.special.log_ndtr``). The reference code (``research/mi_lira_2021/plot.py``) scores
  offline with the two-sided ``-log N(phi_t; mu_out, s_out)`` instead; ``offline_statistic:
  neg_log_density`` reproduces that.
* fixed variance: one std per side instead of one per record and query. ``fixed_std: global`` is the
  reference code's ``np.std(dat_in)``: the std of every selected value (all records, references and
  queries) around their overall mean; ``pooled`` is the pooled within-record std (around each record's and
  query's own mean), the textbook estimate of a shared variance. NB the reference code's online branch sets
  ``std_out = np.std(dat_in)``, evidently a typo: here the OUT side uses the OUT values.

Choices the paper leaves open, as the reference code makes them (and exposed as arguments):

* ``estimator``: the reference code centres the Gaussians on the *median* (robust to a few outlying reference
  models); ``mean`` is the maximum-likelihood estimate.
* the std is ``np.std`` (ddof=0) around the mean, also when the centre is the median, plus ``std_eps`` (the
  reference code adds 1e-30).
* every available reference model is used; the reference code truncates every record's IN and OUT sets to
  the smallest such set over all records so that they stack into one array.
* a record whose IN (or OUT) reference set is empty (possible with Bernoulli masks and few models) takes the
  global estimate for that side: the ``estimator`` over all selected values of that query and the
  ``global`` std; with a single model on one side the per-record std (0) is replaced by that global std.
  Counts are in the diagnostics (``diag_*`` in metrics.json).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from mia_bench.attacks.base import FALLBACK_SHARE, Attack
from mia_bench.signals import Signals

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def gaussian_logpdf(x, mu, sd):
    """``log N(x; mu, sd^2)`` (the same numbers as ``scipy.stats.norm.logpdf``)."""
    z = (x - mu) / sd
    return -0.5 * z * z - np.log(sd) - _LOG_SQRT_2PI


def masked_median(x: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Median over axis 0 of ``x[R, N, Q]`` using only the rows selected by ``sel[R, N]``; NaN where none."""
    xs = np.where(sel[:, :, None], x, np.nan)
    xs.sort(axis=0)                                           # NaN sorts last
    n = sel.sum(0)
    lo = np.maximum((n - 1) // 2, 0)[None, :, None]
    hi = np.maximum(n // 2, 0)[None, :, None]
    lo = np.broadcast_to(lo, (1, *x.shape[1:]))
    hi = np.broadcast_to(hi, (1, *x.shape[1:]))
    med = 0.5 * (np.take_along_axis(xs, lo, 0)[0] + np.take_along_axis(xs, hi, 0)[0])
    med[n == 0] = np.nan
    return med


class LiRA(Attack):
    needs_reference = True

    def __init__(
        self,
        online: bool = True,
        fix_variance: bool = False,
        estimator: str = "median",
        fixed_std: str = "global",
        offline_statistic: str = "log_tail",
        std_eps: float = 1e-30,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if estimator not in ("median", "mean"):
            raise ValueError(f"lira: estimator must be 'median' or 'mean'; got {estimator!r}")
        if fixed_std not in ("global", "pooled"):
            raise ValueError(f"lira: fixed_std must be 'global' or 'pooled'; got {fixed_std!r}")
        if offline_statistic not in ("log_tail", "neg_log_density"):
            raise ValueError("lira: offline_statistic must be 'log_tail' or 'neg_log_density'; "
                             f"got {offline_statistic!r}")
        if not std_eps >= 0:
            raise ValueError(f"lira: std_eps must be >= 0; got {std_eps}")
        self.online = bool(online)
        self.fix_variance = bool(fix_variance)
        self.estimator = estimator
        self.fixed_std = fixed_std
        self.offline_statistic = offline_statistic
        self.std_eps = float(std_eps)
        default = ("lira_online" if self.online else "lira_offline") + ("_fixed_var" if fix_variance else "")
        self.name = name or default

    def fit_side(self, x: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Centre ``[N, Q]`` and std (``[N, Q]``, or a scalar with fixed variance) of ``x[R, N, Q]`` over the
        reference models selected per record by ``sel[R, N]``, with the global fallbacks described above."""
        n = sel.sum(0)                                        # [N] models on this side, per record
        total = int(n.sum())
        if total == 0:
            raise ValueError("lira: no reference model has any record on this side (IN or OUT); "
                             "add reference models")
        w = sel[:, :, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (w * x).sum(0) / n[:, None]                # NaN where n == 0
        dev = np.where(sel[:, :, None], x - np.nan_to_num(mean)[None], 0.0)
        sq = (dev * dev).sum(0)                               # [N, Q] sum of squared deviations
        values = x[sel]                                       # [M, Q] every selected value
        global_std = float(values.std())                      # reference code: np.std over everything
        if self.estimator == "median":
            centre = masked_median(x, sel)
            global_centre = np.median(values, axis=0)
        else:
            centre = mean
            global_centre = values.mean(axis=0)
        empty = n == 0
        centre = np.where(empty[:, None], global_centre[None, :], centre)
        info = {"n_empty": int(empty.sum()), "n_single": int((n == 1).sum())}
        if self.fix_variance:
            if self.fixed_std == "global":
                std = global_std
            else:
                std = float(np.sqrt(sq.sum() / (total * x.shape[2])))
            return centre, std + self.std_eps, info
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(sq / n[:, None])
        std = np.where((n < 2)[:, None], global_std, std)
        return centre, std + self.std_eps, info

    def fallback_note(self, name: str, record: dict) -> str | None:
        """Per-record variances need two reference models on a side of each record; with fewer, the record's std is
        the global one (the fixed-variance attack), and with none its centre too."""
        n = max(int(record.get("n_records", 0)), 1)
        sides = ("in", "out") if self.online else ("out",)
        empty = max(record.get(f"diag_n_fallback_{s}", 0.0) for s in sides)
        weak = empty + (0.0 if self.fix_variance else max(record.get(f"diag_n_single_{s}", 0.0) for s in sides))
        if weak / n <= FALLBACK_SHARE:
            return None
        what = "centre and variance" if self.fix_variance else "variance"
        return (f"{name}: {100 * weak / n:.0f}% of the records had too few reference models on a side "
                f"({record.get('n_reference')} per target) for their own {what}, which fell back to the global "
                "one; use more models (num_models=16 or more)")

    def score_with_diagnostics(self, signals: Signals, target: int, reference: np.ndarray):
        ref = self.check(signals, target, reference, min_reference=1)
        phi_ref = signals.phi[ref]                            # [R, N, Q]
        member = signals.masks[ref]                           # [R, N]
        phi_t = signals.phi[target]                           # [N, Q]
        mu_out, sd_out, info_out = self.fit_side(phi_ref, ~member)
        info = {"n_fallback_out": info_out["n_empty"], "n_single_out": info_out["n_single"]}
        if self.online:
            mu_in, sd_in, info_in = self.fit_side(phi_ref, member)
            info.update(n_fallback_in=info_in["n_empty"], n_single_in=info_in["n_single"])
            per_query = gaussian_logpdf(phi_t, mu_in, sd_in) - gaussian_logpdf(phi_t, mu_out, sd_out)
        elif self.offline_statistic == "log_tail":
            per_query = log_ndtr((phi_t - mu_out) / sd_out)
        else:
            per_query = -gaussian_logpdf(phi_t, mu_out, sd_out)
        return per_query.mean(axis=1), info

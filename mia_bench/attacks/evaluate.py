"""Steps 5-6 of the protocol: run attacks against target models and aggregate the metrics over targets.

For each target t the attacker's reference models are all other models (leave-one-out), except, by default
(``exclude_partner=True``), t's complementary partner when masks come in complementary pairs: the attacker
knows the reference masks, and ``masks[t ^ 1] == ~masks[t]`` would hand it the ground truth. The leak is not
only theoretical: with the partner among the references, a record IN for t is IN for one reference model
fewer than a record OUT for t, and LiRA's per-record Gaussian fits (fewer samples, tighter ML estimates)
turn that count into signal: on null signals (membership independent of the logits) LiRA online scored AUC
0.38 with K = 8 and 0.47 with K = 16 (``tests/test_attacks.py::test_partner_in_reference_set_leaks``).
Without the partner, every remaining pair contributes exactly one IN model per record whatever t's mask.
The ground truth is ``masks[t]``.

Per target and attack: ROC AUC and TPR at FPR 0.1% and 1% (strictly below, as LiRA reports), read off the
target's ROC; and three figures of the attack as the attacker can run it, with a threshold chosen on a shadow
model s, because the attacker cannot see ``masks[t]``: the *attack accuracy* (threshold maximising accuracy on
s), the *balanced accuracy* and the membership *advantage* ``TPR - FPR`` (Yeom et al. 2018) at the threshold
maximising balanced accuracy on s (``advantage = 2 balanced_accuracy - 1``). ``advantage_max``, the best
``TPR - FPR`` over the target's own ROC (TensorFlow Privacy's "attacker advantage"), is reported beside it
without an interval: choosing the threshold on the target's membership makes it an oracle whose estimate is
biased upward (by 1.3-1.5 standard errors at AUC 0.58 on 1,000 records), and no bootstrap interval covers it.
s is t's complementary partner ``t ^ 1`` when ``masks[t] == ~masks[t ^ 1]`` (the paired-halves scheme), else
``(t + 1) % K``; s is scored by the same attack with references = all models except t and s (and s's partner,
which for a pair is t), the threshold chosen on ``masks[s]`` (``best_threshold``) is applied to t's scores.
With pairs, t and s are therefore scored against the same reference models.

Aggregation over targets: ``<metric>_mean`` and ``<metric>_std`` (sample std, ddof=1; NaN for a single
target) of the per-target values, and a bootstrap interval ``<metric>_ci_low/_ci_high`` of the mean: records
are resampled with replacement (the same resamples for every attack and target), every metric is recomputed
per target on the resample (for the attack accuracy the shadow threshold is re-chosen on the resampled shadow
records) and averaged over targets. Attack scores are not recomputed on resamples (the references are models,
not records), so the interval reflects the finite population of records scored. The method per metric
(``ci_method: auto``) was chosen by coverage on simulated scores with a known truth (``AUTO_CI``,
``tests/test_intervals.py``): BCa for the AUC (its acceleration from a grouped jackknife,
``metrics.jackknife_counts``), the percentile interval for the others.

Low FPR: with n non-members per target the smallest non-zero FPR is ``1 / n`` (``fpr_resolution``); a
``tpr_at_fpr_<f>`` with ``f <= 1 / n`` is the TPR at zero false positives and is flagged
``tpr_at_fpr_<f>_resolved: false``. The ROC *pooled* over targets (every target's scores against its own
membership, as in the LiRA paper's figures) resolves ``1 / (targets x n)``: ``pooled_auc``,
``pooled_tpr_at_fpr_<f>`` and ``pooled_fpr_resolution`` sit beside the per-target means. Curves are NaN below
their resolution, so plots stop there instead of interpolating to 0.

Empirical privacy: ``eps_lower_bound`` is the epsilon an (epsilon, delta)-DP training would need to allow the
attack's test at a threshold chosen on the calibration shadow model (``metrics.epsilon_threshold``), with
Clopper-Pearson bounds on TPR and FPR at ``confidence``, counts pooled over the targets
(``metrics.epsilon_lower_bound``). It treats the scored records as independent trials of the DP test, as
DP auditing does with one canary per training run; within one run the records are not independent, so it is
an estimate, not a proof (the one-run audit of Steinke, Nasr and Jagielski, 2023, is the rigorous form).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mia_bench import progress
from mia_bench.attacks.base import Attack
from mia_bench.attacks.settings import AUTO_TARGETS, CI_METHODS, resolve_targets  # noqa: F401  (re-exported)
from mia_bench.data.splits import complementary_partner
from mia_bench.metrics import (
    accuracy_at_threshold,
    auc,
    bca_interval,
    best_threshold,
    bootstrap_counts,
    bootstrap_roc_metrics,
    bootstrap_threshold_accuracy,
    epsilon_lower_bound,
    epsilon_threshold,
    fpr_resolution,
    jackknife_counts,
    log_fpr_grid,
    mean_roc,
    membership_advantage,
    percentile_ci,
    roc_curve,
    tpr_at_fpr,
)
from mia_bench.signals import Signals

log = logging.getLogger(__name__)

MAX_FPRS = (0.001, 0.01)
METRICS = ("auc", *[f"tpr_at_fpr_{f:g}" for f in MAX_FPRS], "advantage", "balanced_accuracy",
           "attack_accuracy")
# The interval of each metric under ci_method=auto, chosen by coverage on simulated scores with a known truth
# (tests/test_intervals.py, docs/protocol.md#intervals): BCa for the AUC, a smooth U-statistic whose percentile
# interval undercovers slightly; the percentile interval for the rest, because a resample's duplicated records
# coarsen its ROC and move its re-chosen thresholds, a shift of the bootstrap distribution that the estimator
# does not have and that BCa's bias correction would wrongly "correct" (coverage 0.85-0.92 instead of 0.95).
AUTO_CI = {"auc": "bca"}
JACKKNIFE_GROUPS = 100   # groups of the jackknife behind BCa's acceleration (see metrics.jackknife_counts)

@dataclass
class EvaluationResult:
    records: list[dict]                                   # one flat dict per attack (aggregated over targets)
    scores: dict[str, np.ndarray]                         # attack -> [T, N] scores of the target models
    labels: np.ndarray                                    # [T, N] ground truth (masks of the targets)
    rocs: dict[str, tuple[np.ndarray, np.ndarray]]        # attack -> (FPR grid, mean TPR over targets; NaN below
                                                          # the per-target FPR resolution)
    per_target: list[dict]                                # one dict per (attack, target)
    targets: list[int] = field(default_factory=list)
    shadows: list[int] = field(default_factory=list)      # calibration shadow model of each target
    pooled_rocs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # attack -> (grid, TPR)


def calibration_shadow(masks: np.ndarray, target: int) -> int:
    """The shadow model on which target's attack threshold is chosen: its complementary partner if any."""
    partner = complementary_partner(masks, target)
    return partner if partner is not None else (target + 1) % masks.shape[0]


def reference_models(masks: np.ndarray, model: int, exclude: Sequence[int] = (), *,
                     exclude_partner: bool = True) -> np.ndarray:
    """The attacker's reference models when ``model`` is attacked: every model but ``model``, ``exclude``
    and (``exclude_partner``) ``model``'s complementary partner, whose known mask reveals ``masks[model]``."""
    drop = {int(model), *(int(e) for e in exclude)}
    partner = complementary_partner(masks, model) if exclude_partner else None
    if partner is not None:
        drop.add(partner)
    return np.array([j for j in range(masks.shape[0]) if j not in drop], dtype=np.int64)


def _check_targets(targets: Sequence[int], k: int) -> list[int]:
    out = []
    for t in targets:
        if isinstance(t, bool) or int(t) != t:
            raise ValueError(f"target {t!r} is not a model index")
        if not 0 <= int(t) < k:
            raise ValueError(f"target {t} out of range: the signals hold K={k} models (indices 0..{k - 1})")
        out.append(int(t))
    if not out:
        raise ValueError("evaluate needs at least one target model")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate targets in {out}")
    return out


def _target_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """The metrics read off the target's own ROC (the calibrated ones are added by ``summarize``)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    m = {"auc": auc(fpr, tpr)}
    for f in MAX_FPRS:
        m[f"tpr_at_fpr_{f:g}"] = tpr_at_fpr(fpr, tpr, f)
    m["advantage_max"] = membership_advantage(fpr, tpr)
    return m, fpr, tpr


def _replicates(score_t: np.ndarray, y_t: np.ndarray, score_s: np.ndarray, y_s: np.ndarray,
                counts: np.ndarray, roc_only: bool = False) -> dict[str, np.ndarray]:
    """Every metric of one target on each resample (rows of ``counts``: bootstrap or jackknife multiplicities)."""
    out = bootstrap_roc_metrics(score_t, y_t, counts, MAX_FPRS)
    del out["advantage"], out["balanced_accuracy"]  # the oracle forms; the calibrated ones follow
    if not roc_only:
        out["attack_accuracy"] = bootstrap_threshold_accuracy(score_s, y_s, score_t, y_t, counts)
        out["balanced_accuracy"] = bootstrap_threshold_accuracy(score_s, y_s, score_t, y_t, counts, balanced=True)
        out["advantage"] = 2.0 * out["balanced_accuracy"] - 1.0
    return out


def _curve_on_grid(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray, resolution: float) -> np.ndarray:
    """The curve on the FPR grid, NaN below the resolution (no interpolation where no threshold exists)."""
    _, t = mean_roc([(fpr, tpr)], grid)
    return np.where(grid < resolution * (1 - 1e-12), np.nan, t)


def summarize(scores_t: np.ndarray, labels_t: np.ndarray, scores_s: np.ndarray, labels_s: np.ndarray, *,
              counts: np.ndarray | None = None, jackknife: np.ndarray | None = None, confidence: float = 0.95,
              ci_method: str = "auto", delta: float = 1e-5) -> tuple[dict, list[dict], dict]:
    """One attack's figures from its scores: ``(record, per-target rows, curves)``.

    ``scores_t``/``labels_t`` ``[T, N]``: each target's scores and membership; ``scores_s``/``labels_s``: the
    same for each target's calibration shadow. ``counts``/``jackknife``: resample multiplicities (None = no
    intervals). ``curves``: ``mean`` and ``pooled`` (grid, TPR) pairs. A pure function of the scores, so the
    interval coverage can be tested on simulated scores."""
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method={ci_method!r}: expected one of {', '.join(CI_METHODS)}")
    methods = {m: (AUTO_CI.get(m, "percentile") if ci_method == "auto" else ci_method) for m in METRICS}
    n_t = scores_t.shape[0]
    grid = log_fpr_grid()
    rows, boot, jack, curves = [], None, None, []
    res = fpr_resolution(labels_t)                                          # [T]
    tp = fp = pos = neg = 0
    for i in range(n_t):
        st, yt, ss, ys = scores_t[i], labels_t[i], scores_s[i], labels_s[i]
        metrics, fpr, tpr = _target_metrics(st, yt)
        threshold = best_threshold(ss, ys)
        metrics["attack_accuracy"] = accuracy_at_threshold(st, yt, threshold)
        balanced = accuracy_at_threshold(st, yt, best_threshold(ss, ys, balanced=True), balanced=True)
        metrics["balanced_accuracy"], metrics["advantage"] = balanced, 2.0 * balanced - 1.0
        tau = epsilon_threshold(ss, ys, delta, confidence)
        hit = st >= tau
        counts_i = (int((hit & yt).sum()), int(yt.sum()), int((hit & ~yt).sum()), int((~yt).sum()))
        tp, pos, fp, neg = tp + counts_i[0], pos + counts_i[1], fp + counts_i[2], neg + counts_i[3]
        metrics["eps_lower_bound"] = epsilon_lower_bound(*counts_i, delta=delta, confidence=confidence)
        rows.append({"threshold": threshold, "eps_threshold": tau, "fpr_resolution": float(res[i]), **metrics})
        curves.append(_curve_on_grid(fpr, tpr, grid, res[i]))
        if counts is not None:
            b = _replicates(st, yt, ss, ys, counts)
            boot = b if boot is None else {m: boot[m] + b[m] for m in METRICS}
            if jackknife is not None and "bca" in methods.values():
                j = _replicates(st, yt, ss, ys, jackknife, roc_only=ci_method != "bca")
                jack = j if jack is None else {m: jack[m] + j[m] for m in j}
    rec: dict = {}
    for m in (*METRICS, "advantage_max"):
        vals = np.array([r[m] for r in rows])
        rec[f"{m}_mean"] = float(vals.mean())
        rec[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
        if m == "advantage_max":
            continue  # an oracle's optimistic figure: no interval covers it (see docs/protocol.md#intervals)
        lo = hi = float("nan")
        if boot is not None and methods[m] == "bca":
            if jack is None or m not in jack:
                raise ValueError("ci_method bca needs jackknife counts")
            lo, hi = bca_interval(rec[f"{m}_mean"], boot[m] / n_t, jack[m] / n_t, confidence)
        elif boot is not None:
            lo, hi = percentile_ci(boot[m] / n_t, confidence)
        rec[f"{m}_ci_low"], rec[f"{m}_ci_high"] = float(lo), float(hi)
    worst = float(np.max(res))
    rec["fpr_resolution"] = worst
    for f in MAX_FPRS:
        rec[f"tpr_at_fpr_{f:g}_resolved"] = bool(worst < f)
    fpr, tpr, _ = roc_curve(scores_t.ravel(), labels_t.ravel())
    pooled_res = fpr_resolution(labels_t.ravel())
    rec["pooled_auc"] = auc(fpr, tpr)
    for f in MAX_FPRS:
        rec[f"pooled_tpr_at_fpr_{f:g}"] = tpr_at_fpr(fpr, tpr, f)
        rec[f"pooled_tpr_at_fpr_{f:g}_resolved"] = bool(pooled_res < f)
    rec["pooled_fpr_resolution"] = float(pooled_res)
    rec["eps_lower_bound"] = epsilon_lower_bound(tp, pos, fp, neg, delta=delta, confidence=confidence)
    rec["eps_lower_bound_per_target_max"] = float(max(r["eps_lower_bound"] for r in rows))
    rec["eps_delta"] = float(delta)
    with np.errstate(invalid="ignore"):
        mean_curve = np.mean(curves, axis=0)                                # NaN where any target is unresolved
    out_curves = {"mean": (grid, mean_curve), "pooled": (grid, _curve_on_grid(fpr, tpr, grid, pooled_res))}
    return rec, rows, out_curves


def _scores(attack: Attack, name: str, signals: Signals, target: int,
            reference: np.ndarray) -> tuple[np.ndarray, dict]:
    s, diagnostics = attack.score_with_diagnostics(signals, target, reference)
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (signals.num_records,):
        raise ValueError(f"attack {name!r} returned scores of shape {s.shape}; "
                         f"expected ({signals.num_records},)")
    if np.isnan(s).any():
        raise ValueError(f"attack {name!r} returned {int(np.isnan(s).sum())} NaN scores for model {target}")
    return s, dict(diagnostics or {})


def plan_references(masks: np.ndarray, attacks: Mapping[str, Attack], targets: Sequence[int],
                    exclude_partner: bool = True) -> tuple[list[int], list[tuple[np.ndarray, np.ndarray]]]:
    """Each target's calibration shadow and the reference models of (target, shadow); raises when an attack that
    needs reference models would get none. Depends on the masks only, so the pipeline calls it before training."""
    k = masks.shape[0]
    shadows = [calibration_shadow(masks, t) for t in targets]
    refs = [(reference_models(masks, t, exclude_partner=exclude_partner),
             reference_models(masks, s, (t,), exclude_partner=exclude_partner))
            for t, s in zip(targets, shadows, strict=True)]
    needs_ref = [name for name, a in attacks.items() if getattr(a, "needs_reference", False)]
    fewest = min(min(r_t.size, r_s.size) for r_t, r_s in refs)
    if needs_ref and fewest == 0:
        raise ValueError(
            f"attacks {needs_ref} need reference models besides the target, its calibration shadow"
            + (" and their complementary partners" if exclude_partner else "")
            + f", and K={k} models leave none: use more models (K >= 4 with paired masks)")
    return shadows, refs


def evaluate(signals: Signals, attacks: Mapping[str, Attack], targets: Sequence[int], *,
             n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0, exclude_partner: bool = True,
             ci_method: str = "auto", delta: float = 1e-5) -> EvaluationResult:
    """Score every target with every attack and aggregate the metrics (see the module docstring)."""
    k, n = signals.num_models, signals.num_records
    targets = _check_targets(targets, k)
    if k < 2:
        raise ValueError(f"evaluate needs at least 2 models (a target and a calibration shadow); got K={k}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0; got {n_bootstrap}")
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method={ci_method!r}: expected one of {', '.join(CI_METHODS)}")
    masks = signals.masks
    shadows, refs = plan_references(masks, attacks, targets, exclude_partner)
    labels = masks[targets]
    counts = bootstrap_counts(n, n_bootstrap, seed) if n_bootstrap > 0 else None
    jack = jackknife_counts(n, JACKKNIFE_GROUPS, seed) if counts is not None and ci_method != "percentile" else None

    records, per_target, all_scores, rocs, pooled = [], [], {}, {}, {}
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        score_t, score_s, diags = [], [], []
        for t, s, (ref_t, ref_s) in zip(targets, shadows, refs, strict=True):
            scores, diag = _scores(attack, name, signals, t, ref_t)
            score_t.append(scores)
            diags.append(diag)
            score_s.append(_scores(attack, name, signals, s, ref_s)[0])
        score_t, score_s = np.stack(score_t), np.stack(score_s)
        summary, rows, curves = summarize(score_t, labels, score_s, masks[shadows], counts=counts, jackknife=jack,
                                          confidence=confidence, ci_method=ci_method, delta=delta)
        for t, s, (ref_t, _), row, diag in zip(targets, shadows, refs, rows, diags, strict=True):
            per_target.append({"attack": name, "target": t, "shadow": s, "n_reference": int(ref_t.size), **row,
                               **{f"diag_{key}": v for key, v in diag.items()}})
        rec: dict = {"attack": name, "n_targets": len(targets), "n_records": n,
                     "n_reference": int(np.mean([r[0].size for r in refs])), **summary}
        for key in sorted({key for d in diags for key in d}):
            vals = [d[key] for d in diags if isinstance(d.get(key), int | float)]
            if vals:
                rec[f"diag_{key}"] = float(np.mean(vals))
        if (note := attack.fallback_note(name, rec)) is not None:
            rec["attack_warning"] = note
            log.warning(note)
        rec["n_bootstrap"] = int(n_bootstrap)
        rec["confidence"] = float(confidence)
        rec["ci_method"] = ("none" if n_bootstrap == 0 else "bca for auc, percentile for the rest"
                            if ci_method == "auto" else ci_method)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        records.append(rec)
        all_scores[name] = score_t
        rocs[name], pooled[name] = curves["mean"], curves["pooled"]
        progress.advance("attacks")
        log.info("%s: AUC %.4f, TPR@0.1%%FPR %.4f, attack acc %.4f, eps >= %.2f (%.2fs)", name, rec["auc_mean"],
                 rec["tpr_at_fpr_0.001_mean"], rec["attack_accuracy_mean"], rec["eps_lower_bound"], rec["seconds"])
    return EvaluationResult(records=records, scores=all_scores, labels=labels, rocs=rocs, per_target=per_target,
                            targets=targets, shadows=shadows, pooled_rocs=pooled)

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

Per target and attack: ROC AUC, TPR at FPR 0.1% and 1% (strictly below, as LiRA reports), membership
advantage ``max(TPR - FPR)``, best balanced accuracy, and the *attack accuracy*: the accuracy on t of a
threshold chosen on a shadow model s, because the attacker cannot see ``masks[t]``. s is t's
complementary partner ``t ^ 1`` when ``masks[t] == ~masks[t ^ 1]`` (the paired-halves scheme), else
``(t + 1) % K``; s is scored by the same attack with references = all models except t and s (and s's partner,
which for a pair is t), the threshold maximising accuracy on ``masks[s]`` (``best_threshold``) is applied
to t's scores. With pairs, t and s are therefore scored against the same reference models.

Aggregation over targets: ``<metric>_mean`` and ``<metric>_std`` (sample std, ddof=1; NaN for a single
target) of the per-target values, and a percentile bootstrap interval ``<metric>_ci_low/_ci_high`` of the
mean: records are resampled with replacement (the same resamples for every attack and target), every metric
is recomputed per target on the resample (for the attack accuracy the shadow threshold is re-chosen on the
resampled shadow records) and averaged over targets. Attack scores are not recomputed on resamples (the
references are models, not records), so the interval reflects the finite population of records scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mia_bench.attacks.base import Attack
from mia_bench.metrics import (
    accuracy_at_threshold,
    auc,
    best_balanced_accuracy,
    best_threshold,
    bootstrap_counts,
    bootstrap_roc_metrics,
    bootstrap_threshold_accuracy,
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


@dataclass
class EvaluationResult:
    records: list[dict]                                   # one flat dict per attack (aggregated over targets)
    scores: dict[str, np.ndarray]                         # attack -> [T, N] scores of the target models
    labels: np.ndarray                                    # [T, N] ground truth (masks of the targets)
    rocs: dict[str, tuple[np.ndarray, np.ndarray]]        # attack -> (FPR grid, mean TPR over targets)
    per_target: list[dict]                                # one dict per (attack, target)
    targets: list[int] = field(default_factory=list)
    shadows: list[int] = field(default_factory=list)      # calibration shadow model of each target


def complementary_partner(masks: np.ndarray, model: int) -> int | None:
    """``model ^ 1`` when its mask is the complement of ``model``'s (the paired-halves scheme), else None."""
    partner = model ^ 1
    if partner < masks.shape[0] and np.array_equal(masks[model], ~masks[partner]):
        return partner
    return None


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
    fpr, tpr, _ = roc_curve(scores, labels)
    m = {"auc": auc(fpr, tpr)}
    for f in MAX_FPRS:
        m[f"tpr_at_fpr_{f:g}"] = tpr_at_fpr(fpr, tpr, f)
    m["advantage"] = membership_advantage(fpr, tpr)
    m["balanced_accuracy"] = best_balanced_accuracy(fpr, tpr)
    return m, fpr, tpr


def _scores(attack: Attack, name: str, signals: Signals, target: int, reference: np.ndarray) -> np.ndarray:
    s = np.asarray(attack.score(signals, target, reference), dtype=np.float64)
    if s.shape != (signals.num_records,):
        raise ValueError(f"attack {name!r} returned scores of shape {s.shape}; "
                         f"expected ({signals.num_records},)")
    if np.isnan(s).any():
        raise ValueError(f"attack {name!r} returned {int(np.isnan(s).sum())} NaN scores for model {target}")
    return s


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
             n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0,
             exclude_partner: bool = True) -> EvaluationResult:
    """Score every target with every attack and aggregate the metrics (see the module docstring)."""
    k, n = signals.num_models, signals.num_records
    targets = _check_targets(targets, k)
    if k < 2:
        raise ValueError(f"evaluate needs at least 2 models (a target and a calibration shadow); got K={k}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0; got {n_bootstrap}")
    masks = signals.masks
    shadows, refs = plan_references(masks, attacks, targets, exclude_partner)
    labels = masks[targets]
    counts = bootstrap_counts(n, n_bootstrap, seed) if n_bootstrap > 0 else None
    grid = log_fpr_grid()

    records, per_target, all_scores, rocs = [], [], {}, {}
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        rows, curves, target_scores, diags = [], [], [], []
        boot = {m: np.zeros(n_bootstrap) for m in METRICS}
        for t, s, (ref_t, ref_s) in zip(targets, shadows, refs, strict=True):
            score_t = _scores(attack, name, signals, t, ref_t)
            diag = dict(getattr(attack, "info", {}) or {})
            score_s = _scores(attack, name, signals, s, ref_s)
            metrics, fpr, tpr = _target_metrics(score_t, masks[t])
            threshold = best_threshold(score_s, masks[s])
            metrics["attack_accuracy"] = accuracy_at_threshold(score_t, masks[t], threshold)
            rows.append(metrics)
            curves.append((fpr, tpr))
            target_scores.append(score_t)
            diags.append(diag)
            per_target.append({"attack": name, "target": t, "shadow": s, "n_reference": int(ref_t.size),
                               "threshold": threshold, **metrics,
                               **{f"diag_{key}": v for key, v in diag.items()}})
            if counts is not None:
                for m, v in bootstrap_roc_metrics(score_t, masks[t], counts, MAX_FPRS).items():
                    boot[m] += v
                boot["attack_accuracy"] += bootstrap_threshold_accuracy(
                    score_s, masks[s], score_t, masks[t], counts)
        rec: dict = {"attack": name, "n_targets": len(targets), "n_records": n,
                     "n_reference": int(np.mean([r[0].size for r in refs]))}
        for m in METRICS:
            vals = np.array([r[m] for r in rows])
            rec[f"{m}_mean"] = float(vals.mean())
            rec[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
            lo, hi = (percentile_ci(boot[m] / len(targets), confidence) if counts is not None
                      else (np.nan, np.nan))
            rec[f"{m}_ci_low"], rec[f"{m}_ci_high"] = float(lo), float(hi)
        for key in sorted({key for d in diags for key in d}):
            vals = [d[key] for d in diags if isinstance(d.get(key), int | float)]
            if vals:
                rec[f"diag_{key}"] = float(np.mean(vals))
        rec["n_bootstrap"] = int(n_bootstrap)
        rec["confidence"] = float(confidence)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        records.append(rec)
        all_scores[name] = np.stack(target_scores)
        rocs[name] = mean_roc(curves, grid)
        log.info("%s: AUC %.4f, TPR@0.1%%FPR %.4f, attack acc %.4f (%.2fs)", name, rec["auc_mean"],
                 rec["tpr_at_fpr_0.001_mean"], rec["attack_accuracy_mean"], rec["seconds"])
    return EvaluationResult(records=records, scores=all_scores, labels=labels, rocs=rocs,
                            per_target=per_target, targets=targets, shadows=shadows)

"""The dynamics analysis (``+analysis=dynamics``): from the per-epoch snapshots the recorder left in each model's
``artifacts`` to ``dynamics.json``, ``dynamics_records.npz`` and the plots, plus summary figures for metrics.json.

Per checkpoint, every model is a LiRA target once (the other K-1 are its references); one global threshold at
``analysis.dynamics.fpr`` over all (OUT model, record) pairs gives each record its ``TPR_i`` and ``FPR_i``.
Everything else (grid cells, transitions, centre of mass, entropy, early identification, hardness
correlations) follows from those ``[E, N]`` arrays; see :mod:`mia_bench.dynamics.vulnerability`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from mia_bench.attacks.base import Attack
from mia_bench.data.base import ArrayData
from mia_bench.dynamics import hardness as H
from mia_bench.dynamics import vulnerability as V
from mia_bench.dynamics.config import DynamicsConfig, parse
from mia_bench.dynamics.recorder import DynamicsRecorder
from mia_bench.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PREFIX = "dynamics/"


def recorder_factory(cfg: DictConfig, audit: ArrayData, queries: list) -> Callable[[int], list[pl.Callback]]:
    """``fn(k) -> [DynamicsRecorder]`` for model k; validates the config first (before any training)."""
    from mia_bench.training.train import model_seed  # the training package imports the analysis hooks

    dc = parse(cfg)
    make_attack(dc)  # fail on a bad attack node now, not after training
    q = list(queries) if dc.queries == "run" else [(0, 0, False)]
    c = int(audit.y.max()) + 1 if len(audit) else 1  # classes seen among the audit records
    per_model = len(dc.record_epochs) * len(audit) * len(q) * c * np.dtype(dc.dtype).itemsize
    log.info(
        "dynamics: recording epochs %s on %d records x %d quer%s (~%.1f MB of snapshots per model)",
        dc.record_epochs, len(audit), len(q), "y" if len(q) == 1 else "ies", per_model / 2**20,
    )

    def make(k: int) -> list[pl.Callback]:
        return [
            DynamicsRecorder(
                audit.x, audit.y, dc.record_epochs, q, dc.dtype, dc.batch_size, dc.grad_norm, dc.grad_batch_size,
                dc.mc_dropout, seed=model_seed(int(cfg.seed), k),
            )
        ]

    return make


def make_attack(dc: DynamicsConfig) -> Attack:
    attack = instantiate(dc.attack)
    if not isinstance(attack, Attack):
        raise ValueError(f"analysis.dynamics.attack: {dc.attack.get('_target_')} is not an Attack")
    return attack


def cell_labels(g: int) -> list[str]:
    """Readable names of the ``g x g`` cells in index order (``tpr_bin * g + fpr_bin``)."""
    names = {3: ("low", "mid", "high"), 2: ("low", "high")}.get(g, tuple(str(i) for i in range(g)))
    return [f"TPR {names[t]} / FPR {names[f]}" for t in range(g) for f in range(g)]


def analyze(
    logits: np.ndarray,
    epochs: list[int],
    labels: np.ndarray,
    masks: np.ndarray,
    dc: DynamicsConfig,
    extras: dict[str, np.ndarray] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """``logits[K, E, N, A, C]`` snapshots of K models at ``epochs`` -> (the dynamics.json content, the per-record
    arrays). ``extras``: per-model hardness measured at fit end (``grad_norm``, ``mc_dropout_mi``), ``[K, N]``."""
    k, e_count, n = logits.shape[:3]
    attack = make_attack(dc)
    tpr = np.empty((e_count, n))
    fpr = np.empty((e_count, n))
    thresholds, realised = [], []
    for e in range(e_count):  # a handful of checkpoints; each is vectorised over models and records
        scores = V.loo_scores(logits[:, e], labels, masks, attack)
        tpr[e], fpr[e], tau, r = V.per_record_rates(scores, masks, dc.fpr)
        thresholds.append(tau)
        realised.append(r)
    edges = dc.edges
    g = V.grid_size(edges)
    vul = V.vulnerable_cell(edges)
    cells = V.assign_cells(tpr, fpr, edges)
    counts = V.transition_counts(cells, g * g)
    p_enter = V.enter_probability(cells, vul)
    com = V.center_of_mass(tpr, fpr)
    entropy = V.spatial_entropy(tpr, fpr, dc.entropy_bins)
    early = V.early_identification(cells, vul)
    defined = cells >= 0
    occupancy = np.stack([np.bincount(c[c >= 0], minlength=g * g) for c in cells])
    advantage = tpr - fpr

    # Hardness (query 0 is the clean record) and its correlation with the final advantage TPR_i - FPR_i.
    weights = H.select_models(masks, dc.hardness_models)
    measures = H.ensemble_hardness(logits[:, -1, :, 0].astype(np.float64), labels, weights)
    measures["loss_trajectory"] = H.trajectory_loss(logits[:, :, :, 0].transpose(1, 0, 2, 3), labels, weights)
    for name, per_model in (extras or {}).items():
        measures[name] = H._weighted_mean(per_model.astype(np.float64), weights.astype(np.float64))
    target = advantage[-1]
    final_vulnerable = cells[-1] == vul
    corr_all = H.correlations(measures, target)
    corr_vul = H.correlations(measures, target, final_vulnerable)

    # The share of finally vulnerable records already vulnerable at the last checkpoint within early_fraction
    # of training (the paper: over 70% by epoch 150 of 400).
    limit = dc.early_fraction * dc.final_epoch
    early_idx = max([i for i, ep in enumerate(epochs) if ep <= limit + 1e-9] or [0])
    peak = int(np.nanargmax(p_enter)) if np.isfinite(p_enter).any() else None
    summary = {
        "epochs_recorded": len(epochs),
        "final_epoch": int(epochs[-1]),
        "fpr": dc.fpr,
        "realised_fpr_final": realised[-1],
        "vulnerable_share_final": float(final_vulnerable.sum() / max(defined[-1].sum(), 1)),
        "vulnerable_share_first": float((cells[0] == vul).sum() / max(defined[0].sum(), 1)),
        "peak_enter_vulnerable": float(p_enter[peak]) if peak is not None else math.nan,
        "peak_enter_vulnerable_epoch": int(epochs[peak + 1]) if peak is not None else None,
        "mean_enter_vulnerable": float(np.nanmean(p_enter)) if peak is not None else math.nan,
        "com_fpr_final_pp": float(com[-1, 0]),
        "com_tpr_final_pp": float(com[-1, 1]),
        "com_path_pp": V.path_length(com),
        "com_net_pp": float(np.linalg.norm(com[-1] - com[0])),
        "entropy_first_bits": float(entropy[0]),
        "entropy_final_bits": float(entropy[-1]),
        "entropy_change_bits": float(entropy[-1] - entropy[0]),
        "early_share": float(early[early_idx]),
        "early_share_epoch": int(epochs[early_idx]),
    }
    for name, c in corr_all.items():
        summary[f"pearson_{name}"] = c["pearson"]
        summary[f"spearman_{name}"] = c["spearman"]

    report = {
        "description": "per-record privacy dynamics (METHODS.md 'Dynamics analysis'); see README 'Privacy dynamics'",
        "config": {
            "attack": dc.attack,
            "fpr": dc.fpr,
            "edges": edges.tolist(),
            "entropy_bins": dc.entropy_bins,
            "queries": dc.queries,
            "hardness_models": dc.hardness_models,
            "num_models": int(k),
            "num_records": int(n),
        },
        "epochs": [int(x) for x in epochs],
        "grid": {"size": g, "cells": cell_labels(g), "vulnerable_cell": vul},
        "summary": summary,
        "per_epoch": {
            "threshold": thresholds,
            "realised_fpr": realised,
            "mean_tpr": np.nanmean(tpr, 1).tolist(),
            "mean_fpr": np.nanmean(fpr, 1).tolist(),
            "mean_advantage": np.nanmean(advantage, 1).tolist(),
            "vulnerable_share": ((cells == vul).sum(1) / np.maximum(defined.sum(1), 1)).tolist(),
            "occupancy": occupancy.tolist(),
            "com_fpr_pp": com[:, 0].tolist(),
            "com_tpr_pp": com[:, 1].tolist(),
            "entropy_bits": entropy.tolist(),
            "early_identification": early.tolist(),
        },
        "transitions": {
            "from_epoch": [int(x) for x in epochs[:-1]],
            "to_epoch": [int(x) for x in epochs[1:]],
            "enter_vulnerable": p_enter.tolist(),
            "counts": counts.tolist(),
            "probabilities": V.row_normalize(counts).tolist(),
            "pooled_probabilities": V.row_normalize(counts.sum(0)).tolist(),
        },
        "hardness": {
            "target": "final advantage TPR_i - FPR_i",
            "measures": sorted(measures),
            "correlations_all": corr_all,
            "correlations_vulnerable": corr_vul,
            "n_vulnerable": int(final_vulnerable.sum()),
        },
    }
    records = {
        "epochs": np.asarray(epochs, dtype=np.int64),
        "labels": labels,
        "tpr": tpr.astype(np.float32),
        "fpr": fpr.astype(np.float32),
        "advantage": advantage.astype(np.float32),
        "cell": cells.astype(np.int8),
        "final_vulnerable": final_vulnerable,
        **{f"hardness_{name}": v.astype(np.float32) for name, v in measures.items()},
    }
    return report, records


def collect_artifacts(trained: list) -> tuple[np.ndarray, list[int], dict[str, np.ndarray]]:
    """Stack the recorder's artifacts of the K models in model order: ``logits[K, E, N, A, C]``, the epochs
    common to all models (early stopping may leave some out), per-model hardness ``[K, N]``."""
    trained = sorted(trained, key=lambda m: m.index)
    missing = [m.index for m in trained if "dynamics/logits" not in m.module.artifacts]
    if missing:
        raise ValueError(
            f"analysis=dynamics: models {missing} carry no dynamics snapshots (module.artifacts['dynamics/logits']);"
            " were they trained (or cached) without +analysis=dynamics?"
        )
    per_model = [
        (m.module.artifacts["dynamics/epochs"].tolist(), m.module.artifacts["dynamics/logits"]) for m in trained
    ]
    common = sorted(set.intersection(*(set(ep) for ep, _ in per_model)))
    if any(ep != common for ep, _ in per_model):
        log.warning("dynamics: models recorded different epochs (early stopping?); using the common %s", common)
    logits = np.stack([lg[[ep.index(e) for e in common]] for ep, lg in per_model])
    extras = {}
    for key, name in (("dynamics/grad_norm", "grad_norm"), ("dynamics/mc_mi", "mc_dropout_mi")):
        if all(key in m.module.artifacts for m in trained):
            extras[name] = np.stack([m.module.artifacts[key] for m in trained])
    return logits, common, extras


def recording_seconds(trained: list) -> dict[str, float]:
    """Seconds the recorders added to training, summed over the K models (as measured when they trained)."""
    secs = [m.module.artifacts.get("dynamics/record_seconds") for m in trained]
    if any(s is None for s in secs):
        return {}
    total = np.sum(secs, axis=0)
    return {"record_seconds_snapshots": float(total[0]), "record_seconds_hardness": float(total[1])}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None  # strict JSON has no NaN / inf
    return o


def write_outputs(report: dict, records: dict[str, np.ndarray], out: Path, plots: bool = True) -> None:
    from mia_bench.dynamics import plots as P

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "dynamics.json", json.dumps(_jsonable(report), indent=1))
    buf = io.BytesIO()
    np.savez_compressed(buf, **records)
    atomic_write_bytes(out / "dynamics_records.npz", buf.getvalue())
    if plots:
        P.plot_all(report, records, out)


def run_dynamics(cfg: DictConfig, trained: list, labels: np.ndarray, masks: np.ndarray, out: Path) -> dict:
    """Analyse the snapshots of the trained models, write the files, return ``dynamics/<figure>`` scalars."""
    t0 = time.perf_counter()
    dc = parse(cfg)
    logits, epochs, extras = collect_artifacts(trained)
    if logits.shape[2] != len(labels) or logits.shape[0] != len(masks):
        raise ValueError(
            f"analysis=dynamics: snapshots cover {logits.shape[2]} records of {logits.shape[0]} models, but the run "
            f"scores {len(labels)} records of {len(masks)} models (stale cached artifacts?)"
        )
    plot = [e for e in dc.plot_epochs if e in epochs] or [epochs[0], epochs[-1]]
    dc.plot_epochs = plot
    report, records = analyze(logits, epochs, np.asarray(labels), np.asarray(masks, dtype=bool), dc, extras)
    report["config"]["plot_epochs"] = plot
    report["summary"].update(recording_seconds(trained))
    report["summary"]["analysis_seconds"] = time.perf_counter() - t0
    write_outputs(report, records, Path(out))
    s = report["summary"]
    log.info(
        "dynamics: vulnerable %.1f%% of records at the end; peak P(enter vulnerable) %.3f (epoch %s); CoM path "
        "%.1f pp; entropy %.2f -> %.2f bits; %.0f%% of finally vulnerable already so at epoch %d (%.1fs)",
        100 * s["vulnerable_share_final"], s["peak_enter_vulnerable"], s["peak_enter_vulnerable_epoch"],
        s["com_path_pp"], s["entropy_first_bits"], s["entropy_final_bits"], 100 * np.nan_to_num(s["early_share"]),
        s["early_share_epoch"], time.perf_counter() - t0,
    )
    return {PREFIX + key: _jsonable(v) for key, v in s.items()}

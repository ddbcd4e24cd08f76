"""The dynamics analysis (``+analysis=dynamics``): from the per-epoch snapshots the recorder left in each model's
``artifacts`` to ``dynamics.json``, ``dynamics_records.npz`` and the plots, plus summary figures for metrics.json.

Per checkpoint, every model is a LiRA target once (the other K-1 are its references); one global threshold at
``analysis.dynamics.fpr`` over all (OUT model, record) pairs gives each record its ``TPR_i`` and ``FPR_i``.
Everything else (grid cells, transitions, centre of mass, entropy, early identification, hardness correlations)
follows from those ``[E, N]`` arrays; see :mod:`mia_bench.dynamics.vulnerability`.
"""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from hydra.utils import instantiate

from mia_bench.analyses import Analysis, RunInfo
from mia_bench.atomic import atomic_write_bytes, jsonable, write_json
from mia_bench.attacks.base import Attack
from mia_bench.data.splits import model_seed
from mia_bench.dynamics import hardness as H
from mia_bench.dynamics import vulnerability as V
from mia_bench.dynamics.config import DynamicsSettings, check_run, plot_epochs, record_epochs
from mia_bench.dynamics.recorder import DynamicsRecorder
from mia_bench.signals import Signals

log = logging.getLogger(__name__)

PREFIX = "dynamics/"


class DynamicsAnalysis(Analysis):
    """Per-record privacy across training: a recorder per model while it trains, the analysis after the attacks."""

    def __init__(self, **settings) -> None:
        self.settings = DynamicsSettings.parse(settings)
        make_attack(self.settings)  # fail on a bad attack node now, not after training
        self.record_epochs: list[int] = []
        self.final_epoch = 0

    def setup(self, run: RunInfo) -> None:
        super().setup(run)
        s = self.settings
        check_run(s, run.num_models, float(run.model.get("dropout", 0.0) or 0.0))
        self.record_epochs = record_epochs(s, run.epochs)
        self.final_epoch = int(run.epochs)
        self.plot_epochs = plot_epochs(s, self.record_epochs)
        self.queries = list(run.queries) if s.queries == "run" else [(0, 0, False)]
        audit = run.audit
        c = int(audit.y.max()) + 1 if len(audit) else 1  # classes seen among the audit records
        per_model = len(self.record_epochs) * len(audit) * len(self.queries) * c * np.dtype(s.dtype).itemsize
        log.info(
            "dynamics: recording epochs %s on %d records x %d quer%s (~%.1f MB of snapshots per model)",
            self.record_epochs, len(audit), len(self.queries), "y" if len(self.queries) == 1 else "ies",
            per_model / 2**20,
        )

    def recorded(self) -> dict:
        """What the recorder's artifacts depend on beyond the model's own recipe, so that changing an analysis-only
        setting (fpr, edges, attack, plots) reuses the cached models and their snapshots, while changing what is
        recorded (epochs, queries, dtype, hardness passes, or the scored records: the null test scores another
        half) trains again."""
        s = self.settings
        return {
            "record_epochs": self.record_epochs, "queries": s.queries, "dtype": s.dtype,
            "grad_norm": s.hardness.grad_norm, "mc_dropout": s.hardness.mc_dropout,
            "null_test": bool(self.run_info.null_test),
        }

    def callbacks(self, k: int) -> list[pl.Callback]:
        s, audit = self.settings, self.run_info.audit
        return [DynamicsRecorder(
            audit.x, audit.y, self.record_epochs, self.queries, s.dtype, s.batch_size, s.hardness.grad_norm,
            s.hardness.grad_batch_size, s.hardness.mc_dropout, seed=model_seed(self.run_info.seed, k),
        )]

    def run(self, trained: list, signals: Signals, masks: np.ndarray, out: Path) -> dict:
        """Analyse the snapshots of the trained models, write the files, return ``dynamics/<figure>`` scalars."""
        t0 = time.perf_counter()
        labels = signals.labels
        logits, epochs, extras = collect_artifacts(trained)
        if logits.shape[2] != len(labels) or logits.shape[0] != len(masks):
            raise ValueError(
                f"analysis=dynamics: snapshots cover {logits.shape[2]} records of {logits.shape[0]} models, but the "
                f"run scores {len(labels)} records of {len(masks)} models (stale cached artifacts?)"
            )
        report, records = analyze(logits, epochs, np.asarray(labels), np.asarray(masks, dtype=bool), self.settings,
                                  self.final_epoch, extras)
        report["config"]["plot_epochs"] = [e for e in self.plot_epochs if e in epochs] or [epochs[0], epochs[-1]]
        report["summary"].update(recording_seconds(trained))
        report["summary"]["analysis_seconds"] = time.perf_counter() - t0
        write_outputs(report, records, Path(out))
        s = report["summary"]
        log.info(
            "dynamics: vulnerable %.1f%% of records at the end; peak P(enter vulnerable) %.3f (epoch %s); CoM path "
            "%.1f pp; entropy %.2f -> %.2f bits; %.0f%% of finally vulnerable already so at epoch %d (%.1fs)",
            100 * s["vulnerable_share_final"], s["peak_enter_vulnerable"], s["peak_enter_vulnerable_epoch"],
            s["com_path_pp"], s["entropy_first_bits"], s["entropy_final_bits"],
            100 * np.nan_to_num(s["early_share"]), s["early_share_epoch"], time.perf_counter() - t0,
        )
        return {PREFIX + key: jsonable(v, strict=True) for key, v in s.items()}


def make_attack(s: DynamicsSettings) -> Attack:
    attack = instantiate(s.attack)
    if not isinstance(attack, Attack):
        raise ValueError(f"analysis.dynamics.attack: {s.attack.get('_target_')} is not an Attack")
    return attack


def cell_labels(g: int) -> list[str]:
    """Readable names of the ``g x g`` cells in index order (``tpr_bin * g + fpr_bin``)."""
    names = {3: ("low", "mid", "high"), 2: ("low", "high")}.get(g, tuple(str(i) for i in range(g)))
    return [f"TPR {names[t]} / FPR {names[f]}" for t in range(g) for f in range(g)]


# ------------------------------------------------------------------------------------------------ the analysis
def checkpoint_rates(logits: np.ndarray, labels: np.ndarray, masks: np.ndarray, attack: Attack, fpr: float) -> dict:
    """Per checkpoint ``e`` of ``logits[K, E, N, A, C]``: every record's ``tpr[e]``, ``fpr[e]`` at one global
    threshold (and that threshold and the FPR it realises)."""
    e_count, n = logits.shape[1:3]
    out = {"tpr": np.empty((e_count, n)), "fpr": np.empty((e_count, n)), "thresholds": [], "realised": []}
    for e in range(e_count):  # a handful of checkpoints; each is vectorised over models and records
        scores = V.loo_scores(logits[:, e], labels, masks, attack)
        out["tpr"][e], out["fpr"][e], tau, r = V.per_record_rates(scores, masks, fpr)
        out["thresholds"].append(tau)
        out["realised"].append(r)
    return out


def plane_figures(tpr: np.ndarray, fpr: np.ndarray, edges: np.ndarray, entropy_bins: int) -> dict:
    """The records' states on the vulnerability plane across checkpoints and how they move."""
    g = V.grid_size(edges)
    vul = V.vulnerable_cell(edges)
    cells = V.assign_cells(tpr, fpr, edges)
    counts = V.transition_counts(cells, g * g)
    return {
        "grid": g,
        "vulnerable": vul,
        "cells": cells,
        "counts": counts,
        "p_enter": V.enter_probability(cells, vul),
        "com": V.center_of_mass(tpr, fpr),
        "entropy": V.spatial_entropy(tpr, fpr, entropy_bins),
        "early": V.early_identification(cells, vul),
        "occupancy": np.stack([np.bincount(c[c >= 0], minlength=g * g) for c in cells]),
    }


def hardness_figures(
    logits: np.ndarray, labels: np.ndarray, masks: np.ndarray, models: str, extras: dict, target: np.ndarray,
    vulnerable: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Hardness measures per record (query 0 is the clean record) and their correlations with ``target`` (the
    final advantage), over all records and over the finally ``vulnerable`` ones."""
    weights = H.select_models(masks, models)
    measures = H.ensemble_hardness(logits[:, -1, :, 0].astype(np.float64), labels, weights)
    measures["loss_trajectory"] = H.trajectory_loss(logits[:, :, :, 0].transpose(1, 0, 2, 3), labels, weights)
    for name, per_model in (extras or {}).items():
        measures[name] = H.weighted_mean(per_model.astype(np.float64), weights.astype(np.float64))
    return measures, H.correlations(measures, target), H.correlations(measures, target, vulnerable)


def summarize(rates: dict, plane: dict, epochs: list[int], s: DynamicsSettings, final_epoch: int,
              corr: dict) -> dict:
    """The headline figures (metrics.json's ``dynamics/<figure>``)."""
    cells, vul, p_enter, com = plane["cells"], plane["vulnerable"], plane["p_enter"], plane["com"]
    entropy, defined = plane["entropy"], cells >= 0
    # The share of finally vulnerable records already vulnerable at the last checkpoint within early_fraction
    # of training (the paper: over 70% by epoch 150 of 400).
    limit = s.early_fraction * final_epoch
    early_idx = max([i for i, ep in enumerate(epochs) if ep <= limit + 1e-9] or [0])
    peak = int(np.nanargmax(p_enter)) if np.isfinite(p_enter).any() else None
    summary = {
        "epochs_recorded": len(epochs),
        "final_epoch": int(epochs[-1]),
        "fpr": s.fpr,
        "realised_fpr_final": rates["realised"][-1],
        "vulnerable_share_final": float((cells[-1] == vul).sum() / max(defined[-1].sum(), 1)),
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
        "early_share": float(plane["early"][early_idx]),
        "early_share_epoch": int(epochs[early_idx]),
    }
    for name, c in corr.items():
        summary[f"pearson_{name}"] = c["pearson"]
        summary[f"spearman_{name}"] = c["spearman"]
    return summary


def analyze(
    logits: np.ndarray,
    epochs: list[int],
    labels: np.ndarray,
    masks: np.ndarray,
    s: DynamicsSettings,
    final_epoch: int,
    extras: dict[str, np.ndarray] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """``logits[K, E, N, A, C]`` snapshots of K models at ``epochs`` -> (the dynamics.json content, the per-record
    arrays). ``extras``: per-model hardness measured at fit end (``grad_norm``, ``mc_dropout_mi``), ``[K, N]``."""
    rates = checkpoint_rates(logits, labels, masks, make_attack(s), s.fpr)
    tpr, fpr = rates["tpr"], rates["fpr"]
    plane = plane_figures(tpr, fpr, s.edges, s.entropy_bins)
    advantage = tpr - fpr
    final_vulnerable = plane["cells"][-1] == plane["vulnerable"]
    measures, corr_all, corr_vul = hardness_figures(
        logits, labels, masks, s.hardness.models, extras or {}, advantage[-1], final_vulnerable)
    summary = summarize(rates, plane, epochs, s, final_epoch, corr_all)
    report = build_report(rates, plane, epochs, s, logits.shape, summary, measures, corr_all, corr_vul,
                          int(final_vulnerable.sum()))
    records = {
        "epochs": np.asarray(epochs, dtype=np.int64),
        "labels": labels,
        "tpr": tpr.astype(np.float32),
        "fpr": fpr.astype(np.float32),
        "advantage": advantage.astype(np.float32),
        "cell": plane["cells"].astype(np.int8),
        "final_vulnerable": final_vulnerable,
        **{f"hardness_{name}": v.astype(np.float32) for name, v in measures.items()},
    }
    return report, records


def build_report(rates: dict, plane: dict, epochs: list[int], s: DynamicsSettings, shape: tuple, summary: dict,
                 measures: dict, corr_all: dict, corr_vul: dict, n_vulnerable: int) -> dict:
    """The content of dynamics.json."""
    tpr, fpr, cells, vul = rates["tpr"], rates["fpr"], plane["cells"], plane["vulnerable"]
    defined = cells >= 0
    return {
        "description": "per-record privacy dynamics across training epochs; see README 'Privacy dynamics'",
        "config": {
            "attack": s.attack, "fpr": s.fpr, "edges": s.edges.tolist(), "entropy_bins": s.entropy_bins,
            "queries": s.queries, "hardness_models": s.hardness.models, "num_models": int(shape[0]),
            "num_records": int(shape[2]),
        },
        "epochs": [int(x) for x in epochs],
        "grid": {"size": plane["grid"], "cells": cell_labels(plane["grid"]), "vulnerable_cell": vul},
        "summary": summary,
        "per_epoch": {
            "threshold": rates["thresholds"],
            "realised_fpr": rates["realised"],
            "mean_tpr": np.nanmean(tpr, 1).tolist(),
            "mean_fpr": np.nanmean(fpr, 1).tolist(),
            "mean_advantage": np.nanmean(tpr - fpr, 1).tolist(),
            "vulnerable_share": ((cells == vul).sum(1) / np.maximum(defined.sum(1), 1)).tolist(),
            "occupancy": plane["occupancy"].tolist(),
            "com_fpr_pp": plane["com"][:, 0].tolist(),
            "com_tpr_pp": plane["com"][:, 1].tolist(),
            "entropy_bits": plane["entropy"].tolist(),
            "early_identification": plane["early"].tolist(),
        },
        "transitions": {
            "from_epoch": [int(x) for x in epochs[:-1]],
            "to_epoch": [int(x) for x in epochs[1:]],
            "enter_vulnerable": plane["p_enter"].tolist(),
            "counts": plane["counts"].tolist(),
            "probabilities": V.row_normalize(plane["counts"]).tolist(),
            "pooled_probabilities": V.row_normalize(plane["counts"].sum(0)).tolist(),
        },
        "hardness": {
            "target": "final advantage TPR_i - FPR_i",
            "measures": sorted(measures),
            "correlations_all": corr_all,
            "correlations_vulnerable": corr_vul,
            "n_vulnerable": n_vulnerable,
        },
    }


# ------------------------------------------------------------------------------------------------ inputs, outputs
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


def write_outputs(report: dict, records: dict[str, np.ndarray], out: Path, plots: bool = True) -> None:
    from mia_bench.dynamics import plots as P

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dynamics.json", report, strict=True, indent=1)
    buf = io.BytesIO()
    np.savez_compressed(buf, **records)
    atomic_write_bytes(out / "dynamics_records.npz", buf.getvalue())
    if plots:
        P.plot_all(report, records, out)

"""Figures across runs: the privacy-utility scatter and per-dataset ROC overlays (one curve per defense)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from mia_bench.atomic import save_figure  # noqa: E402
from mia_bench.report.aggregate import METRICS, STRONGEST, defense_order, pick_attack, row_keys  # noqa: E402
from mia_bench.report.outputs import loglog_roc_axes  # noqa: E402

log = logging.getLogger(__name__)
MARKERS = "osD^vP*Xh<>p"


def _colors(defenses: list[str]) -> dict[str, tuple]:
    cmap = plt.cm.tab10 if len(defenses) <= 10 else plt.cm.tab20
    return {d: cmap(i % cmap.N) for i, d in enumerate(defenses)}


def _group_label(row: pd.Series, keys: list[str]) -> str:
    """What a marker stands for: dataset (and model, and whatever else varies) of a run."""
    return " / ".join(str(row[k]) for k in keys)


def privacy_utility_scatter(
    df: pd.DataFrame,
    path: str | Path,
    metric: str = "tpr_at_fpr_0.01",
    attack: str = STRONGEST,
    x: str = "attack",
    order=None,
) -> pd.DataFrame:
    """Test accuracy (y) against the attack metric (x = ``attack``) or against the privacy budget epsilon
    (x = ``epsilon``, runs without DP at the right edge, marked ∞), one point per run, error bars = std over
    target models; one colour per defense, one marker per dataset (x model, ...). Returns the plotted points."""
    if x not in ("attack", "epsilon"):
        raise ValueError(f"--x {x!r}: expected 'attack' or 'epsilon'")
    pts = pick_attack(df, attack, metric).copy()
    label, pct = METRICS[metric]
    scale = 100.0 if pct else 1.0
    pts["_y"], pts["_yerr"] = 100 * pts["test_acc_mean"], 100 * pts.get("test_acc_std", 0.0)
    chance, right = None, None
    if x == "attack":
        pts["_x"], pts["_xerr"] = scale * pts[f"{metric}_mean"], scale * pts.get(f"{metric}_std", 0.0)
        chance = {"auc": 0.5, "advantage": 0.0, "balanced_accuracy": 50.0, "attack_accuracy": 50.0}.get(metric)
        if metric.startswith("tpr_at_fpr_"):
            chance = scale * float(metric.removeprefix("tpr_at_fpr_"))  # TPR = FPR
        what = "strongest attack" if attack == STRONGEST else attack
        xlabel = f"{label}, {what}  (← more private)"
    else:
        if "defense/epsilon" not in pts.columns or pts["defense/epsilon"].notna().sum() == 0:
            raise ValueError("--x epsilon: no run reports defense/epsilon (only DP defenses such as dpsgd do)")
        eps = pts["defense/epsilon"].astype(float)
        finite = eps[np.isfinite(eps)]
        right = float(finite.max()) * 4 if len(finite) else 100.0  # where runs without DP (epsilon = inf) go
        pts["_x"], pts["_xerr"] = eps.where(np.isfinite(eps), right).fillna(right), 0.0
        xlabel = "privacy budget ε (no DP: ∞)  (← more private)"
    defenses = defense_order(pts["defense"].astype(str).unique(), order)
    colors = _colors(defenses)
    keys = row_keys(pts)
    groups = sorted({_group_label(r, keys) for _, r in pts.iterrows()})
    markers = {g: MARKERS[i % len(MARKERS)] for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for _, r in pts.iterrows():
        ax.errorbar(
            r["_x"], r["_y"], xerr=r["_xerr"], yerr=r["_yerr"], fmt=markers[_group_label(r, keys)],
            color=colors[str(r["defense"])], ms=7, capsize=2, lw=1,
        )
    if chance is not None:
        ax.axvline(chance, ls="--", color="gray", lw=1)
    if right is not None:
        ax.set_xscale("log")
        lo = float(pts["_x"].min()) / 2
        ax.set_xlim(lo, right * 1.5)
        ticks = sorted({float(f"{t:.2g}") for t in pts["_x"] if t < right})  # the budgets of the runs themselves
        ticks = ticks if len(ticks) <= 8 else list(np.geomspace(ticks[0], ticks[-1], 6).round(2))
        ax.axvline(right / 2, color="lightgray", lw=0.8)
        ax.set_xticks([*ticks, right], [*(f"{t:g}" for t in ticks), "∞"])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    handles = [Line2D([], [], ls="", marker="o", color=colors[d], label=d) for d in defenses]
    if len(groups) > 1:
        handles += [Line2D([], [], ls="", marker=markers[g], color="black", label=g) for g in groups]
    if chance is not None:
        handles.append(Line2D([], [], ls="--", color="gray", label="chance"))
    ax.legend(handles=handles, fontsize=7, loc="best", ncol=2 if len(handles) > 12 else 1)
    ax.set_ylabel("test accuracy (%)  (↑ more useful)")
    title = "privacy–utility" + (f": {groups[0]}" if len(groups) == 1 else "")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, Path(path))
    return pts


def load_roc(run_dir: str | Path, attack: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One attack's ROC from a run's ``roc_curves.npz`` (written by the pipeline next to roc.png), or None."""
    f = Path(run_dir) / "roc_curves.npz"
    if not f.exists():
        return None
    with np.load(f) as z:
        if f"{attack}/fpr" not in z.files:
            return None
        return z[f"{attack}/fpr"], z[f"{attack}/tpr"]


def roc_overlays(
    df: pd.DataFrame, out_dir: str | Path, metric: str = "tpr_at_fpr_0.01", attack: str = STRONGEST, order=None
) -> list[Path]:
    """``roc_<dataset>.png``: per dataset, one log-log ROC per defense (and model, ...) of the chosen attack (with
    ``strongest``: each run's strongest by ``metric``), read from the runs' ``roc_curves.npz``. Returns the files."""
    picked = pick_attack(df, attack, metric)
    written = []
    for dataset, g in picked.groupby("dataset", sort=True):
        keys = [k for k in row_keys(g) if k != "dataset"]
        curves, missing = [], []
        for _, r in g.iterrows():
            roc = load_roc(r["run_dir"], str(r["attack"]))
            if roc is None:
                missing.append(str(r["run_dir"]))
            else:
                curves.append((r, roc))
        if missing:
            log.warning(
                "%s: %d run(s) without the attack's curve in roc_curves.npz (runs older than that file?) left out of "
                "the ROC overlay: %s", dataset, len(missing), ", ".join(missing),
            )
        if not curves:
            continue
        defenses = defense_order({str(r["defense"]) for r, _ in curves}, order)
        colors = _colors(defenses)
        several = len({_group_label(r, keys) for r, _ in curves}) > 1
        styles = ["-", "--", ":", "-."]
        style_of = {lab: styles[i % 4] for i, lab in enumerate(sorted({_group_label(r, keys) for r, _ in curves}))}
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for r, (fpr, tpr) in sorted(curves, key=lambda c: defenses.index(str(c[0]["defense"]))):
            label = str(r["defense"])
            if several:
                label += f" ({_group_label(r, keys)})"
            if attack == STRONGEST:
                label += f" [{r['attack']}]"
            ax.plot(fpr, tpr, lw=1.4, color=colors[str(r["defense"])], ls=style_of[_group_label(r, keys)], label=label)
        what = "strongest attack per run" if attack == STRONGEST else attack
        loglog_roc_axes(ax, f"{dataset}: {what}, one curve per defense")
        fig.tight_layout()
        path = Path(out_dir) / f"roc_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(dataset))}.png"
        save_figure(fig, path)
        written.append(path)
    return written

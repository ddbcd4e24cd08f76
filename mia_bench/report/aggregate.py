"""Aggregating finished runs: every ``metrics.json`` under some directories becomes one flat table (one row per
run x attack), from which the CSV summary and the markdown tables are cut."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


def collect(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All records of every ``metrics.json`` found under ``paths`` (files or directories, searched recursively),
    with the run directory in a ``run_dir`` column. A run without metrics (still running, failed) is skipped with a
    warning naming it."""
    rows = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run directory or metrics.json")
        files = [path] if path.is_file() else sorted(path.rglob("metrics.json"))
        if path.is_dir():
            for cfg in sorted(path.rglob("config.yaml")):
                if not (cfg.parent / "metrics.json").exists() and cfg.parent.name != ".hydra":
                    log.warning("%s: no metrics.json (unfinished or failed run), skipped", cfg.parent)
        for f in files:
            try:
                records = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e}); delete or re-run that job") from e
            rows += [{**r, "run_dir": str(f.parent)} for r in records]
    if not rows:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, paths))}")
    return pd.DataFrame(rows)


def mean_std(row: pd.Series, key: str, pct: bool = False, digits: int | None = None) -> str:
    """``mean ± std`` of a metric from its ``_mean``/``_std`` columns (in percent with ``pct``)."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale = 100.0 if pct else 1.0
    digits = digits if digits is not None else (1 if pct else 3)
    out = f"{mean * scale:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        out += f" ± {std * scale:.{digits}f}"
    return out


def privacy_utility_table(
    df: pd.DataFrame,
    attacks: Sequence[str] = ("loss", "lira_online", "rmia"),
    order: Sequence[str] | None = None,
    reference: str = "none",
    z: float = 2.0,
) -> str:
    """Markdown: one row per (dataset, model, defense); test accuracy, then AUC and TPR at 1% FPR of each attack,
    mean ± std over target models; whether each attack's AUC is below the ``reference`` (undefended) cell's; and
    defense-reported figures (epsilon, sparsity) in the last column."""
    header = ["dataset", "model", "defense", "test acc (%)"]
    for a in attacks:
        header += [f"{a} AUC", f"{a} TPR@1%FPR (%)"]
    header += [f"AUC vs {reference}", "defense reports"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["dataset", "model", "defense"]
    baseline = {
        (str(r["dataset"]), str(r["model"]), str(r["attack"])): r
        for _, r in df[df["defense"].astype(str) == reference].iterrows()
    }
    rank = {d: i for i, d in enumerate(defense_order(df["defense"].astype(str).unique(), order))}
    groups = sorted(df.groupby(keys, sort=False), key=lambda kv: (kv[0][0], kv[0][1], rank[str(kv[0][2])]))
    for (dataset, model, defense), g in groups:
        by_attack = {r["attack"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        cells = [str(dataset), str(model), str(defense), mean_std(first, "test_acc", pct=True)]
        for a in attacks:
            r = by_attack.get(a)
            cells += (
                ["–", "–"] if r is None else [mean_std(r, "auc"), mean_std(r, "tpr_at_fpr_0.01", pct=True, digits=2)]
            )
        if str(defense) == reference:
            cells.append("(reference)")
        else:
            marks = []
            for a in attacks:
                r, b = by_attack.get(a), baseline.get((str(dataset), str(model), a))
                marks.append("–" if r is None or b is None else compare_to_reference(r, b, "auc", z))
            cells.append(" ".join(marks))
        extra = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("defense/") and pd.notna(v)}
        cells.append(", ".join(f"{k} {_short(v)}" for k, v in extra.items()) or "")
        lines.append("| " + " | ".join(cells) + " |")
    legend = (
        f"\n*AUC vs {reference}*: per attack ({', '.join(attacks)}), the defense's AUC is lower (↓), higher (↑) "
        f"or within {z:g} standard errors (=) of the undefended cell's; standard errors from the std over target "
        "models. ↓ everywhere means the defense reduces the leak these attacks measure; = or ↑ means it does not.\n"
    )
    return "\n".join(lines) + "\n" + legend


def compare_to_reference(row: pd.Series, ref: pd.Series, metric: str = "auc", z: float = 2.0) -> str:
    """``↓``, ``↑`` or ``=``: is ``row``'s mean metric below, above, or within ``z`` standard errors of ``ref``'s?

    The standard error of the difference is ``sqrt(s1^2/n1 + s2^2/n2)`` from each cell's std over its ``n_targets``
    target models (a Welch-style comparison: the two cells' targets are different trained models)."""
    m1, s1, n1 = (
        float(row.get(f"{metric}_mean")),
        float(row.get(f"{metric}_std") or 0.0),
        int(row.get("n_targets") or 1),
    )
    m2, s2, n2 = (
        float(ref.get(f"{metric}_mean")),
        float(ref.get(f"{metric}_std") or 0.0),
        int(ref.get("n_targets") or 1),
    )
    se = math.sqrt(s1**2 / n1 + s2**2 / n2)
    diff = m1 - m2
    if se == 0.0:
        return "=" if diff == 0.0 else ("↓" if diff < 0 else "↑")
    return "↓" if diff < -z * se else "↑" if diff > z * se else "="


def _short(v: float) -> str:
    v = float(v)
    return f"{v:.0f}" if v.is_integer() and abs(v) >= 10 else f"{v:.3g}"


# Metrics a pivot cell / the scatter can show: column prefix -> (label, shown in percent).
METRICS = {
    "tpr_at_fpr_0.01": ("TPR@1%FPR (%)", True),
    "tpr_at_fpr_0.001": ("TPR@0.1%FPR (%)", True),
    "auc": ("AUC", False),
    "advantage": ("advantage", False),
    "balanced_accuracy": ("balanced acc (%)", True),
    "attack_accuracy": ("attack acc (%)", True),
}
STRONGEST = "strongest"
# Columns that identify a cell besides dataset/model/defense when a sweep varies them (e.g. train=cifar vs default).
_ROW_CANDIDATES = ("num_models", "seed", "null_test")
_NOT_ROW = {"choice/dataset", "choice/model", "choice/defense", "choice/attack", "choice/logger", "choice/paths"}


def check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if f"{metric}_mean" not in df.columns:
        raise ValueError(f"--metric {metric!r}: no {metric}_mean column in these runs")


def pick_attack(df: pd.DataFrame, attack: str, metric: str) -> pd.DataFrame:
    """One row per run: the record of ``attack``, or with ``attack='strongest'`` the attack with the highest mean
    ``metric`` in that run (the worst case a defense has to face). Runs without that attack are dropped."""
    check_metric(df, metric)
    if attack == STRONGEST:
        ranked = df.assign(_v=df[f"{metric}_mean"].fillna(-math.inf)).sort_values("_v", ascending=False, kind="stable")
        return ranked.drop_duplicates("run_dir").drop(columns="_v").sort_values("run_dir").reset_index(drop=True)
    if attack not in set(df["attack"]):
        have = ", ".join(sorted(set(df["attack"])))
        raise ValueError(f"--attack {attack!r}: not among the attacks of these runs ({have}) nor 'strongest'")
    return df[df["attack"] == attack].reset_index(drop=True)


def row_keys(df: pd.DataFrame) -> list[str]:
    """dataset, model, then every other choice or count that differs between the runs (so two cells that differ
    only in e.g. ``train=`` or ``num_models`` get their own rows instead of colliding)."""
    keys = ["dataset", "model"]
    extra = [c for c in df.columns if c.startswith("choice/") and c not in _NOT_ROW] + list(_ROW_CANDIDATES)
    for c in extra:
        if c in df.columns and df[c].astype(str).nunique(dropna=False) > 1:
            keys.append(c)
    return keys


def defense_order(defenses, order: Sequence[str] | None = None) -> list[str]:
    """``order`` first, then the others alphabetically with ``none`` (the baseline) leading."""
    order = [d for d in (order or []) if d in set(defenses)]
    rest = sorted(set(defenses) - set(order), key=lambda d: (d != "none", d))
    return order + rest


def interval(row: pd.Series, metric: str) -> str:
    """``mean [ci_low, ci_high]`` (the bootstrap interval), or ``mean ± std`` when the run has no interval."""
    _, pct = METRICS[metric]
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    mean = row.get(f"{metric}_mean")
    if mean is None or pd.isna(mean):
        return "–"
    lo, hi = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
        return f"{mean * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return mean_std(row, metric, pct=pct, digits=digits)


def pivot_table(
    df: pd.DataFrame,
    metric: str = "tpr_at_fpr_0.01",
    attack: str = STRONGEST,
    order: Sequence[str] | None = None,
) -> str:
    """Markdown pivot: one row per dataset x model (x whatever else the sweep varied), one column per defense;
    a cell is the attack metric with its bootstrap interval, then the test accuracy, e.g.
    ``2.7 [1.9, 3.6] · 96.5%`` (with ``attack='strongest'`` the winning attack is named in the cell)."""
    picked = pick_attack(df, attack, metric)
    keys = row_keys(picked)
    defenses = defense_order(picked["defense"].astype(str).unique(), order)
    label, _ = METRICS[metric]
    what = "strongest attack per cell" if attack == STRONGEST else attack
    lines = [
        f"{label} of the {what} [95% bootstrap interval] · test accuracy",
        "",
        "| " + " | ".join([k.removeprefix("choice/") for k in keys] + defenses) + " |",
        "|" + "---|" * (len(keys) + len(defenses)),
    ]
    if "confidence" in picked.columns and picked["confidence"].notna().any():
        lines[0] = lines[0].replace("95%", f"{100 * float(picked['confidence'].dropna().iloc[0]):.0f}%")
    for key, g in picked.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key]
        for d in defenses:
            runs = g[g["defense"].astype(str) == d]
            if runs.empty:
                cells.append("–")
                continue
            if len(runs) > 1:
                log.warning(
                    "%s / %s: %d runs (%s); the table shows the last", key, d, len(runs), ", ".join(runs.run_dir)
                )
            r = runs.sort_values("run_dir").iloc[-1]
            cell = f"{interval(r, metric)} · {100 * r['test_acc_mean']:.1f}%"
            if attack == STRONGEST:
                cell += f" ({r['attack']})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""Aggregating finished runs: every ``metrics.json`` under some directories becomes one flat table (one row per
run x attack), from which the CSV summary and the markdown tables are cut."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mia_bench.cache.keys import MODEL_NEUTRAL_KEYS

log = logging.getLogger(__name__)


#: Config keys that never tell two cells apart, by reason (each covers the keys under it: ``paths`` covers
#: ``paths.output_dir``). First the recipe keys that do not change the models: the cache's own table
#: (:data:`~mia_bench.cache.keys.MODEL_NEUTRAL_KEYS`), so runs that share their models share their cell.
#: Where a run reads, writes and logs:
LOCATION_KEYS = ("paths", "logger", "cache", "data", "hydra")
#: How a run is executed and shown, not what it computes (the same figures either way):
EXECUTION_KEYS = ("shard", "cpu_threads", "jobs_per_gpu", "signals.batch_size", "progress", "figures")
#: The attacks: each record names its attack, and the tables give every attack its own column.
ATTACK_KEYS = ("attack",)
IGNORED_KEYS = (*MODEL_NEUTRAL_KEYS, *LOCATION_KEYS, *EXECUTION_KEYS, *ATTACK_KEYS)
#: Keys whose runs are repetitions of one cell: averaged over (mean and spread across seeds), not rows of their own.
SEED_KEYS = ("cfg/seed", "cfg/membership.seed")
CFG = "cfg/"


def _flatten(node, prefix: str = "") -> dict:
    out = {}
    for key, value in (node or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def ignored(key: str) -> bool:
    """Whether the dotted config ``key`` is one of :data:`IGNORED_KEYS` or under one."""
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def _run_config(run_dir: Path) -> dict:
    """The run's resolved config (``config.yaml``), flattened to ``cfg/<dotted key>`` columns ({} without one)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # noqa: BLE001 - a damaged config makes the run anonymous, not the report fail
        log.warning("%s: unreadable (%s); the run's config is not used to tell cells apart", path, err)
        return {}
    return {f"{CFG}{k}": v for k, v in _flatten(node).items() if not ignored(k)}


def collect(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All records of every ``metrics.json`` found under ``paths`` (files or directories, searched recursively),
    with the run directory (``run_dir``), the time it was written (``written``) and the run's config values
    (``cfg/<key>``). A run without metrics (still running, failed) is skipped with a warning naming it."""
    rows, failed = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run directory or metrics.json")
        files = [path] if path.is_file() else sorted(path.rglob("metrics.json"))
        if path.is_dir():
            for marker in sorted(path.rglob("failed.json")):
                run = marker.parent
                if (run / "metrics.json").exists():
                    continue  # failed once, finished on a rerun
                failure = json.loads(marker.read_text())
                failed.append({"run_dir": str(run), "status": "failed", **failure})
                log.warning("%s: failed while %s: %s: %s", run, failure.get("stage"), failure.get("error"),
                            failure.get("message"))
            for cfg in sorted(path.rglob("config.yaml")):
                run = cfg.parent
                if not any((run / f).exists() for f in ("metrics.json", "failed.json")) and run.name != ".hydra":
                    log.warning("%s: no metrics.json (unfinished run), skipped", run)
        for f in files:
            try:
                records = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e}); delete or re-run that job") from e
            extra = {"run_dir": str(f.parent), "written": f.stat().st_mtime, **_run_config(f.parent)}
            rows += [{**r, **extra} for r in records]
    if not rows:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, paths))}")
    df = pd.DataFrame(rows)
    df.attrs["failed"] = failed  # jobs that failed: listed under the tables and in summary.csv
    return df


def failed_footer(df: pd.DataFrame) -> str:
    """Markdown lines naming the jobs that failed (empty when none did)."""
    failed = df.attrs.get("failed") or []
    if not failed:
        return ""
    lines = [f"\n**{len(failed)} job(s) failed** (no figures above):\n"]
    lines += [f"- `{f['run_dir']}`: {f.get('error')}: {f.get('message')} (while {f.get('stage')})" for f in failed]
    return "\n".join(lines) + "\n"


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The ``cfg/`` columns whose values differ between the runs (seeds aside): with dataset, model and defense,
    what identifies a cell."""
    cols = [c for c in df.columns if c.startswith(CFG) and c not in SEED_KEYS]
    return [c for c in cols if df[c].astype(str).nunique(dropna=False) > 1]


def cell_keys(df: pd.DataFrame) -> list[str]:
    """dataset, model, defense, and every Hydra choice and config value that differs between the runs."""
    choices = [c for c in df.columns if c.startswith("choice/") and c not in _NOT_ROW
               and df[c].astype(str).nunique(dropna=False) > 1]
    return ["dataset", "model", "defense", *choices, *swept_keys(df)]


def shown_keys(df: pd.DataFrame) -> list[str]:
    """The columns a table shows besides dataset, model and defense: what a sweep varied independently of them.
    A Hydra choice (``choice/train``) stands for the config keys of its group; a key that differs under the same
    choice (``train.epochs=2,4``) shows itself. Keys that change only with the defense (its own settings) are the
    defense's column."""
    base = ["dataset", "model", "defense"]
    candidates = [c for c in df.columns if c.startswith("choice/") and c not in _NOT_ROW] + swept_keys(df)
    varying = [c for c in candidates
               if df.astype({c: str}).groupby(base, dropna=False)[c].nunique(dropna=False).max() > 1]
    choices = [c for c in varying if c.startswith("choice/")]
    covered = {c.removeprefix("choice/") for c in choices}
    return choices + [c for c in varying if c.startswith(CFG) and c.removeprefix(CFG).split(".")[0] not in covered]


_WARNED_REPEATS: set[str] = set()


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell x attack. Identical reruns (same cell, same seed) keep the latest, with a warning naming
    the others; runs of a cell with different seeds are averaged: every ``<metric>_mean`` is the mean over seeds,
    ``<metric>_seed_std`` their spread (sample std) and ``n_seeds`` their count. A cell's accuracy and attack
    figures always come from the same runs."""
    if "run_dir" not in df.columns:  # records without their run (built by hand): one run per cell
        df = df.assign(run_dir="")
    keys = cell_keys(df)
    seed = next((c for c in SEED_KEYS if c in df.columns), "seed" if "seed" in df.columns else None)
    run_keys = [*keys, *([seed] if seed else [])]
    latest = df.sort_values("written", kind="stable") if "written" in df.columns else df
    runs = latest.drop_duplicates("run_dir", keep="last")
    dup = runs[runs.duplicated(run_keys, keep="last")] if run_keys else runs.iloc[0:0]
    for _, r in dup.iterrows():  # once per run, although the report aggregates for each of its tables
        if r["run_dir"] not in _WARNED_REPEATS:
            _WARNED_REPEATS.add(r["run_dir"])
            log.warning("%s repeats an identical run (same config and seed): the latest is reported", r["run_dir"])
    kept = set(runs.drop_duplicates(run_keys, keep="last")["run_dir"]) if run_keys else set(runs["run_dir"])
    df = latest[latest["run_dir"].isin(kept)]
    groups = df.groupby([*keys, "attack"], sort=False, dropna=False)
    out = groups.first().reset_index()  # text columns agree within a cell (dataset, choices, ...)
    n = groups["run_dir"].nunique().to_numpy()
    out["n_seeds"] = n
    rest = [c for c in df.columns if c not in (*keys, "attack")]
    flags = [c for c in rest if pd.api.types.is_bool_dtype(df[c])]
    numeric = [c for c in rest if c not in flags and pd.api.types.is_numeric_dtype(df[c])]
    cols: dict[str, np.ndarray] = {}
    for c in numeric:  # every figure averaged over the same runs
        cols[c] = groups[c].mean().to_numpy()
        if c.endswith("_mean"):
            cols[f"{c[: -len('_mean')]}_seed_std"] = np.where(n > 1, groups[c].std(ddof=1).to_numpy(), np.nan)
    for c in flags:  # e.g. tpr_at_fpr_0.001_resolved: true only if true in every run
        cols[c] = groups[c].all().to_numpy()
    cols["run_dir"] = groups["run_dir"].agg(lambda d: ", ".join(sorted(set(d)))).to_numpy()
    return pd.concat([out.drop(columns=[c for c in cols if c in out.columns]), pd.DataFrame(cols)], axis=1)


def unresolved(row: pd.Series, metric: str) -> bool:
    """Whether a TPR-at-FPR figure is flagged as TPR at zero false positives (``<metric>_resolved`` false)."""
    v = row.get(f"{metric}_resolved")
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and not bool(v)


def mean_std(row: pd.Series, key: str, pct: bool = False, digits: int | None = None) -> str:
    """``mean ± std`` of a metric (in percent with ``pct``): the std over target models of one run, or, for a cell
    averaged over several seeds (:func:`aggregate`), the spread across seeds."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if (row.get("n_seeds") or 1) > 1:
        std = row.get(f"{key}_seed_std")
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
    alpha: float = 0.05,
) -> str:
    """Markdown: one row per (dataset, model, defense); test accuracy, then AUC and TPR at 1% FPR of each attack,
    mean ± std over target models; whether each attack's AUC is below the ``reference`` (undefended) cell's; and
    defense-reported figures (epsilon, sparsity) in the last column."""
    shown = shown_keys(df)
    cells_df = aggregate(df)
    seeds = "n_seeds" in cells_df.columns and (cells_df["n_seeds"] > 1).any()
    header = ["dataset", "model", *[k.split("/", 1)[1] for k in shown], "defense", *(["seeds"] if seeds else []),
              "test acc (%)"]
    for a in attacks:
        header += [f"{a} AUC", f"{a} TPR@1%FPR (%)"]
    eps = "eps_lower_bound" in cells_df.columns
    header += [f"AUC vs {reference}", *(["ε ≥ (strongest)"] if eps else []), "defense reports"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = cell_keys(cells_df)

    def context(row) -> tuple:  # the cell's coordinates besides the defense (what the reference must share)
        return tuple(str(row[k]) for k in ("dataset", "model", *shown))

    baseline = {(*context(r), str(r["attack"])): r
                for _, r in cells_df[cells_df["defense"].astype(str) == reference].iterrows()}
    rank = {d: i for i, d in enumerate(defense_order(cells_df["defense"].astype(str).unique(), order))}
    groups = sorted(cells_df.groupby(keys, sort=False, dropna=False),
                    key=lambda kv: (*context(kv[1].iloc[0]), rank[str(kv[0][2])]))
    flagged = False
    for key, g in groups:
        dataset, model, defense = key[:3]
        by_attack = {r["attack"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        ruined = ruined_models(first, baseline.get((*context(first), str(first["attack"]))))
        flagged = flagged or ruined
        cells = [str(dataset), str(model), *[str(first[k]) for k in shown], str(defense),
                 *([str(int(first["n_seeds"]))] if seeds else []),
                 mean_std(first, "test_acc", pct=True) + (" ⚠" if ruined else "")]
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
                r, b = by_attack.get(a), baseline.get((*context(first), a))
                marks.append("–" if r is None or b is None else compare_to_reference(r, b, "auc", alpha))
            cells.append(" ".join(marks))
        if eps:
            bounds = g.dropna(subset=["eps_lower_bound"])
            top = bounds.loc[bounds["eps_lower_bound"].idxmax()] if len(bounds) else None
            cells.append("–" if top is None else f"{top['eps_lower_bound']:.2f} ({top['attack']})")
        extra = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("defense/") and pd.notna(v)}
        cells.append(", ".join(f"{k} {_short(v)}" for k, v in extra.items()) or "")
        lines.append("| " + " | ".join(cells) + " |")
    legend = table_legend(reference, attacks, alpha, eps, seeds, flagged)
    return "\n".join(lines) + "\n" + legend


def table_legend(reference: str, attacks: Sequence[str], alpha: float, eps: bool, seeds: bool, flagged: bool) -> str:
    """The privacy-utility table's legend: what its marks mean."""
    legend = (
        f"\n*AUC vs {reference}*: per attack ({', '.join(attacks)}), the defense's AUC is lower (↓) or higher (↑) "
        f"than the undefended cell's by Welch's t-test over the target models (p < {alpha:g}), or not "
        "distinguishable (=); the p-values are in summary.csv (`auc_vs_none_p`). ↓ everywhere means the defense "
        "reduces the leak these attacks measure; = or ↑ means it does not.\n"
    )
    if eps:
        legend += ("*ε ≥*: the largest empirical epsilon lower bound over the cell's attacks, with the attack that "
                   "gave it (a weak attack can: the bound rests on its few most confident hits), at the run's delta "
                   "(95% Clopper-Pearson, threshold from the shadow model; docs/protocol.md); for DP-SGD the "
                   "accountant's epsilon is under defense reports.\n")
    if flagged:
        legend += (f"*⚠*: the models' test accuracy is more than {100 * RUINED_DROP:.0f} points below the undefended "
                   "cell's, or the run warned that they did not learn: lower attack figures there come with ruined "
                   "models and are no evidence of protection.\n")
    if seeds:
        legend += ("*seeds*: runs of the cell with different seeds; its figures are their mean ± their spread (sample "
                   "std across seeds).\n")
    return legend


#: How far (absolute) a defended cell's mean test accuracy may fall below the undefended cell's before the table
#: flags its models as ruined.
RUINED_DROP = 0.10


def ruined_models(row: pd.Series, ref: pd.Series | None) -> bool:
    """The cell's models are far below the undefended cell's test accuracy, or its run warned they did not learn."""
    note = str(row.get("warnings", ""))
    warned = "did not learn" in note or "accuracy far below" in note
    if ref is None or ref is row or "test_acc_mean" not in row:
        return bool(warned)
    return bool(warned or row["test_acc_mean"] < ref["test_acc_mean"] - RUINED_DROP)


def welch(row: pd.Series, ref: pd.Series, metric: str = "auc") -> tuple[float, float]:
    """``(difference, p)``: ``row``'s mean metric minus ``ref``'s, and the two-sided p-value of Welch's t-test
    (``scipy.stats.ttest_ind_from_stats``, unequal variances) from each cell's mean, std and number of target models
    (the two cells' targets are different trained models). p is NaN when a cell has a single target; with no
    spread in either cell a difference is certain (p = 0) and equality is not (p = 1)."""
    from scipy.stats import ttest_ind_from_stats

    m1, m2 = float(row.get(f"{metric}_mean")), float(ref.get(f"{metric}_mean"))
    s1, s2 = float(row.get(f"{metric}_std") or 0.0), float(ref.get(f"{metric}_std") or 0.0)
    n1, n2 = int(row.get("n_targets") or 1), int(ref.get("n_targets") or 1)
    diff = m1 - m2
    if n1 < 2 or n2 < 2 or math.isnan(s1) or math.isnan(s2):
        return diff, float("nan")
    if s1 == 0.0 and s2 == 0.0:
        return diff, 1.0 if diff == 0.0 else 0.0
    return diff, float(ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue)


def compare_to_reference(row: pd.Series, ref: pd.Series, metric: str = "auc", alpha: float = 0.05) -> str:
    """``↓``, ``↑`` or ``=``: is ``row``'s mean metric below or above ``ref``'s by Welch's test at level ``alpha``
    (:func:`welch`), or not distinguishable from it?"""
    diff, p = welch(row, ref, metric)
    if math.isnan(p) or p >= alpha:
        return "="
    return "↓" if diff < 0 else "↑"


def versus_reference(df: pd.DataFrame, reference: str = "none", metric: str = "auc") -> pd.DataFrame:
    """Per cell and attack (:func:`aggregate`): ``<metric>_vs_<reference>_diff`` and ``_p`` (Welch) against the
    ``reference`` cell with the same coordinates besides the defense; for summary.csv."""
    cells = aggregate(df)
    keys = cell_keys(cells)
    context = ["dataset", "model", *shown_keys(df)]
    ref = {tuple(str(r[k]) for k in (*context, "attack")): r
           for _, r in cells[cells["defense"].astype(str) == reference].iterrows()}
    rows = []
    for _, r in cells.iterrows():
        b = ref.get(tuple(str(r[k]) for k in (*context, "attack")))
        diff, p = welch(r, b, metric) if b is not None and str(r["defense"]) != reference else (np.nan, np.nan)
        rows.append({**{k: r[k] for k in (*keys, "attack")}, f"{metric}_vs_{reference}_diff": diff,
                     f"{metric}_vs_{reference}_p": p})
    return pd.DataFrame(rows)


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
    """dataset, model, then what the runs vary independently of the defense (:func:`shown_keys`), so that two
    cells differing only in e.g. ``train=`` or ``num_models`` get their own rows instead of colliding."""
    return ["dataset", "model", *shown_keys(df)]


def defense_order(defenses, order: Sequence[str] | None = None) -> list[str]:
    """``order`` first, then the others alphabetically with ``none`` (the baseline) leading."""
    order = [d for d in (order or []) if d in set(defenses)]
    rest = sorted(set(defenses) - set(order), key=lambda d: (d != "none", d))
    return order + rest


def interval(row: pd.Series, metric: str) -> str:
    """``mean [ci_low, ci_high]`` (the bootstrap interval), ``mean ± std`` when the run has no interval, or for a cell
    averaged over seeds ``mean ± spread (n seeds)``."""
    _, pct = METRICS[metric]
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    mean = row.get(f"{metric}_mean")
    if mean is None or pd.isna(mean):
        return "–"
    if (row.get("n_seeds") or 1) > 1:
        return f"{mean_std(row, metric, pct=pct, digits=digits)} ({int(row['n_seeds'])} seeds)"
    flag = " ‡" if unresolved(row, metric) else ""  # TPR at zero false positives
    lo, hi = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
        return f"{mean * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]{flag}"
    return mean_std(row, metric, pct=pct, digits=digits) + flag


def pivot_table(
    df: pd.DataFrame,
    metric: str = "tpr_at_fpr_0.01",
    attack: str = STRONGEST,
    order: Sequence[str] | None = None,
) -> str:
    """Markdown pivot: one row per dataset x model (x whatever else the sweep varied), one column per defense;
    a cell is the attack metric with its bootstrap interval, then the test accuracy, e.g.
    ``2.7 [1.9, 3.6] · 96.5%`` (with ``attack='strongest'`` the winning attack is named in the cell)."""
    picked = pick_attack(aggregate(df), attack, metric)
    keys = ["dataset", "model", *shown_keys(df)]
    defenses = defense_order(picked["defense"].astype(str).unique(), order)
    label, _ = METRICS[metric]
    what = "strongest attack per cell" if attack == STRONGEST else attack
    lines = [
        f"{label} of the {what} [95% bootstrap interval] · test accuracy",
        "",
        "| " + " | ".join([k.split("/", 1)[-1] for k in keys] + defenses) + " |",
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
            r = runs.iloc[0]  # aggregate() left one row per cell
            cell = f"{interval(r, metric)} · {100 * r['test_acc_mean']:.1f}%"
            if attack == STRONGEST:
                cell += f" ({r['attack']})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if any("‡" in line for line in lines[4:]):
        lines.append("\n‡ TPR at zero false positives: 1 / non-members per target is coarser than the FPR level "
                     "(metrics.json has the pooled figure, which resolves it with enough targets).")
    return "\n".join(lines) + "\n"

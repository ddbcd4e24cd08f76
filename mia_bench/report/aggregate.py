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
) -> str:
    """Markdown: one row per (dataset, model, defense); test accuracy, then AUC and TPR at 1% FPR of each attack,
    mean ± std over target models; defense-reported figures (epsilon, sparsity) in the last column."""
    header = ["dataset", "model", "defense", "test acc (%)"]
    for a in attacks:
        header += [f"{a} AUC", f"{a} TPR@1%FPR (%)"]
    header.append("defense reports")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["dataset", "model", "defense"]
    rank = {d: i for i, d in enumerate(order or [])}
    groups = sorted(
        df.groupby(keys, sort=False), key=lambda kv: (kv[0][0], kv[0][1], rank.get(kv[0][2], len(rank)), kv[0][2])
    )
    for (dataset, model, defense), g in groups:
        by_attack = {r["attack"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        cells = [str(dataset), str(model), str(defense), mean_std(first, "test_acc", pct=True)]
        for a in attacks:
            r = by_attack.get(a)
            cells += (
                ["–", "–"] if r is None else [mean_std(r, "auc"), mean_std(r, "tpr_at_fpr_0.01", pct=True, digits=2)]
            )
        extra = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("defense/") and pd.notna(v)}
        cells.append(", ".join(f"{k} {_short(v)}" for k, v in extra.items()) or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _short(v: float) -> str:
    v = float(v)
    return f"{v:.0f}" if v.is_integer() and abs(v) >= 10 else f"{v:.3g}"

"""Per-run outputs: the log-log ROC plot, the console table, and the W&B summary."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mia_bench.atomic import atomic_write_bytes, save_figure  # noqa: E402


def loglog_roc_axes(ax, title: str) -> None:
    """Chance diagonal, log-log axes down to 1e-4, labels and legend: shared by the run's and the report's ROCs."""
    grid = np.logspace(-5, 0, 100)
    ax.plot(grid, grid, ls="--", color="gray", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(1e-4, 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)


def plot_roc(rocs: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> None:
    """Log-log ROC of every attack (mean TPR over targets on a log FPR grid), as LiRA plots it: the region
    that matters for privacy is the low-FPR corner, invisible on linear axes."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, (name, (fpr, tpr)) in enumerate(sorted(rocs.items())):
        ax.plot(fpr, tpr, label=name, lw=1.4, color=colors[(2 * i) % 20 + (i // 10) % 2])
    loglog_roc_axes(ax, title)
    fig.tight_layout()
    save_figure(fig, path)


def save_roc_curves(rocs: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    """The curves behind roc.png (``<attack>/fpr``, ``<attack>/tpr``: FPR grid, mean TPR over targets), so the
    report can overlay runs without recomputing attacks."""
    arrays = {}
    for name, (fpr, tpr) in rocs.items():
        arrays[f"{name}/fpr"] = np.asarray(fpr, dtype=np.float64)
        arrays[f"{name}/tpr"] = np.asarray(tpr, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(rec: dict, key: str, pct: bool = False) -> str:
    mean, std = rec.get(f"{key}_mean"), rec.get(f"{key}_std")
    if mean is None:
        return "-"
    scale = 100.0 if pct else 1.0
    digits = 2 if pct else 3
    s = f"{mean * scale:.{digits}f}"
    if std is not None:
        s += f" ± {std * scale:.{digits}f}"
    return s


def print_table(records: list[dict], console: Console | None = None) -> None:
    """The summary a user reads first: one row per attack, mean ± std over target models."""
    # Not a terminal (a log file, CI): rich would wrap at 80 columns and split every cell over two lines.
    console = console or Console(width=None if Console().is_terminal else 150)
    if not records:
        return
    r0 = records[0]
    title = (
        f"{r0.get('dataset')} / {r0.get('model')} / defense={r0.get('defense')}  "
        f"(K={r0.get('num_models')}, {r0.get('n_targets')} targets, {r0.get('n_records')} records; "
        f"test acc {100 * r0.get('test_acc_mean', float('nan')):.1f}%, "
        f"train acc {100 * r0.get('train_acc_mean', float('nan')):.1f}%)"
    )
    reported = {k.split("/", 1)[1]: v for k, v in r0.items() if k.startswith("defense/")}
    if reported:  # what the defense reports about itself: epsilon, sparsity, final mixing ratio, ...
        title += "\n" + ", ".join(f"{k} {v:.4g}" for k, v in reported.items())
    table = Table(title=title, title_style="bold")
    for col in ("attack", "AUC", "TPR@0.1%FPR (%)", "TPR@1%FPR (%)", "advantage", "attack acc (%)"):
        table.add_column(col, justify="left" if col == "attack" else "right", no_wrap=True)
    for rec in sorted(records, key=lambda r: -r.get("tpr_at_fpr_0.01_mean", 0.0)):
        table.add_row(
            rec["attack"],
            _fmt(rec, "auc"),
            _fmt(rec, "tpr_at_fpr_0.001", True),
            _fmt(rec, "tpr_at_fpr_0.01", True),
            _fmt(rec, "advantage"),
            _fmt(rec, "attack_accuracy", True),
        )
    console.print(table)
    if r0.get("warnings"):
        console.print(f"[bold red]warning:[/] {r0['warnings']}")


UTILITY_KEYS = ("test_acc_mean", "test_acc_std", "train_acc_mean", "train_acc_std", "gen_gap", "train_seconds")


def log_to_wandb(records: list[dict], roc_png: Path, choices: dict[str, str]) -> None:
    """Into the cell's W&B run (opened by ``python -m mia_bench`` with group, name, tags and config; opened here
    when none is): every figure as summary scalar ``<attack>/<metric>``, the cell's own figures (test accuracy,
    epsilon, ...) also under their plain names (for plots across a sweep's runs), the whole table and the ROC
    plot; then finish the run."""
    import pandas as pd
    import wandb

    from mia_bench.report.wandb_run import choice_tags

    run = wandb.run
    if run is None:  # the pipeline called without the CLI (a script, a test): open a run here
        run = wandb.init(project="mia_bench", config={"choices": choices})
    run.tags = tuple(sorted(set(run.tags or ()) | set(choice_tags(choices))))
    for rec in records:
        for key, value in rec.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run.summary[f"{rec['attack']}/{key}"] = value
                if key in UTILITY_KEYS or key.startswith("defense/"):  # the cell's, not the attack's: unprefixed too
                    run.summary[key] = value
    run.log({"metrics": wandb.Table(dataframe=pd.DataFrame(records)), "roc": wandb.Image(str(roc_png))})
    run.finish()

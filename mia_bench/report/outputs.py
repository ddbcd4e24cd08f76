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


def _legend(name: str, rec: dict | None, pooled: bool) -> str:
    """``attack  AUC 0.61 · 4.2% @1%`` (the figures the curve stands for), or the bare name without records."""
    if rec is None:
        return name
    prefix = "pooled_" if pooled else ""
    auc = rec.get(f"{prefix}auc" if pooled else "auc_mean")
    tpr = rec.get(f"{prefix}tpr_at_fpr_0.01" if pooled else "tpr_at_fpr_0.01_mean")
    if auc is None or tpr is None:
        return name
    return f"{name}  AUC {auc:.3f} · {100 * tpr:.1f}% @1%"


def plot_roc(rocs: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "",
             records: list[dict] | None = None, pooled: bool = False) -> None:
    """Log-log ROC of every attack, as LiRA plots it: the region that matters for privacy is the low-FPR corner,
    invisible on linear axes. ``rocs``: the mean TPR over targets (or the pooled ROC, ``pooled=True``) on a log
    FPR grid, NaN below the FPR resolution, so each curve stops where its data stop (dotted line: 1 /
    non-members). With ``records`` the legend gives each attack's AUC and TPR at 1% FPR, strongest first."""
    by_name = {r["attack"]: r for r in records or []}
    key = "pooled_tpr_at_fpr_0.01" if pooled else "tpr_at_fpr_0.01_mean"
    names = sorted(rocs, key=lambda a: (-by_name.get(a, {}).get(key, 0.0), a))
    groups: list[list[str]] = []  # attacks whose curves coincide are drawn once and named together
    for name in names:
        same = next((g for g in groups if np.allclose(rocs[g[0]][1], rocs[name][1], equal_nan=True, atol=1e-12)
                     and np.array_equal(rocs[g[0]][0], rocs[name][0])), None)
        if same is None:
            groups.append([name])
        else:
            same.append(name)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    colors = plt.cm.tab10.colors
    styles = ("-", "--", "-.", ":")
    resolution = None
    for i, group in enumerate(groups):
        fpr, tpr = rocs[group[0]]
        label = _legend(" = ".join(group), by_name.get(group[0]), pooled)
        ax.plot(fpr, tpr, label=label, lw=1.5, color=colors[i % 10], ls=styles[(i // 10) % len(styles)])
        ok = ~np.isnan(np.asarray(tpr, dtype=np.float64))
        if ok.any() and not ok.all():
            resolution = float(np.asarray(fpr)[ok][0])
    loglog_roc_axes(ax, title)
    if resolution is not None:
        ax.axvline(resolution, color="gray", ls=":", lw=1)
        ax.text(resolution, 1.3e-4, " FPR resolution", fontsize=7, color="gray", rotation=90, va="bottom")
    fig.tight_layout()
    save_figure(fig, path)


def save_roc_curves(rocs: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                    pooled: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """The curves behind roc.png (``<attack>/fpr``, ``<attack>/tpr``: FPR grid, mean TPR over targets) and
    roc_pooled.png (``<attack>/pooled_tpr`` on the same grid), NaN below the FPR resolution, so the report can
    overlay runs without recomputing attacks."""
    arrays = {}
    for name, (fpr, tpr) in rocs.items():
        arrays[f"{name}/fpr"] = np.asarray(fpr, dtype=np.float64)
        arrays[f"{name}/tpr"] = np.asarray(tpr, dtype=np.float64)
        if pooled and name in pooled:
            arrays[f"{name}/pooled_tpr"] = np.asarray(pooled[name][1], dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def save_scores(result, record_labels: np.ndarray, path: str | Path) -> None:
    """Every attack's score of every scored record on every target model, with the ground truth, so a user can
    compute their own metric or load them into another tool (format: docs/outputs.md#scoresnpz)."""
    arrays = {
        "targets": np.asarray(result.targets, dtype=np.int64),
        "shadows": np.asarray(result.shadows, dtype=np.int64),
        "membership": np.asarray(result.labels, dtype=bool),
        "record": np.arange(result.labels.shape[1], dtype=np.int64),
        "label": np.asarray(record_labels, dtype=np.int64),
        "attacks": np.array(list(result.scores), dtype=np.str_),
        **{f"scores/{name}": np.asarray(s, dtype=np.float64) for name, s in result.scores.items()},
    }
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


def _tpr(rec: dict, level: str, flags: set) -> str:
    """TPR at an FPR level, mean ± std, marked ‡ when the FPR resolution is coarser than the level."""
    text = _fmt(rec, f"tpr_at_fpr_{level}", True)
    if rec.get(f"tpr_at_fpr_{level}_resolved") is False:
        flags.add(level)
        text += " ‡"
    return text


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]], set]:
    """The console table's columns and rows (as text, strongest attack at TPR@1%FPR first) and the footnotes its
    cells call for: one source for the console and ``load_run(...).table()``."""
    r0 = records[0]
    eps_col = f"ε ≥ (δ={r0['eps_delta']:.0e})" if "eps_delta" in r0 else "ε ≥"
    columns = ["attack", "AUC", "TPR@0.1%FPR (%)", "TPR@1%FPR (%)", "pooled TPR@0.1% (%)", "advantage",
               "attack acc (%)", eps_col]
    flags: set = set()
    rows = []
    for rec in sorted(records, key=lambda r: -r.get("tpr_at_fpr_0.01_mean", 0.0)):
        pooled = rec.get("pooled_tpr_at_fpr_0.001")
        pooled_text = "-" if pooled is None else f"{100 * pooled:.2f}"
        if rec.get("pooled_tpr_at_fpr_0.001_resolved") is False:
            pooled_text += " ‡"
            flags.add("pooled")
        eps = rec.get("eps_lower_bound")
        rows.append([rec["attack"], _fmt(rec, "auc"), _tpr(rec, "0.001", flags), _tpr(rec, "0.01", flags),
                     pooled_text, _fmt(rec, "advantage"), _fmt(rec, "attack_accuracy", True),
                     "-" if eps is None else f"{eps:.2f}"])
    return columns, rows, flags


def print_table(records: list[dict], console: Console | None = None) -> None:
    """The summary a user reads first: one row per attack, mean ± std over target models, the pooled TPR at 0.1%
    FPR, and the empirical epsilon lower bound."""
    # Not a terminal (a log file, CI): rich would wrap at 80 columns and split every cell over two lines.
    console = console or Console(width=None if Console().is_terminal else 160)
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
    columns, rows, flags = table_rows(records)
    table = Table(title=title, title_style="bold")
    for col in columns:
        table.add_column(col, justify="left" if col == "attack" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if flags:
        res = r0.get("fpr_resolution", float("nan"))
        console.print(f"‡ TPR at zero false positives: the FPR resolution (1 / non-members = {res:.2g} per target, "
                      f"{r0.get('pooled_fpr_resolution', float('nan')):.2g} pooled) is coarser than the level")
    if "eps_delta" in r0:
        dp = f"; DP-SGD's accountant: ε = {r0['defense/epsilon']:.3g}" if "defense/epsilon" in r0 else ""
        console.print(f"ε ≥: the epsilon the attack's test demands at δ = {r0['eps_delta']:.0e} "
                      f"({100 * r0.get('confidence', 0.95):.0f}% Clopper-Pearson, threshold from the shadow model){dp}")
    if r0.get("warnings"):
        console.print(f"[bold red]warning:[/] {r0['warnings']}")
    for rec in records:  # an attack that ran as a weaker form of itself on most records
        if rec.get("attack_warning"):
            console.print(f"[bold red]warning:[/] {rec['attack_warning']}")


#: A cell's figures as the loggers name them -> their files in the run directory (absent with figures=false).
FIGURES = {"roc": "roc.png", "pooled_roc": "roc_pooled.png", "exposed_records": "exposed_records.png"}
UTILITY_KEYS = ("test_acc_mean", "test_acc_std", "train_acc_mean", "train_acc_std", "gen_gap", "train_seconds")


def log_to_wandb(records: list[dict], out: Path, choices: dict[str, str],
                 rocs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """Into the cell's W&B run (opened by ``python -m mia_bench`` with group, name, tags and config; opened here
    when none is): every figure as summary scalar ``<attack>/<metric>``, the cell's own figures (test accuracy,
    epsilon, ...) also under their plain names (for plots across a sweep's runs), the whole table, the ROC as an
    interactive line chart (``roc_chart``: zoom, hover, overlay across runs) beside the ROC plots and the most
    exposed records, and an artifact with metrics.json, per_target.json, scores.npz and a reference to
    signals.npz; then finish the run."""
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
    logged = {key: wandb.Image(str(out / name)) for key, name in FIGURES.items() if (out / name).exists()}
    if rocs:  # only the resolved part of each curve (NaN below the FPR resolution)
        names = list(rocs)
        ok = [~np.isnan(np.asarray(rocs[a][1], dtype=np.float64)) for a in names]
        logged["roc_chart"] = wandb.plot.line_series(
            xs=[np.asarray(rocs[a][0])[m].tolist() for a, m in zip(names, ok, strict=True)],
            ys=[np.asarray(rocs[a][1])[m].tolist() for a, m in zip(names, ok, strict=True)],
            keys=names, title="ROC (mean over targets)", xname="false positive rate")
    run.log({"metrics": wandb.Table(dataframe=pd.DataFrame(records)), **logged})
    art = wandb.Artifact(f"cell-{run.id}", type="mia_bench-cell",
                         description="metrics.json, per_target.json, scores.npz; signals.npz by reference")
    for name in ("metrics.json", "per_target.json", "scores.npz", "config.yaml"):
        if (out / name).exists():
            art.add_file(str(out / name))
    if (out / "signals.npz").exists():
        art.add_reference(f"file://{(out / 'signals.npz').resolve()}", checksum=False)
    run.log_artifact(art)
    run.finish()


def log_to_tensorboard(records: list[dict], out: Path, choices: dict[str, str]) -> Path:
    """The cell's attack figures into TensorBoard beside the models' curves (``<run>/tensorboard/attacks``): every
    number of metrics.json as scalar ``<attack>/<metric>``, the Hydra choices and main figures in the HPARAMS tab
    (to compare the cells of a sweep), and the ROC plots as images. Returns the event folder."""
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(out) / "tensorboard" / "attacks"
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for rec in records:
            for key, value in rec.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
                    writer.add_scalar(f"{rec['attack']}/{key}", float(value), 0)
        hparams = {k: str(v) for k, v in choices.items() if v is not None}
        hparams.update({k: records[0][k] for k in ("num_models", "seed") if k in records[0]})
        main = {f"hparam/{r['attack']}/{m}": float(r[m]) for r in records
                for m in ("auc_mean", "tpr_at_fpr_0.01_mean", "eps_lower_bound") if m in r}
        if "test_acc_mean" in records[0]:
            main["hparam/test_acc_mean"] = float(records[0]["test_acc_mean"])
        writer.add_hparams(hparams, main, run_name=".")
        for name in FIGURES.values():
            png = Path(out) / name
            if png.exists():
                writer.add_image(png.stem, plt.imread(png)[..., :3], 0, dataformats="HWC")
    finally:
        writer.close()
    return folder

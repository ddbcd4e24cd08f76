"""``python -m mia_bench.report <run or multirun dir> ...``: aggregate finished runs (written next to the first
directory, or to ``--out``) into

- ``summary.csv``: every record of every run (one row per run x attack, all metrics and choices), with the AUC
  difference to the undefended cell and its Welch p-value (``auc_vs_none_diff``, ``auc_vs_none_p``);
- ``privacy_utility.md``: one row per dataset / model / defense, AUC and TPR@1%FPR of some attacks;
- ``pivot.md``: rows dataset x model, columns defense, cells ``metric [interval] · test accuracy``;
- ``privacy_utility.tex``, ``pivot.tex``: the same two tables for LaTeX (booktabs);
- ``privacy_utility.png``: test accuracy against the attack metric (or epsilon), a point per run;
- ``roc_<dataset>.png``: per dataset, the ROC curve of each defense overlaid (log-log).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from mia_bench.atomic import atomic_write_text
from mia_bench.report.aggregate import (
    METRICS,
    STRONGEST,
    cell_keys,
    collect,
    failed_footer,
    pivot_table,
    privacy_utility_table,
    versus_reference,
)
from mia_bench.report.latex import markdown_to_latex


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mia_bench.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dirs", nargs="+", help="run directories, multirun directories, or metrics.json files")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first directory)")
    parser.add_argument(
        "--attacks", default="loss,lira_online,rmia", help="attacks in privacy_utility.md (comma-separated)"
    )
    parser.add_argument(
        "--order", default="", help="defense order of rows and columns (comma-separated; others follow)"
    )
    parser.add_argument(
        "--metric",
        default="tpr_at_fpr_0.01",
        choices=list(METRICS),
        help="attack metric of the pivot table, the scatter and the ROC choice (default: TPR at 1%% FPR)",
    )
    parser.add_argument(
        "--attack",
        default=STRONGEST,
        help="attack of the pivot table, scatter and ROC overlays: a name (e.g. lira_online), or 'strongest' "
        "(default): per run, the attack with the highest --metric, i.e. the worst case for the defense",
    )
    parser.add_argument(
        "--x",
        default="attack",
        choices=["attack", "epsilon"],
        help="x axis of privacy_utility.png: the attack metric (default) or the DP budget epsilon",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (no PNG files)")
    parser.add_argument(
        "--wandb", nargs="?", const="mia_bench", default=None, metavar="PROJECT",
        help="also log the report to W&B (project PROJECT, default mia_bench; WANDB_MODE=offline works): the summary "
        "as a table, the privacy-utility chart (a scatter you can hover) and every PNG, in a run of job type report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    order = [d for d in args.order.split(",") if d]
    try:
        df = collect(args.dirs)
        out = args.out or Path(args.dirs[0])
        out = out.parent if out.is_file() else out
        out.mkdir(parents=True, exist_ok=True)
        footer = failed_footer(df)
        table = privacy_utility_table(df, [a for a in args.attacks.split(",") if a], order) + footer
        pivot = pivot_table(df, args.metric, args.attack, order) + footer
        written = [out / "summary.csv", out / "privacy_utility.md", out / "pivot.md"]
        keys = [*cell_keys(df), "attack"]
        runs = df.merge(versus_reference(df), on=keys, how="left") if "none" in set(df["defense"].astype(str)) else df
        summary = pd.concat([runs.assign(status="ok"), pd.DataFrame(df.attrs.get("failed") or [])], ignore_index=True)
        atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
        atomic_write_text(out / "privacy_utility.md", table)
        atomic_write_text(out / "pivot.md", pivot)
        atomic_write_text(out / "privacy_utility.tex", markdown_to_latex(table))
        atomic_write_text(out / "pivot.tex", markdown_to_latex(pivot))
        written += [out / "privacy_utility.tex", out / "pivot.tex"]
        if not args.no_plots:
            from mia_bench.report.plots import privacy_utility_scatter, roc_overlays

            privacy_utility_scatter(df, out / "privacy_utility.png", args.metric, args.attack, args.x, order)
            written += [out / "privacy_utility.png", *roc_overlays(df, out, args.metric, args.attack, order)]
        if args.wandb:
            log_report_to_wandb(args.wandb, out, summary, [p for p in written if p.suffix == ".png"], args.metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(pivot)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def log_report_to_wandb(project: str, out: Path, summary: pd.DataFrame, pngs: list[Path], metric: str) -> None:
    """One W&B run (job type ``report``, named after the report folder) with the summary table, an interactive
    privacy-utility scatter (test accuracy against ``metric`` of every run x attack) and the report's figures."""
    import wandb

    run = wandb.init(project=project, job_type="report", name=out.resolve().name, config={"report_dir": str(out)},
                     dir=str(out))  # its files (offline: wandb/offline-run-*) next to the report
    table = wandb.Table(dataframe=summary.astype({c: str for c in summary.columns if summary[c].dtype == object}))
    logged = {"summary": table, **{p.stem: wandb.Image(str(p)) for p in pngs}}
    x, y = f"{metric}_mean", "test_acc_mean"
    if {x, y} <= set(summary.columns):
        cols = [c for c in ("dataset", "model", "defense", "attack", x, y, "run_dir") if c in summary.columns]
        points = wandb.Table(dataframe=summary.loc[summary[x].notna(), cols].astype({"run_dir": str}))
        logged["privacy_utility_chart"] = wandb.plot.scatter(points, x, y, title=f"test accuracy vs {metric}")
    run.log(logged)
    run.finish()


if __name__ == "__main__":
    sys.exit(main())

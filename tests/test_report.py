"""The report command: every metrics.json under the given directories ends up in summary.csv and the table."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest

from mia_bench.report.__main__ import main
from mia_bench.report.aggregate import collect, privacy_utility_table


def _write_run(path, defense, auc, extra=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("seed: 0\n")
    recs = [
        {
            "dataset": "digits",
            "model": "mlp",
            "defense": defense,
            "attack": attack,
            "test_acc_mean": 0.9,
            "test_acc_std": 0.01,
            "auc_mean": auc + i / 100,
            "auc_std": 0.002,
            "tpr_at_fpr_0.01_mean": 0.0123,
            "tpr_at_fpr_0.01_std": 0.004,
            **(extra or {}),
        }
        for i, attack in enumerate(["loss", "lira_online", "rmia"])
    ]
    (path / "metrics.json").write_text(json.dumps(recs))


def test_report_collects_every_run_and_writes_the_table(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    _write_run(sweep / "0_defense=none", "none", 0.6)
    _write_run(sweep / "1_defense=dpsgd", "dpsgd", 0.5, {"defense/epsilon": 3.21})
    (sweep / "2_defense=sam").mkdir()
    (sweep / "2_defense=sam" / "config.yaml").write_text("seed: 0\n")  # unfinished job: skipped
    assert main([str(sweep), "--order", "none,dpsgd"]) == 0
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 6 and set(summary.defense) == {"none", "dpsgd"}
    dp = summary[summary.defense == "dpsgd"].set_index("attack")
    assert dp.loc["loss", "auc_vs_none_diff"] == pytest.approx(-0.1)  # Welch's p needs n_targets (absent here)
    assert "auc_vs_none_p" in summary.columns and summary[summary.defense == "none"].auc_vs_none_diff.isna().all()
    table = (sweep / "privacy_utility.md").read_text().splitlines()
    assert table[2].startswith("| digits | mlp | none | 90.0 ± 1.0 | 0.600 ± 0.002 | 1.23 ± 0.40 | 0.610")
    assert table[3].split(" | ")[2] == "dpsgd" and table[3].endswith("| epsilon 3.21 |")
    assert "privacy_utility.md" in capsys.readouterr().out
    tex = (sweep / "privacy_utility.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and "0.600 $\\pm$ 0.002" in tex and (sweep / "pivot.tex").exists()


def test_report_errors_name_the_problem(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        collect([bad])


def test_table_marks_missing_attacks():
    df = pd.DataFrame([{"dataset": "d", "model": "m", "defense": "none", "attack": "loss", "test_acc_mean": 0.5}])
    row = privacy_utility_table(df, ["loss", "rmia"]).splitlines()[2]
    assert row.count("–") == 4  # loss has no AUC/TPR columns in this record; rmia is absent


# ---- pivot table, scatter, ROC overlays ----


def _cell_run(path, defense, tprs, acc=0.965, dataset="digits", extra=None, rocs=True):
    """A finished run: per attack, TPR@1%FPR mean with a bootstrap interval of +-0.5 points and std 0.004."""
    from mia_bench.report.outputs import save_roc_curves

    path.mkdir(parents=True)
    recs = [
        {
            "dataset": dataset,
            "model": "mlp",
            "defense": defense,
            "attack": attack,
            "choice/defense": defense,
            "test_acc_mean": acc,
            "test_acc_std": 0.01,
            "auc_mean": 0.5 + tpr,
            "auc_std": 0.01,
            "tpr_at_fpr_0.01_mean": tpr,
            "tpr_at_fpr_0.01_std": 0.004,
            "tpr_at_fpr_0.01_ci_low": tpr - 0.005,
            "tpr_at_fpr_0.01_ci_high": tpr + 0.005,
            "confidence": 0.95,
            **(extra or {}),
        }
        for attack, tpr in tprs.items()
    ]
    (path / "metrics.json").write_text(json.dumps(recs))
    if rocs:  # a distinct curve per attack: TPR = FPR ** (1 - tpr), so the test can tell which one was drawn
        fpr = np.logspace(-4, 0, 50)
        save_roc_curves({a: (fpr, fpr ** (1 - t)) for a, t in tprs.items()}, path / "roc_curves.npz")


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    _cell_run(s / "0", "none", {"loss": 0.015, "lira_online": 0.027, "rmia": 0.024}, acc=0.965)
    _cell_run(s / "1", "dpsgd", {"loss": 0.012, "lira_online": 0.010, "rmia": 0.011}, acc=0.80,
              extra={"defense/epsilon": 4.0})  # fmt: skip
    _cell_run(s / "2", "advreg", {"loss": 0.014, "lira_online": 0.02, "rmia": 0.021}, acc=0.95)
    _cell_run(s / "3", "none", {"loss": 0.05, "lira_online": 0.09, "rmia": 0.08}, acc=0.70, dataset="cifar10",
              rocs=False)  # fmt: skip
    return s


def test_pivot_rows_dataset_model_columns_defense_cells_metric_interval_accuracy(sweep):
    from mia_bench.report.aggregate import pivot_table

    df = collect([sweep])
    lines = pivot_table(df).splitlines()
    assert lines[0] == "TPR@1%FPR (%) of the strongest attack per cell [95% bootstrap interval] · test accuracy"
    assert lines[2] == "| dataset | model | none | advreg | dpsgd |"  # the baseline first, then alphabetical
    assert lines[4] == "| cifar10 | mlp | 9.0 [8.5, 9.5] · 70.0% (lira_online) | – | – |"
    assert lines[5] == (
        "| digits | mlp | 2.7 [2.2, 3.2] · 96.5% (lira_online) | 2.1 [1.6, 2.6] · 95.0% (rmia) "
        "| 1.2 [0.7, 1.7] · 80.0% (loss) |"
    )
    fixed = pivot_table(df, "auc", "loss", order=["dpsgd"]).splitlines()
    assert fixed[2] == "| dataset | model | dpsgd | none | advreg |"
    assert fixed[5].startswith("| digits | mlp | 0.512 ± 0.010 · 80.0% | 0.515 ± 0.010 · 96.5% |")  # no CI: ± std


def test_pivot_gives_a_row_to_every_other_varied_choice(sweep):
    from mia_bench.report.aggregate import pivot_table

    _cell_run(sweep / "4", "none", {"loss": 0.03}, extra={"choice/train": "long"})
    df = collect([sweep])
    df["choice/train"] = df["choice/train"].fillna("default")
    lines = pivot_table(df, attack="loss").splitlines()
    assert lines[2] == "| dataset | model | train | none | advreg | dpsgd |"
    assert lines[5].startswith("| digits | mlp | default | 1.5 [1.0, 2.0] · 96.5% | 1.4")
    assert lines[6] == "| digits | mlp | long | 3.0 [2.5, 3.5] · 96.5% | – | – |"


def test_scatter_points_are_accuracy_against_the_attack_metric_or_epsilon(sweep, tmp_path):
    from mia_bench.report.plots import privacy_utility_scatter

    df = collect([sweep])
    pts = privacy_utility_scatter(df, tmp_path / "pu.png", attack="lira_online").set_index("run_dir")
    assert (tmp_path / "pu.png").read_bytes()[:4] == b"\x89PNG"
    none = pts.loc[str(sweep / "0")]
    assert (none["_x"], none["_xerr"], none["_y"], none["_yerr"]) == pytest.approx((2.7, 0.4, 96.5, 1.0))
    eps = privacy_utility_scatter(df, tmp_path / "eps.png", x="epsilon").set_index("run_dir")["_x"]
    assert eps[str(sweep / "1")] == 4.0 and eps[str(sweep / "0")] == 16.0  # no DP: at the right edge (4 x max)
    with pytest.raises(ValueError, match="defense/epsilon"):
        privacy_utility_scatter(df[df.defense != "dpsgd"], tmp_path / "e2.png", x="epsilon")


def test_roc_overlays_one_file_per_dataset_with_each_runs_curve(sweep, tmp_path, monkeypatch, caplog):
    from mia_bench.report import plots

    drawn = []
    real = plots.load_roc
    monkeypatch.setattr(plots, "load_roc", lambda d, a: drawn.append((d, a)) or real(d, a))
    fpr, tpr = real(sweep / "0", "rmia")
    assert tpr == pytest.approx(fpr ** (1 - 0.024))  # the attack's own curve
    written = plots.roc_overlays(collect([sweep]), tmp_path)
    assert [p.name for p in written] == ["roc_digits.png"]  # cifar10's only run has no roc_curves.npz
    assert "cifar10: 1 run(s) without" in caplog.text
    assert sorted(drawn) == [
        (str(sweep / "0"), "lira_online"),
        (str(sweep / "1"), "loss"),
        (str(sweep / "2"), "rmia"),
        (str(sweep / "3"), "lira_online"),
    ]  # each run's strongest attack


def test_report_cli_writes_every_output(sweep, capsys):
    assert main([str(sweep), "--attack", "lira_online"]) == 0
    for name in ("summary.csv", "privacy_utility.md", "pivot.md", "privacy_utility.png", "roc_digits.png"):
        assert (sweep / name).exists(), name
    assert "| digits | mlp | 2.7 [2.2, 3.2] · 96.5% |" in (sweep / "pivot.md").read_text()
    assert main([str(sweep), "--attack", "nope"]) == 2
    assert "--attack 'nope': not among the attacks of these runs (lira_online, loss, rmia)" in capsys.readouterr().err


def test_compare_to_reference_is_welchs_test_from_scipy():
    import pandas as pd
    from scipy.stats import ttest_ind

    from mia_bench.report.aggregate import compare_to_reference, welch

    rng = np.random.default_rng(0)
    a, b = 0.6 + 0.02 * rng.standard_normal(8), 0.58 + 0.03 * rng.standard_normal(6)
    row = pd.Series({"auc_mean": b.mean(), "auc_std": b.std(ddof=1), "n_targets": 6})
    ref = pd.Series({"auc_mean": a.mean(), "auc_std": a.std(ddof=1), "n_targets": 8})
    diff, p = welch(row, ref)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert p == pytest.approx(ttest_ind(b, a, equal_var=False).pvalue)  # the same test on the raw values
    assert compare_to_reference(row, ref) == ("↓" if p < 0.05 else "=")
    se = (2 * 0.02**2 / 8) ** 0.5
    far = pd.Series({"auc_mean": 0.60 + 4 * se, "auc_std": 0.02, "n_targets": 8})
    near = pd.Series({"auc_mean": 0.60 + 1 * se, "auc_std": 0.02, "n_targets": 8})
    base = pd.Series({"auc_mean": 0.60, "auc_std": 0.02, "n_targets": 8})
    assert compare_to_reference(far, base) == "↑" and compare_to_reference(near, base) == "="
    # fewer targets: fewer degrees of freedom, a wider test; one target: no test at all
    assert welch(pd.Series({**far, "n_targets": 2}), base)[1] > welch(far, base)[1]
    assert np.isnan(welch(pd.Series({**far, "n_targets": 1}), base)[1])


def test_privacy_utility_table_marks_each_attack_against_the_undefended_cell():
    import pandas as pd

    from mia_bench.report.aggregate import privacy_utility_table

    def rec(defense, attack, auc):
        return {
            "dataset": "d",
            "model": "m",
            "defense": defense,
            "attack": attack,
            "test_acc_mean": 0.9,
            "test_acc_std": 0.01,
            "auc_mean": auc,
            "auc_std": 0.01,
            "n_targets": 8,
            "tpr_at_fpr_0.01_mean": 0.02,
            "tpr_at_fpr_0.01_std": 0.01,
        }

    df = pd.DataFrame(
        [
            rec("none", "loss", 0.6),
            rec("none", "rmia", 0.6),
            rec("dp", "loss", 0.5),
            rec("dp", "rmia", 0.601),
            rec("ls", "loss", 0.7),
            rec("ls", "rmia", 0.6),
        ]
    )
    table = privacy_utility_table(df, ["loss", "rmia"])
    rows = {line.split(" | ")[2]: line for line in table.splitlines() if line.startswith("| d ")}
    assert "(reference)" in rows["none"]
    assert "| ↓ = |" in rows["dp"]
    assert "| ↑ = |" in rows["ls"]
    assert "AUC vs none" in table.splitlines()[0]


# ---- cells: every differing config value, seeds averaged, reruns deduplicated ----
def _run_with_config(path, defense="none", epochs=2, seed=0, acc=0.9, auc=0.6):
    """A run as the pipeline leaves it: its resolved config.yaml beside metrics.json."""
    path.mkdir(parents=True)
    config = {"seed": seed, "num_models": 4, "membership": {"seed": seed}, "paths": {"output_dir": str(path)},
              "train": {"epochs": epochs, "batch_size": 64}, "defense": {"name": defense}}
    (path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    recs = [{"dataset": "digits", "model": "mlp", "defense": defense, "attack": attack, "n_targets": 2,
             "choice/defense": defense, "test_acc_mean": acc, "test_acc_std": 0.01, "auc_mean": auc + i / 100,
             "auc_std": 0.01, "tpr_at_fpr_0.01_mean": auc - 0.5, "tpr_at_fpr_0.01_std": 0.001}
            for i, attack in enumerate(["loss", "lira_online", "rmia"])]
    (path / "metrics.json").write_text(json.dumps(recs))


def test_a_sweep_over_a_plain_key_gets_a_row_per_value_with_each_figure_from_its_own_run(tmp_path):
    from mia_bench.report.aggregate import pivot_table

    _run_with_config(tmp_path / "0", epochs=2, acc=0.80, auc=0.55)
    _run_with_config(tmp_path / "1", epochs=4, acc=0.95, auc=0.65)
    assert main([str(tmp_path), "--no-plots"]) == 0
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert sorted(summary["cfg/train.epochs"].unique()) == [2, 4]  # the swept key is a column
    table = (tmp_path / "privacy_utility.md").read_text().splitlines()
    assert table[0].startswith("| dataset | model | train.epochs | defense | test acc (%) | loss AUC")
    assert table[2].startswith("| digits | mlp | 2 | none | 80.0 ± 1.0 | 0.550 ± 0.010")
    assert table[3].startswith("| digits | mlp | 4 | none | 95.0 ± 1.0 | 0.650 ± 0.010")
    pivot = pivot_table(collect([tmp_path]), attack="loss").splitlines()
    assert pivot[2] == "| dataset | model | train.epochs | none |"
    assert pivot[4:] == ["| digits | mlp | 2 | 5.0 ± 0.1 · 80.0% |", "| digits | mlp | 4 | 15.0 ± 0.1 · 95.0% |"]


def test_seeds_of_a_cell_are_averaged_with_their_spread_and_reruns_are_deduplicated(tmp_path, caplog):
    from mia_bench.report.aggregate import aggregate, pivot_table

    for i, (seed, auc) in enumerate([(0, 0.60), (1, 0.62), (2, 0.64)]):
        _run_with_config(tmp_path / f"s{i}", seed=seed, auc=auc, acc=0.9 + i / 100)
    _run_with_config(tmp_path / "rerun", seed=2, auc=0.64, acc=0.92)  # an identical rerun of seed 2
    os.utime(tmp_path / "rerun" / "metrics.json", (2e9, 2e9))  # written last
    with caplog.at_level(logging.WARNING):
        cells = aggregate(collect([tmp_path]))
    assert "repeats an identical run" in caplog.text and "s2" in caplog.text
    loss = cells[cells.attack == "loss"].iloc[0]
    assert loss["n_seeds"] == 3 and loss["auc_mean"] == pytest.approx(0.62)
    assert loss["auc_seed_std"] == pytest.approx(0.02) and loss["test_acc_mean"] == pytest.approx(0.91)
    table = privacy_utility_table(collect([tmp_path])).splitlines()
    assert table[0].startswith("| dataset | model | defense | seeds | test acc (%) |")
    assert table[2].startswith("| digits | mlp | none | 3 | 91.0 ± 1.0 | 0.620 ± 0.020")
    assert "(3 seeds)" in pivot_table(collect([tmp_path]), attack="loss")


def test_tables_flag_unresolved_tpr_and_show_the_epsilon_lower_bound(tmp_path):
    from mia_bench.report.aggregate import pivot_table

    s = tmp_path / "sweep"
    flags = {"tpr_at_fpr_0.001_mean": 0.02, "tpr_at_fpr_0.001_ci_low": 0.01, "tpr_at_fpr_0.001_ci_high": 0.03,
             "tpr_at_fpr_0.001_resolved": False, "eps_lower_bound": 1.5}
    _write_run(s / "0", "none", 0.6, flags)
    _write_run(s / "1", "dpsgd", 0.5, {**flags, "tpr_at_fpr_0.001_resolved": True, "eps_lower_bound": 0.25,
                                       "defense/epsilon": 4.0})
    df = collect([s])
    pivot = pivot_table(df, "tpr_at_fpr_0.001", "loss").splitlines()
    assert pivot[4].startswith("| digits | mlp | 2.0 [1.0, 3.0] ‡ · 90.0% | 2.0 [1.0, 3.0] · 90.0% |")
    assert pivot[-1].startswith("‡ TPR at zero false positives")
    table = privacy_utility_table(df).splitlines()
    assert "ε ≥ (strongest)" in table[0]
    assert table[2].endswith("| (reference) | 1.50 (loss) |  |") and table[3].endswith("| 0.25 (loss) | epsilon 4 |")
    assert any(line.startswith("*ε ≥*") for line in table)


def test_roc_legend_is_sorted_by_strength_names_figures_and_merges_coinciding_attacks(monkeypatch):
    import mia_bench.report.outputs as outputs

    figs = []
    monkeypatch.setattr(outputs, "save_figure", lambda fig, path: figs.append(fig))
    grid = np.logspace(-5, 0, 20)
    tpr = np.where(grid < 1e-3, np.nan, grid ** 0.8)
    rocs = {"loss": (grid, tpr), "confidence": (grid, tpr.copy()), "lira": (grid, np.where(grid < 1e-3, np.nan,
                                                                                             grid ** 0.5))}
    records = [{"attack": "loss", "auc_mean": 0.55, "tpr_at_fpr_0.01_mean": 0.02},
               {"attack": "confidence", "auc_mean": 0.55, "tpr_at_fpr_0.01_mean": 0.02},
               {"attack": "lira", "auc_mean": 0.61, "tpr_at_fpr_0.01_mean": 0.1}]
    outputs.plot_roc(rocs, "unused.png", "t", records)
    ax = figs[0].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["lira  AUC 0.610 · 10.0% @1%", "confidence = loss  AUC 0.550 · 2.0% @1%"]
    first = grid[grid >= 1e-3][0]  # where the curves start: the resolution line
    assert any(np.allclose(line.get_xdata(), first) for line in ax.get_lines())


def test_latex_tables_hold_the_markdown_figures(tmp_path):
    from mia_bench.report.latex import escape, markdown_to_latex

    md = ("| dataset | defense | AUC | AUC vs none |\n|---|---|---|---|\n"
          "| digits | none | 0.600 ± 0.002 | (reference) |\n| digits | dp_sgd | 0.512 ± 0.010 | ↓ |\n\n*note*: 5% ‡\n")
    tex = markdown_to_latex(md).splitlines()
    assert tex[:4] == [r"\begin{tabular}{llrr}", r"\toprule", r"dataset & defense & AUC & AUC vs none \\", r"\midrule"]
    assert tex[4] == r"digits & none & 0.600 $\pm$ 0.002 & (reference) \\"
    assert tex[5] == r"digits & dp\_sgd & 0.512 $\pm$ 0.010 & $\downarrow$ \\"
    assert tex[6:8] == [r"\bottomrule", r"\end{tabular}"] and r"\emph{note}: 5\% \ddag{}" in tex[-1]
    assert escape("`a_b` ε ≥ 1 & #") == r"\texttt{a\_b} $\varepsilon$ $\geq$ 1 \& \#"


def test_report_logs_its_tables_and_charts_to_wandb(sweep, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([str(sweep), "--wandb", "--order", "none"]) == 0
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")  # next to the report
    media = {p.name.rsplit("_", 2)[0] for p in run_dir.glob("files/media/table/*.table.json")}
    assert {"summary", "privacy_utility_chart_table"} <= media  # the table and the scatter's own points
    assert list(run_dir.glob("files/media/images/privacy_utility_*.png"))


# ---- the report and the cache agree on which keys do not change the models ----
def test_keys_that_do_not_change_the_models_share_the_cache_key_and_the_report_cell(compose_cfg, tmp_path):
    """One table (cache/keys.py MODEL_NEUTRAL_KEYS) for the cache key and the report: two configs differing only in
    one of its keys have the same recipe description and end up in one report cell; every recipe key the report
    ignores is in the table, and the report's other ignored keys are outside the recipe."""
    from omegaconf import OmegaConf

    from mia_bench.cache.keys import MODEL_NEUTRAL_KEYS, QUERY_KEYS, RECIPE_KEYS, describe_recipe
    from mia_bench.report import aggregate as agg

    assert [k for k in agg.IGNORED_KEYS if k.split(".")[0] in RECIPE_KEYS] == list(MODEL_NEUTRAL_KEYS)
    for reason in (agg.LOCATION_KEYS, agg.EXECUTION_KEYS, agg.ATTACK_KEYS):
        assert not [k for k in reason if k.split(".")[0] in RECIPE_KEYS], reason
    assert not [k for k in QUERY_KEYS if agg.ignored(k) or agg.ignored(k + ".shift")]  # they change the figures
    assert agg.ignored("paths.output_dir") and not agg.ignored("paths_extra") and not agg.ignored("train.epochs")

    base = compose_cfg(["defense=mixup_inference", "dataset=cifar10"])  # every table key has a place in it
    recorded = {"dynamics": {"record_epochs": [1]}}

    def changed(key: str, value):
        out = base.copy()
        OmegaConf.update(out, key, value, force_add=True)
        return out

    def run(path, cfg, seed):  # a finished run: its resolved config.yaml beside metrics.json
        path.mkdir(parents=True)
        node = OmegaConf.to_container(cfg, resolve=True)
        node["seed"] = node["membership"]["seed"] = seed
        (path / "config.yaml").write_text(OmegaConf.to_yaml(node))
        recs = [{"dataset": "cifar10", "model": "mlp", "defense": "mixup_inference", "attack": attack,
                 "test_acc_mean": 0.9, "test_acc_std": 0.01, "auc_mean": 0.6 + seed / 100, "auc_std": 0.01}
                for attack in ("loss", "rmia")]
        (path / "metrics.json").write_text(json.dumps(recs))

    runs = tmp_path / "runs"
    run(runs / "base", base, 0)
    for i, key in enumerate(MODEL_NEUTRAL_KEYS, start=1):
        assert key.split(".")[0] in RECIPE_KEYS, key  # in the recipe, so only the table keeps it out of the key
        other = changed(key, f"changed-{i}")
        for rec in (None, recorded):
            assert describe_recipe(other, rec) == describe_recipe(base, rec), key
        run(runs / f"{i}", other, i)
    df = collect([runs])
    assert agg.swept_keys(df) == []
    cells = agg.aggregate(df)
    assert len(cells) == 2 and set(cells["n_seeds"]) == {len(MODEL_NEUTRAL_KEYS) + 1}  # one cell, every run in it

    # The control: a key outside the table changes both (a query augmentation changes the key only when recorded).
    for key, value, rec in (("train.eval_batch_size", 7, None), ("defense.predict.n_samples", 7, None),
                            ("dataset.query_augment.shift", 0, recorded)):
        assert describe_recipe(changed(key, value), rec) != describe_recipe(base, rec), key
    assert describe_recipe(changed("dataset.query_augment.shift", 0)) == describe_recipe(base)
    run(runs / "epochs", changed("train.epochs", 7), 99)
    assert "cfg/train.epochs" in agg.swept_keys(collect([runs]))


def test_ruined_models_are_flagged_not_read_as_protection(tmp_path):
    """A defense whose models fell more than 10 points of test accuracy below the undefended cell's (or whose run
    warned that they did not learn) is marked in the table, with a legend saying why its low AUC is no evidence."""
    _write_run(tmp_path / "none", "none", 0.6)
    _write_run(tmp_path / "pruning", "mia_pruning", 0.52, {"test_acc_mean": 0.588, "test_acc_std": 0.153})
    _write_run(tmp_path / "sam", "sam", 0.6, {"test_acc_mean": 0.85})
    _write_run(tmp_path / "mid", "mid", 0.6, {"warnings": "mean test accuracy 11.0% is near chance (10%): the "
                                                            "models did not learn"})
    order = ["none", "mia_pruning", "sam", "mid"]
    lines = privacy_utility_table(collect([tmp_path]), ["loss"], order=order).splitlines()
    acc = {line.split(" | ")[2]: line.split(" | ")[3] for line in lines[2:6]}
    assert acc == {"none": "90.0 ± 1.0", "mia_pruning": "58.8 ± 15.3 ⚠", "sam": "85.0 ± 1.0", "mid": "90.0 ± 1.0 ⚠"}
    assert any("⚠" in line and "no evidence of protection" in line for line in lines)

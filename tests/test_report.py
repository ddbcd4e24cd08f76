"""The report command: every metrics.json under the given directories ends up in summary.csv and the table."""

from __future__ import annotations

import json

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
    table = (sweep / "privacy_utility.md").read_text().splitlines()
    assert table[2].startswith("| digits | mlp | none | 90.0 ± 1.0 | 0.600 ± 0.002 | 1.23 ± 0.40 | 0.610")
    assert table[3].split(" | ")[2] == "dpsgd" and table[3].endswith("| epsilon 3.21 |")
    assert "privacy_utility.md" in capsys.readouterr().out


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

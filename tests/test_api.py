"""The Python API as a user would call it: score your own logits, run a cell from Python, load a run's results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import mia_bench
from mia_bench.signals import make_synthetic_signals
from tests.conftest import TINY


def test_score_your_own_logits_with_attacks_by_name_or_object():
    sig = make_synthetic_signals(8, 600, 1, 10, leak=2.0, seed=3)
    logits = sig.logits[:, :, 0, :]                      # [K, N, C]: one query, as most users have
    result = mia_bench.score(logits, sig.labels, sig.masks, attacks=["loss", "lira_online"], n_bootstrap=50)
    by_name = {r["attack"]: r for r in result.records}
    assert set(by_name) == {"loss", "lira_online"} and by_name["lira_online"]["n_targets"] == 8
    for name, rec in by_name.items():  # the per-target AUCs are sklearn's on the returned scores
        aucs = [roc_auc_score(result.labels[i], result.scores[name][i]) for i in range(8)]
        assert rec["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert rec["auc_ci_low"] <= rec["auc_mean"] <= rec["auc_ci_high"]
    assert by_name["lira_online"]["auc_mean"] > 0.6 and by_name["lira_online"]["eps_delta"] == 1e-3  # 300 per model
    own = mia_bench.build_attack("rmia", gamma=1.0)
    res = mia_bench.score(sig, attacks={"my_rmia": own}, targets=2, n_bootstrap=0)
    assert [r["attack"] for r in res.records] == ["my_rmia"] and res.records[0]["n_targets"] == 2
    with pytest.raises(ValueError, match="unknown attack 'lira'"):
        mia_bench.score(sig, attacks=["lira"])
    with pytest.raises(ValueError, match="labels"):
        mia_bench.score(logits)


@pytest.mark.slow
def test_run_a_cell_from_python_and_load_its_results(tmp_path, capfd):
    import logging

    out = tmp_path / "cell"
    overrides = [o for o in TINY if not o.startswith("attack=")]
    handlers = list(logging.getLogger().handlers)
    records = mia_bench.run([*overrides, "attack=[loss,rmia]", f"data.root={tmp_path / 'data'}"], output_dir=out)
    # logged as the command line logs: a log file with everything, the console without Lightning's chatter
    log_text = (out / "mia_bench.log").read_text()
    assert "[mia_bench.pipeline][INFO] - wrote" in log_text and "GPU available" in log_text
    printed = capfd.readouterr()
    assert "GPU available" not in printed.out + printed.err
    assert logging.getLogger().handlers == handlers  # the caller's logging as it was
    assert [r["attack"] for r in records] == ["loss", "rmia"] and records[0]["choice/dataset"] == "digits"
    res = mia_bench.load_run(out)
    assert res.metrics == records and res.config["num_models"] == 4
    assert set(res.scores) == {"loss", "rmia"} and res.scores["rmia"].shape == res.membership.shape
    table = res.table()  # what the console printed: its columns, its text, strongest attack first
    assert list(table.columns)[:2] == ["AUC", "TPR@0.1%FPR (%)"] and table.shape == (2, 7)
    assert table.loc["rmia", "AUC"] == f"{records[1]['auc_mean']:.3f} ± {records[1]['auc_std']:.3f}"
    assert res.table(full=True).loc["rmia", "auc_mean"] == records[1]["auc_mean"]
    assert res.signals().num_models == 4
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        mia_bench.load_run(tmp_path)


@pytest.mark.slow
def test_audit_a_model_trained_elsewhere_with_reference_models_trained_here(tmp_path):
    """A user's target: trained outside mia_bench (here: a plain torch loop) on a known half of the digits, saved
    as a checkpoint and loaded into its constructor. The audit trains reference models on the same records and
    finds the target's members; without the membership it still ranks the records."""
    from sklearn.datasets import load_digits
    from torch import nn

    x_np, y_np = load_digits(return_X_y=True)
    x, y = torch.tensor(x_np[:600] / 16.0, dtype=torch.float32), torch.tensor(y_np[:600])
    members = np.random.default_rng(0).permutation(600) < 300

    def make():
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xm, ym = x[members], y[members]
    for _ in range(150):  # full-batch training until it memorises its members
        opt.zero_grad()
        nn.functional.cross_entropy(model(xm), ym).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "target.pt")
    target = make()
    target.load_state_dict(torch.load(tmp_path / "target.pt", weights_only=True))

    torch.set_num_threads(2)
    res = mia_bench.audit(target, x.numpy(), y.numpy(), members, num_reference=8, n_bootstrap=20,
                          overrides=["train.epochs=20"], attacks=["loss", "lira_offline", "rmia"],
                          output_dir=tmp_path / "audit")
    assert torch.get_num_threads() == 2  # cpu_threads=1 for the audit only, the caller's setting restored
    assert json.loads((tmp_path / "audit" / "metrics.json").read_text()) == json.loads(json.dumps(res.records))
    with np.load(tmp_path / "audit" / "scores.npz") as z:
        np.testing.assert_array_equal(z["scores/rmia"][0], res.scores["rmia"])
    assert (tmp_path / "audit" / "config.yaml").is_file() and (tmp_path / "audit" / "signals.npz").is_file()
    by_name = {r["attack"]: r for r in res.records}
    assert by_name["lira_offline"]["auc_mean"] > 0.6 and by_name["rmia"]["auc_mean"] > 0.6
    assert res.signals.num_models == 9 and np.array_equal(res.signals.masks[8], members)
    blind = mia_bench.audit(target, x.numpy(), y.numpy(), num_reference=8, overrides=["train.epochs=20"],
                            attacks=["rmia"], output_dir=tmp_path / "blind")
    assert blind.records == [] and blind.scores["rmia"].shape == (600,)
    top = blind.most_exposed("rmia", 50)
    assert members[top].mean() > 0.7  # the likeliest members by RMIA are mostly members


def test_an_audit_with_too_few_reference_models_fails_before_training(tmp_path, monkeypatch):
    """The reference plan is checked before any model trains, as for a cell: two reference models leave the
    calibration shadow none once its partner is dropped."""
    import mia_bench.pipeline as pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the reference plan was checked")

    monkeypatch.setattr(pipeline, "train_models", no_training)
    x, y = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32), np.arange(40) % 2
    with pytest.raises(ValueError, match="need reference models"):
        mia_bench.audit(torch.nn.Linear(5, 2), x, y, np.arange(40) < 20, num_reference=2, attacks=["lira_offline"],
                        output_dir=tmp_path / "audit")
    with pytest.raises(ValueError, match="evaluation.confidence=2.0"):  # the config is validated as for a cell
        mia_bench.audit(torch.nn.Linear(5, 2), x, y, overrides=["evaluation.confidence=2.0"],
                        output_dir=tmp_path / "bad")


def test_the_lazy_api_is_listed_for_completion():
    assert {"run", "audit", "score", "load_run", "Signals"} <= set(dir(mia_bench))

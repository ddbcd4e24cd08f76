"""Signals to and from the LiRA reference code's log directory, round trip and read the way its scorer reads it."""

from __future__ import annotations

import numpy as np
import pytest

from mia_bench.interop import export_lira, import_lira
from mia_bench.signals import make_synthetic_signals


def test_lira_export_round_trips_and_reads_as_the_reference_scorer_reads_it(tmp_path):
    sig = make_synthetic_signals(6, 120, 2, 10, seed=4)
    root = export_lira(sig, tmp_path / "exp", epoch=100)
    assert sorted(p.name for p in root.iterdir())[:2] == ["experiment-0_6", "experiment-1_6"]
    back = import_lira(root)
    np.testing.assert_array_equal(back.logits, sig.logits)
    np.testing.assert_array_equal(back.labels, sig.labels)
    np.testing.assert_array_equal(back.masks, sig.masks)

    # research/mi_lira_2021/score.py's arithmetic on one exported file: the logit-scaled confidence per query
    labels = np.load(root / "y_train.npy")
    opred = np.load(root / "experiment-3_6" / "logits" / "0000000100.npy")
    assert opred.shape == (120, 1, 2, 10)
    pred = np.exp(opred - opred.max(axis=3, keepdims=True)).astype(np.float64)
    pred = pred / pred.sum(axis=3, keepdims=True)
    y_true = pred[np.arange(120), :, :, labels]
    pred[np.arange(120), :, :, labels] = 0
    score = np.log(y_true.mean(1) + 1e-45) - np.log(pred.sum(axis=3).mean(1) + 1e-45)   # [N, A]
    np.testing.assert_allclose(score, sig.phi[3], atol=2e-5)
    assert np.load(root / "experiment-3_6" / "keep.npy").dtype == bool


def test_lira_import_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no y_train.npy"):
        import_lira(tmp_path)
    root = export_lira(make_synthetic_signals(4, 30, 1, 3), tmp_path / "e")
    (root / "experiment-2_4" / "keep.npy").unlink()
    with pytest.raises(ValueError, match="experiment-2_4: needs keep.npy"):
        import_lira(root)
    with pytest.raises(ValueError, match="for epoch 7"):
        import_lira(export_lira(make_synthetic_signals(4, 30, 1, 3), tmp_path / "f"), epoch=7)


def test_privacy_meter_export_round_trips_the_true_label_probability_and_its_attacks(tmp_path):
    from mia_bench.config import build_attack
    from mia_bench.interop import export_privacy_meter, import_privacy_meter

    sig = make_synthetic_signals(6, 200, 1, 10, leak=2.0, seed=5, dtype=np.float64)
    root = export_privacy_meter(sig, tmp_path / "pm")
    mem = np.load(root / "models" / "memberships.npy")
    p = np.load(root / "signals" / "rmia_signals.npy")
    assert mem.shape == (6, 200) and mem.dtype == bool and p.shape == (200, 6) and p.dtype == np.float32
    back = import_privacy_meter(root)
    np.testing.assert_array_equal(back.masks, sig.masks)
    np.testing.assert_allclose(np.exp(back.true_log_prob[:, :, 0]), np.exp(sig.true_log_prob[:, :, 0]), rtol=1e-6)
    ref = np.array([2, 3, 4, 5])
    for name in ("loss", "lira_online", "rmia"):  # attacks that read only the true-label probability agree
        a, b = build_attack(name).score(sig, 0, ref), build_attack(name).score(back, 0, ref)
        assert np.corrcoef(a, b)[0, 1] > 0.9999, name
    (root / "signals" / "rmia_signals.npy").unlink()
    with pytest.raises(ValueError, match="rmia_signals.npy"):
        import_privacy_meter(root)

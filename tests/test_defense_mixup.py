"""Mixup, AdaMixup and Mixup Inference: the exact mixing, the scheduled and closed-loop ratios, and the mean of
mixed predictions, each checked against an independent computation; bad values; one tiny run of each defense."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mia_bench.data.base import ArrayData
from mia_bench.defenses.mixup import AdaMixupScheduler, MixupModule
from mia_bench.defenses.mixup_inference import MixupInference
from mia_bench.models import create_model
from mia_bench.pipeline import run
from mia_bench.training import TensorBatchLoader
from tests.conftest import TINY


def _module(cls=MixupModule, in_dim=6, classes=4, lr=1e-2, **kw) -> MixupModule:
    model = create_model("mlp", input_shape=(in_dim,), num_classes=classes, hidden=[32])
    module = cls(model=model, optimizer=lambda p: torch.optim.Adam(p, lr=lr), **kw)
    module.log_dict = lambda *a, **k: None  # no trainer attached in unit tests
    return module


def _smoothed(y: torch.Tensor, classes: int, eps: float) -> torch.Tensor:
    return (1 - eps) * F.one_hot(y, classes).float() + eps / classes


# ---- mixup -----------------------------------------------------------------------------------------------------
def test_mixup_mixes_inputs_and_targets_with_the_drawn_weight():
    module = _module(alpha=0.4)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    torch.manual_seed(3)
    mixed = module.mix(x, y)
    # Independent replay of the draws: one permutation, then one Beta(alpha, alpha) weight for the whole batch.
    torch.manual_seed(3)
    perm = torch.randperm(16)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    assert torch.equal(mixed.perm, perm) and sorted(perm.tolist()) == list(range(16))
    assert torch.allclose(mixed.lam, torch.full((16,), lam))
    assert torch.allclose(mixed.x, lam * x + (1 - lam) * x[perm], atol=1e-7)
    assert torch.equal(mixed.y_a, y) and torch.equal(mixed.y_b, y[perm])
    # The weight is Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)).
    # per_sample: one Beta draw per record, each row mixed with its own weight.
    per_sample = _module(alpha=0.4, per_sample=True)
    torch.manual_seed(4)
    mixed = per_sample.mix(x, y)
    torch.manual_seed(4)
    perm = torch.randperm(16)
    lam = torch.distributions.Beta(0.4, 0.4).sample((16,))
    assert torch.allclose(mixed.lam, lam) and len(set(lam.tolist())) == 16
    assert torch.allclose(mixed.x, lam[:, None] * x + (1 - lam[:, None]) * x[perm], atol=1e-7)
    torch.manual_seed(0)
    draws = torch.stack([module.draw_lam(1, torch.device("cpu"))[0] for _ in range(1000)])
    assert abs(draws.mean() - 0.5) < 0.04 and abs(draws.var() - 1 / (4 * 1.8)) < 0.015


def test_mixup_training_loss_matches_a_hand_computation_with_label_smoothing():
    module = _module(alpha=1.0, label_smoothing=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    torch.manual_seed(7)
    loss = module.training_step((x, y), 0)
    torch.manual_seed(7)
    perm = torch.randperm(32)
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    logits = module.model(lam * x + (1 - lam) * x[perm])
    target = lam * _smoothed(y, 4, 0.1) + (1 - lam) * _smoothed(y[perm], 4, 0.1)
    expected = -(target * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(loss, F.cross_entropy(module.model(x), y, label_smoothing=0.1), atol=1e-3)


def test_fixed_ratio_mixes_every_pair_with_it_and_alpha_zero_is_plain_training():
    module = _module(ratio=0.7)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    mixed = module.mix(x, y)
    assert torch.equal(mixed.lam, torch.full((10,), 0.7))
    assert torch.allclose(mixed.x, 0.7 * x + 0.3 * x[mixed.perm], atol=1e-7)
    off = _module(alpha=0.0)
    assert torch.allclose(off.training_step((x, y), 0), F.cross_entropy(off.model(x), y))


def test_dominant_label_mode_trains_on_the_heavier_records_label():
    module = _module(label_mode="dominant", label_smoothing=0.05)
    logits = torch.randn(4, 4)
    y_a, y_b = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    lam = torch.tensor([0.3, 0.8, 0.5, 0.49])
    loss = module.mixup_loss(logits, y_a, y_b, lam)
    dominant = torch.tensor([3, 1, 2, 0])  # y_b where lam < 0.5; ties go to the row's own record
    target = _smoothed(dominant, 4, 0.05)
    assert torch.allclose(loss, -(target * logits.log_softmax(-1)).sum(-1).mean(), atol=1e-6)
    soft = _module(label_mode="soft").mixup_loss(logits, y_a, y_b, lam)
    assert not torch.allclose(loss, soft, atol=1e-3)


# ---- AdaMixup --------------------------------------------------------------------------------------------------
class _Recording(MixupModule):
    """Records the weights every training batch was mixed with, per epoch."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.used: dict[int, set[float]] = {}

    def mix(self, x, y):
        mixed = super().mix(x, y)
        self.used.setdefault(self.current_epoch, set()).update(round(v, 6) for v in mixed.lam.tolist())
        return mixed


def _fit(callback, epochs, train=None, public=None, label_mode="dominant"):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g) * 4
    y = torch.arange(64) % 4
    x = centers[y] + 0.3 * torch.randn(64, 6, generator=g)
    pl.seed_everything(0, verbose=False)
    module = _module(_Recording, label_mode=label_mode)
    del module.log_dict  # the trainer is attached: log for real
    module.attach_data(train or ArrayData(x, y), public if public is not None else ArrayData(x, y))
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, TensorBatchLoader(x, y, 32, seed=0))
    return module, (x, y)


@pytest.mark.parametrize(
    "kwargs,epochs,expected",
    [
        ({"schedule": "linear", "start": 0.5, "end": 0.9}, 5, [0.5, 0.6, 0.7, 0.8, 0.9]),
        (
            {"schedule": "cosine", "start": 0.5, "end": 0.9},
            5,
            [0.9 + (0.5 - 0.9) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)],
        ),
        ({"schedule": "step", "start": 0.5, "end": 0.9, "steps": 2}, 6, [0.5, 0.5, 0.5, 0.9, 0.9, 0.9]),
        ({"schedule": "step", "start": 0.6, "end": 1.0, "steps": 3}, 6, [0.6, 0.6, 0.8, 0.8, 1.0, 1.0]),
        (
            {"schedule": "step", "start": 0.9, "end": 0.5, "milestones": [2, 5]},
            6,
            [0.9, 0.9, 0.7, 0.7, 0.7, 0.5],
        ),
    ],
)
def test_adamixup_ratio_follows_the_schedule_exactly(kwargs, epochs, expected):
    cb = AdaMixupScheduler(**kwargs)
    module, _ = _fit(cb, epochs)
    assert cb.history == pytest.approx(expected, abs=1e-9)
    # Every pair of every batch of epoch e was mixed with exactly the scheduled ratio.
    assert [sorted(module.used[e]) for e in range(epochs)] == [[round(r, 6)] for r in expected]
    assert module.defense_info["ratio_final"] == pytest.approx(expected[-1])
    assert module.defense_info["ratio_mean"] == pytest.approx(float(np.mean(expected)))


def _brute_force_advantage(loss_in: np.ndarray, loss_out: np.ndarray) -> float:
    thresholds = np.r_[np.unique(np.r_[loss_in, loss_out]), np.inf]
    return max(0.0, max((loss_in <= t).mean() - (loss_out <= t).mean() for t in thresholds))


def test_closed_loop_mixes_more_on_a_leak_and_less_without_one():
    kw = {"closed_loop": True, "start": 0.8, "step_size": 0.1, "target": 0.3, "min_ratio": 0.6, "max_ratio": 0.95}
    # Leak: the public probe holds the same inputs with wrong labels, so the loss attack separates them.
    leak = AdaMixupScheduler(**kw)
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 6, generator=g) * 4
    y = torch.arange(64) % 4
    x = centers[y] + 0.3 * torch.randn(64, 6, generator=g)
    module, _ = _fit(leak, 5, public=ArrayData(x, (y + 1) % 4))
    assert all(s > 0.3 for s in leak.signals)
    assert leak.history == pytest.approx([0.8, 0.7, 0.6, 0.6, 0.6])  # down by step_size, clipped at min_ratio
    assert [sorted(module.used[e]) for e in range(5)] == [[round(r, 6)] for r in leak.history]
    assert module.defense_info["signal_final"] == pytest.approx(leak.signals[-1])
    # The signal is the loss attack's max(TPR - FPR) on the probe, computed independently here.
    train, public = leak.probe(module)
    loss_in = F.cross_entropy(module.clean_logits(train.x), train.y, reduction="none").numpy()
    loss_out = F.cross_entropy(module.clean_logits(public.x), public.y, reduction="none").numpy()
    assert leak.measure(module) == pytest.approx(_brute_force_advantage(loss_in, loss_out), abs=1e-9)
    # No leak: the public probe is the training probe itself, so the signal is exactly 0 -> less mixing.
    calm = AdaMixupScheduler(**kw)
    module, _ = _fit(calm, 4)
    assert calm.signals == [0.0] * 4
    assert calm.history == pytest.approx([0.8, 0.9, 0.95, 0.95])  # up by step_size, clipped at max_ratio
    gap = AdaMixupScheduler(**{**kw, "signal": "loss_gap"})
    assert gap.measure(module) == 0.0


def test_closed_loop_without_public_records_names_the_key():
    with pytest.raises(ValueError, match="dataset.public_size"):
        _fit(AdaMixupScheduler(closed_loop=True), 1, public=ArrayData(torch.zeros(0, 6), torch.zeros(0)))


# ---- Mixup Inference -------------------------------------------------------------------------------------------
# Recognisable records: feature 4 = pool id + 1 (0 for queries), feature 5 = 1 for queries (0 in the pool) so that
# a mixed input carries lam there, feature 6 = query id + 1. Any model input can be decoded to (query, pool record).
def _mi_setup(n_query=24, per_class=10, classes=4):
    g = torch.Generator().manual_seed(0)
    pool_y = torch.arange(classes).repeat_interleave(per_class)
    pool_x = torch.zeros(len(pool_y), 7)
    pool_x[:, :4] = torch.randn(len(pool_y), 4, generator=g)
    pool_x[:, 4] = torch.arange(len(pool_y)) + 1.0
    q = torch.zeros(n_query, 7)
    q[:, :4] = torch.randn(n_query, 4, generator=g)
    q[:, 5] = 1.0
    q[:, 6] = torch.arange(n_query) + 1.0
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.Tanh(), torch.nn.Linear(16, classes)).eval()
    calls: list[torch.Tensor] = []

    def clean_logits(x):
        calls.append(x.clone())
        return model(x)

    return ArrayData(pool_x, pool_y), q, model, clean_logits, calls


def _decode(calls, q):
    """(query, pool record, lam) of every mixed input the predictor sent to the model (after the clean pass)."""
    rows = torch.cat(calls[1:])
    lam = rows[:, 5]
    b = (rows[:, 6] / lam).round().long() - 1
    j = (rows[:, 4] / (1 - lam)).round().long() - 1
    return rows, b, j, lam


@torch.no_grad()
def _expected_log_mean(model, q_b, pool_x, js, lam):
    """Independent loop: log of the mean softmax over the given pool records, one forward pass per record."""
    probs = [model((lam * q_b + (1 - lam) * pool_x[j])[None]).softmax(-1)[0] for j in js]
    return torch.stack(probs).mean(0).log()


@pytest.mark.parametrize("mode,lam", [("pl", 0.5), ("ol", 0.4)])
def test_mixup_inference_returns_the_mean_of_n_mixed_predictions(mode, lam):
    pool, q, model, clean_logits, calls = _mi_setup()
    mi = MixupInference(pool, seed=5, mode=mode, n_samples=30, chunk_size=50)  # 2 draws per pass: 15 passes
    out = mi(clean_logits, q)
    assert torch.equal(calls[0], q)  # y_hat comes from the clean query
    y_hat = model(q).argmax(-1)
    rows, b, j, lam_used = _decode(calls, q)
    assert torch.allclose(lam_used, torch.full_like(lam_used, lam))
    assert ((j >= 0) & (j < len(pool))).all()  # only pool records are drawn ...
    assert torch.allclose(rows, lam * q[b] + (1 - lam) * pool.x[j], atol=1e-6)  # ... and mixed with the query
    assert torch.equal(torch.bincount(b, minlength=len(q)), torch.full((len(q),), 30))  # N per query
    if mode == "pl":
        assert torch.equal(pool.y[j], y_hat[b])  # PL: the predicted class
    else:
        assert (pool.y[j] != y_hat[b]).all()  # OL: another class, each of them drawn
        for i in range(len(q)):
            assert set(pool.y[j[b == i]].tolist()) == set(range(4)) - {int(y_hat[i])}
    for i in range(len(q)):
        expected = _expected_log_mean(model, q[i], pool.x, j[b == i].tolist(), lam)
        assert torch.allclose(out[i], expected, atol=1e-5)
    # Seeded: the same seed gives the same output, another seed other draws.
    again = MixupInference(pool, seed=5, mode=mode, n_samples=30)(lambda x: model(x), q)
    other = MixupInference(pool, seed=6, mode=mode, n_samples=30)(lambda x: model(x), q)
    assert torch.allclose(out, again, atol=1e-6) and not torch.allclose(out, other, atol=1e-4)


def test_mixup_inference_pass_size_changes_how_not_what():
    """chunk_size bounds the records per forward pass (None: 256 on a CPU) and leaves the outputs as they are."""
    pool, q, model, clean_logits, calls = _mi_setup(n_query=40)
    outs = {}
    for chunk in (7, 50, 4096, None):
        calls.clear()
        outs[chunk] = MixupInference(pool, seed=3, n_samples=30, chunk_size=chunk)(clean_logits, q)
        limit = 256 if chunk is None else chunk
        assert max(len(c) for c in calls[1:]) <= limit and sum(len(c) for c in calls[1:]) == 40 * 30
    assert len(calls) == 1 + 5  # None on a CPU: 1200 mixed records in passes of 256
    for chunk in (7, 50, None):
        assert torch.allclose(outs[chunk], outs[4096], atol=1e-6, rtol=0), chunk
    with pytest.raises(ValueError, match="chunk_size=0"):
        MixupInference(pool, chunk_size=0)
    for mode in ("pl", "ol", "combined"):  # an empty batch of queries: an empty answer, not an error
        assert MixupInference(pool, mode=mode)(clean_logits, q[:0]).shape == (0, 4)


@pytest.mark.parametrize("threshold", [-1.0, 0.05, 2.0])
def test_mixup_inference_combined_picks_pl_or_ol_by_the_confidence_gap(threshold):
    pool, q, model, clean_logits, calls = _mi_setup()
    mi = MixupInference(pool, seed=1, mode="combined", combined_n_pl=5, combined_n_ol=15, threshold=threshold)
    out = mi(clean_logits, q)
    _, b, j, lam = _decode(calls, q)
    y_hat = model(q).argmax(-1)
    clean_conf = model(q).softmax(-1).max(-1).values
    chose_pl = []
    for i in range(len(q)):
        pl_j, ol_j = j[(b == i) & (lam == 0.5)], j[(b == i) & (lam == 0.4)]
        assert len(pl_j) == 5 and len(ol_j) == 15
        assert (pool.y[pl_j] == y_hat[i]).all() and (pool.y[ol_j] != y_hat[i]).all()
        pl_out = _expected_log_mean(model, q[i], pool.x, pl_j.tolist(), 0.5)
        ol_out = _expected_log_mean(model, q[i], pool.x, ol_j.tolist(), 0.4)
        use_pl = bool(clean_conf[i] - pl_out.exp().max() < threshold)
        chose_pl.append(use_pl)
        assert torch.allclose(out[i], pl_out if use_pl else ol_out, atol=1e-5)
    if threshold == -1.0:
        assert not any(chose_pl)
    if threshold == 2.0:
        assert all(chose_pl)


def test_mixup_inference_errors():
    pool, q, model, clean_logits, _ = _mi_setup()
    with pytest.raises(ValueError, match="dataset.public_size"):
        MixupInference(None, seed=0)
    with pytest.raises(ValueError, match="dataset.public_size"):
        MixupInference(ArrayData(torch.zeros(0, 7), torch.zeros(0)), seed=0)
    for kw, needle in [
        ({"mode": "both"}, "mode='both'"),
        ({"n_samples": 0}, "n_samples=0"),
        ({"lam_pl": 0.0}, "lam_pl=0.0"),
        ({"lam_ol": 1.5}, "lam_ol=1.5"),
        ({"combined_n_ol": -2}, "combined_n_ol=-2"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
            MixupInference(pool, seed=0, **kw)
    # MI-PL needs pool records of the predicted class: a pool without class y_hat is an error naming the key.
    y_hat = model(q).argmax(-1)
    keep = pool.y != y_hat[0]
    with pytest.raises(ValueError, match="dataset.public_size"):
        MixupInference(pool.subset(torch.nonzero(keep).flatten()), seed=0, mode="pl")(clean_logits, q)
    single = pool.subset(torch.nonzero(pool.y == y_hat[0]).flatten())
    with pytest.raises(ValueError, match="dataset.public_size"):
        MixupInference(single, seed=0, mode="ol")(clean_logits, q[:1])


def test_bad_mixup_and_adamixup_values_fail_with_messages():
    for kw, needle in [
        ({"alpha": -1.0}, "alpha=-1.0"),
        ({"label_mode": "hard"}, "label_mode='hard'"),
        ({"ratio": 0.3}, "ratio=0.3"),
    ]:
        with pytest.raises(ValueError, match=needle):
            _module(**kw)
    for kw, needle in [
        ({"schedule": "exp"}, "schedule='exp'"),
        ({"start": 0.2}, "start=0.2"),
        ({"end": 1.1}, "end=1.1"),
        ({"steps": 1}, "steps=1"),
        ({"milestones": [3, 2]}, "milestones"),
        ({"signal": "auc"}, "signal='auc'"),
        ({"min_ratio": 0.9, "max_ratio": 0.6}, "min_ratio=0.9"),
        ({"step_size": 0}, "step_size=0"),
    ]:
        with pytest.raises(ValueError, match=needle):
            AdaMixupScheduler(**kw)
    plain = create_model("mlp", input_shape=(6,), num_classes=4, hidden=[8])
    from mia_bench.training import ClassifierModule

    module = ClassifierModule(plain, optimizer=lambda p: torch.optim.Adam(p))
    with pytest.raises(ValueError, match="MixupModule"):
        AdaMixupScheduler().on_fit_start(None, module)


# ---- end to end ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "defense,extra",
    [
        ("mixup", []),
        ("adamixup", ["callbacks.adamixup.closed_loop=true"]),
        ("mixup_inference", ["defense.predict.n_samples=4"]),
    ],
)
def test_tiny_run_of_each_defense(compose_cfg, tmp_path, defense, extra):
    cfg = compose_cfg([*TINY, f"defense={defense}", "attack=[loss,lira_online]", *extra])
    run(cfg, {"defense": defense})
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert {r["defense"] for r in records} == {defense} and len(records) == 2
    assert all(0.5 < r["test_acc_mean"] <= 1.0 for r in records)
    if defense == "adamixup":
        assert 0.5 <= records[0]["defense/ratio_final"] <= 1.0 and "defense/signal_final" in records[0]
        header = (tmp_path / "train_logs" / "model_0" / "metrics.csv").read_text().splitlines()[0]
        assert "adamixup/ratio" in header and "adamixup/signal" in header

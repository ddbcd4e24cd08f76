"""The classic regularisers as defenses: each config reaches the mechanism it names, and early stopping stops at
the validation minimum and deploys those weights."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mia_bench.data.base import ArrayData
from mia_bench.defenses.early_stopping import BestModelEarlyStopping
from mia_bench.models import create_model
from mia_bench.training import ClassifierModule, TensorBatchLoader
from mia_bench.training.train import Recipe, build_module


class _Shape:
    input_shape = (1, 8, 8)
    num_classes = 10


def test_dropout_defense_sets_the_rate_and_is_off_at_prediction(compose_cfg):
    module = build_module(Recipe.from_config(compose_cfg(["defense=dropout"])), _Shape)
    drops = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.5 for m in drops)
    x = torch.randn(16, 1, 8, 8)
    module.train()
    assert not torch.equal(module(x), module(x))  # stochastic in training
    assert torch.equal(module.predict_logits(x), module.predict_logits(x))  # deterministic for the attacker
    assert build_module(Recipe.from_config(compose_cfg([])), _Shape).model.dropout.p == 0.0


def test_label_smoothing_defense_changes_the_training_loss(compose_cfg):
    torch.manual_seed(0)
    module = build_module(Recipe.from_config(compose_cfg(["defense=label_smoothing"])), _Shape)
    assert module.label_smoothing == 0.1
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    module.log_dict = lambda *a, **k: None
    loss = module.training_step((x, y), 0)
    logits = module.model(x)
    # By hand: targets (1 - eps) one-hot + eps / C.
    target = 0.9 * F.one_hot(y, 10).float() + 0.1 / 10
    expected = -(target * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(loss, F.cross_entropy(logits, y), atol=1e-4)


def test_weight_decay_defense_reaches_the_optimizer(compose_cfg):
    cfg = compose_cfg(["defense=weight_decay"])
    module = build_module(Recipe.from_config(cfg), _Shape)
    opt = module.configure_optimizers()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.005]
    # Mechanism: with a zero loss gradient, one Adam step still moves every nonzero weight toward 0 (the L2 term).
    w = [p.detach().clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, w0 in zip(module.parameters(), w, strict=True):
        step = p.detach() - w0
        assert ((step * w0)[w0 != 0] < 0).all()


def _noisy_task(seed: int = 0):
    """Train labels are pure noise for half the records: validation loss falls, then rises as the model
    memorises the noise, so early stopping has a minimum to find."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 20, generator=g) * 2
    y = torch.randint(0, 4, (400,), generator=g)
    x = centers[y] + torch.randn(400, 20, generator=g) * 1.5
    y_train = torch.where(torch.rand(200, generator=g) < 0.5, torch.randint(0, 4, (200,), generator=g), y[:200])
    return (x[:200], y_train), (x[200:], y[200:])


def _fit(callback, epochs=60, validate=True):
    (xt, yt), (xv, yv) = _noisy_task()
    pl.seed_everything(0, verbose=False)
    model = create_model("mlp", input_shape=(20,), num_classes=4, hidden=[128, 128])
    module = ClassifierModule(model, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    losses = []

    class Record(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["val/loss"]))

    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback, Record()],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    val = TensorBatchLoader(xv, yv, 1000, shuffle=False) if validate else None
    trainer.fit(module, TensorBatchLoader(xt, yt, 32, seed=0), val)
    return module, losses, (xv, yv)


def test_early_stopping_stops_at_the_minimum_and_keeps_the_best_weights():
    module, losses, (xv, yv) = _fit(BestModelEarlyStopping(monitor="val/loss", mode="min", patience=3))
    best = int(torch.tensor(losses).argmin())
    info = module.defense_info
    assert info["epochs_trained"] == len(losses) < 60  # it did stop
    assert info["best_epoch"] == best + 1
    assert len(losses) == best + 1 + 3  # exactly `patience` epochs past the best
    deployed = F.cross_entropy(module.predict_logits(xv), yv).item()
    assert deployed == pytest.approx(losses[best], abs=1e-5)  # the best epoch's weights, not the last epoch's
    assert deployed < losses[-1]


def test_early_stopping_without_validation_is_an_error():
    with pytest.raises(ValueError, match="train.validate=true"):
        _fit(BestModelEarlyStopping(monitor="val/loss"), epochs=3, validate=False)


def test_early_stopping_config_validates_on_the_public_split(compose_cfg):
    cfg = compose_cfg(["defense=early_stopping"])
    assert cfg.train.validate and cfg.train.val_split == "public"
    cb = instantiate(cfg.callbacks.early_stopping)
    assert isinstance(cb, BestModelEarlyStopping) and cb.patience == 5 and cb.restore_best


def test_early_stopping_end_to_end_reports_epochs(compose_cfg, tmp_path):
    from conftest import TINY

    from mia_bench.pipeline import run

    cfg = compose_cfg([*TINY, "defense=early_stopping", "train.epochs=4", "attack=loss"])
    records = run(cfg)
    assert records[0]["defense"] == "early_stopping"
    assert 1 <= records[0]["defense/epochs_trained"] <= 4 and 1 <= records[0]["defense/best_epoch"] <= 4
    assert ArrayData is not None

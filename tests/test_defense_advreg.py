"""Adversarial regularisation (min-max game): the two players alternate as configured, h's non-members come only from
the public split, the classifier's loss carries the lam-weighted gain, schedulers are stepped under manual
optimisation, bad values are errors, and the advreg and pruning + advreg configs run end to end."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from mia_bench.data.base import ArrayData
from mia_bench.defenses.advreg import AdvRegModule
from mia_bench.models import create_model
from mia_bench.pipeline import run
from mia_bench.training import TensorBatchLoader
from tests.conftest import TINY

SMALL_H = {"probs_hidden": [16], "label_hidden": [8], "combine_hidden": [8]}



def _data(n: int, seed: int = 0, offset: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() + offset
    return ArrayData(x, y)


def _module(**kwargs) -> AdvRegModule:
    model = create_model("mlp", input_shape=(1, 8, 8), num_classes=4, hidden=[16])
    kwargs = {"optimizer": lambda p: torch.optim.Adam(p, lr=1e-2), **SMALL_H, **kwargs}
    return AdvRegModule(model=model, **kwargs)


def _fit(module: AdvRegModule, train: ArrayData, public: ArrayData | None, epochs: int, callbacks=()):
    module.attach_data(train, public)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=list(callbacks),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(module, TensorBatchLoader(train.x, train.y, 16, seed=0))
    return trainer


class _StepCounter(pl.Callback):
    """Counts the optimizer steps actually taken by each optimizer (torch step post-hooks), per epoch."""

    def __init__(self) -> None:
        self.per_epoch: list[tuple[int, int]] = []
        self.counts = [0, 0]

    def on_train_start(self, trainer, pl_module):
        for i, opt in enumerate(trainer.optimizers):
            opt.register_step_post_hook(lambda *a, i=i: self.counts.__setitem__(i, self.counts[i] + 1))

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch.append(tuple(self.counts))


def test_players_alternate_k_h_steps_per_classifier_step_after_warmup():
    torch.manual_seed(0)
    counter = _StepCounter()
    module = _module(k=3, warmup_epochs=1)
    trainer = _fit(module, _data(64), _data(40, seed=1, offset=3.0), epochs=3, callbacks=[counter])
    # 4 classifier steps per epoch; none of h in the warm-up epoch, then exactly k = 3 per classifier step
    assert counter.per_epoch == [(4, 0), (8, 12), (12, 24)]
    assert (module.f_steps, module.h_steps) == (12, 24)
    # the classifier's optimizer holds exactly the classifier's parameters; h's optimizer exactly h's
    ids = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in trainer.optimizers]
    assert ids[0] == {id(p) for p in module.model.parameters()}
    assert ids[1] == {id(p) for p in module.inference_model.parameters()}
    assert {"train/h_loss", "train/h_acc", "train/gain", "train/ce", "train/loss"} <= set(trainer.logged_metrics)


def test_h_sees_members_from_the_training_records_and_references_only_from_the_public_split(monkeypatch):
    torch.manual_seed(0)
    train, public = _data(64), _data(40, seed=1, offset=10.0)
    module = _module(k=2, warmup_epochs=0, attack_batch_size=24)
    seen = []
    original = module.h_loss

    def spy(xm, ym, xr, yr):
        seen.append((xm, ym, xr, yr))
        return original(xm, ym, xr, yr)

    monkeypatch.setattr(module, "h_loss", spy)
    _fit(module, train, public, epochs=1)
    assert len(seen) == 4 * 2

    def match(x, pool):  # [len(x), len(pool)]: which pool rows equal each row of x
        return (x.flatten(1)[:, None, :] == pool.flatten(1)[None, :, :]).all(-1)

    for xm, ym, xr, yr in seen:
        assert len(xm) == len(xr) == 24
        assert match(xr, public.x).any(1).all() and not match(xr, train.x).any()
        assert match(xm, train.x).any(1).all() and not match(xm, public.x).any()
        assert torch.equal(public.y[match(xr, public.x).int().argmax(1)], yr)  # with their own labels
        assert torch.equal(train.y[match(xm, train.x).int().argmax(1)], ym)
        assert len(torch.unique(xr.flatten(1), dim=0)) == 24  # distinct records within a batch


class _NoOpt:
    def zero_grad(self):
        pass

    def step(self, *a, **k):
        pass


@pytest.mark.parametrize("gain", ["log", "linear"])
def test_classifier_loss_is_ce_plus_lam_times_the_gain_by_hand(gain):
    torch.manual_seed(0)
    module = _module(k=1, warmup_epochs=0, lam=2.5, gain=gain, label_smoothing=0.1)
    module.attach_data(_data(64), _data(40, seed=1, offset=3.0))
    # Outside a Trainer: no-op optimizers so parameters stay put and the loss can be recomputed by hand.
    module.optimizers = lambda: (_NoOpt(), _NoOpt())
    module.manual_backward = lambda loss: None
    module.log_dict = lambda *a, **k: None
    x, y = _data(16, seed=2).x, _data(16, seed=2).y
    loss = module.training_step((x, y), 0)
    logits = module.model(x)
    h = module.inference_model(logits.softmax(-1), F.one_hot(y, 4).float())
    term = torch.log(torch.sigmoid(h)).mean() if gain == "log" else torch.sigmoid(h).mean()
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(loss, ce + 2.5 * term, atol=1e-6)
    assert not torch.allclose(loss, ce, atol=1e-3)


def test_h_loss_is_the_two_binary_cross_entropies_by_hand():
    torch.manual_seed(0)
    module = _module()
    m, r = _data(8), _data(6, seed=1, offset=3.0)
    loss, acc = module.h_loss(m.x, m.y, r.x, r.y)
    with torch.no_grad():
        module.model.eval()
        pm, pr = module.model(m.x).softmax(-1), module.model(r.x).softmax(-1)
    hm = torch.sigmoid(module.inference_model(pm, F.one_hot(m.y, 4).float()))
    hr = torch.sigmoid(module.inference_model(pr, F.one_hot(r.y, 4).float()))
    expected = -(torch.log(hm).mean() + torch.log(1 - hr).mean())  # Nasr's gain of h, negated
    assert torch.allclose(loss, expected, atol=1e-5)
    assert acc == pytest.approx(float(torch.cat([hm > 0.5, hr <= 0.5]).float().mean()))


def test_lr_scheduler_is_stepped_under_manual_optimisation():
    module = _module(
        warmup_epochs=1,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.08),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    trainer = _fit(module, _data(32), _data(20, seed=1, offset=3.0), epochs=3)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.08 * 0.5**3)
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(1e-3)  # h's optimizer has no schedule


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": -1}, "lam=-1: expected >= 0"),
        ({"k": 0}, "k=0: expected a whole number"),
        ({"k": 1.5}, "k=1.5"),
        ({"warmup_epochs": -2}, "warmup_epochs=-2"),
        ({"gain": "exp"}, "gain='exp': expected one of"),
        ({"attack_batch_size": 0}, "attack_batch_size=0"),
        ({"probs_hidden": []}, "probs_hidden=\\[\\]"),
    ],
)
def test_bad_values_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _module(**kwargs)


def test_empty_public_split_and_too_long_warmup_are_errors():
    with pytest.raises(ValueError, match="dataset.public_size"):
        _fit(_module(warmup_epochs=0), _data(32), None, epochs=1)
    with pytest.raises(ValueError, match="dataset.public_size"):
        _fit(_module(warmup_epochs=0), _data(32), _data(0), epochs=1)
    with pytest.raises(ValueError, match="warmup_epochs=3 >= max_epochs=3"):
        _fit(_module(warmup_epochs=3), _data(32), _data(8), epochs=3)


@pytest.mark.parametrize("defense", ["advreg", "mia_pruning_advreg"])
def test_pipeline_runs(compose_cfg, tmp_path, defense):
    cfg = compose_cfg([*TINY, f"defense={defense}", "train.module.warmup_epochs=1", "attack=[loss]", "logger=none"])
    assert cfg.train.module._target_.endswith("AdvRegModule")
    run(cfg, {"defense": defense})
    rec = json.loads((tmp_path / "metrics.json").read_text())[0]
    assert rec["defense"] == defense and 0.0 <= rec["auc_mean"] <= 1.0
    if defense == "mia_pruning_advreg":
        assert rec["defense/sparsity"] == pytest.approx(cfg.callbacks.admm_pruning.sparsity, abs=1e-3)
    else:
        assert "defense/sparsity" not in rec

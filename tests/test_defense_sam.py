"""SAM: exactly two forward/backward passes per step, one global step per SAM step, the update of a hand-computed
SAM (and ASAM) step, BatchNorm statistics from the first pass only, the LR schedule, errors, and an end-to-end run."""

from __future__ import annotations

import copy
import json
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mia_bench.defenses.sam import SAMModule
from mia_bench.models import create_model
from mia_bench.training import TensorBatchLoader


def _data(n: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _mlp(hidden=(8,)):
    return create_model("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=list(hidden))


def _trainer(**kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return pl.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def test_two_passes_per_step_and_one_global_step_per_sam_step():
    torch.manual_seed(0)
    module = SAMModule(model=_mlp(), optimizer=partial(torch.optim.SGD, lr=0.1))
    forwards, backwards = [], []
    module.model.register_forward_hook(lambda m, i, o: forwards.append(1))
    next(module.model.parameters()).register_hook(lambda g: backwards.append(1))
    x, y = _data(50)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, TensorBatchLoader(x, y, 10, seed=0))  # 5 batches x 2 epochs
    assert trainer.global_step == 10
    assert len(forwards) == 20 and len(backwards) == 20


def _grad(model: nn.Module, x, y, smoothing: float) -> list[torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), y, label_smoothing=smoothing).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("adaptive", [False, True])
def test_update_equals_a_hand_computed_sam_step(adaptive):
    torch.manual_seed(0)
    rho, lr, smoothing = 0.5, 0.3, 0.1
    model = _mlp()
    ref = copy.deepcopy(model)
    module = SAMModule(
        model=model, optimizer=partial(torch.optim.SGD, lr=lr), rho=rho, adaptive=adaptive, label_smoothing=smoothing
    )
    x, y = _data(20)
    _trainer(max_steps=1).fit(module, TensorBatchLoader(x, y, 20, shuffle=False))
    # By hand: e = rho g / ||g|| (ASAM: rho w^2 g / ||w g||); gradient at w + e; SGD step from w.
    w = [p.detach().clone() for p in ref.parameters()]
    g = _grad(ref, x, y, smoothing)
    t = [wi.abs() if adaptive else torch.ones_like(wi) for wi in w]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g, strict=True)))
    with torch.no_grad():
        for p, ti, gi in zip(ref.parameters(), t, g, strict=True):
            p.add_(rho * ti * ti * gi / norm)
    g_sam = _grad(ref, x, y, smoothing)
    trained = [p.detach() for p in module.model.parameters()]
    for p, wi, gsi in zip(trained, w, g_sam, strict=True):
        assert torch.allclose(p, wi - lr * gsi, atol=1e-6)
    plain_step = [wi - lr * gi for wi, gi in zip(w, g, strict=True)]  # what SGD alone would do
    assert not all(torch.allclose(p, s, atol=1e-4) for p, s in zip(trained, plain_step, strict=True))


def test_batchnorm_statistics_come_from_the_first_pass_only():
    torch.manual_seed(0)
    model = create_model("cnn", input_shape=(1, 8, 8), num_classes=3, channels=[4], norm="batch")
    first_pass = copy.deepcopy(model)
    module = SAMModule(model=model, optimizer=partial(torch.optim.SGD, lr=0.1), rho=0.5)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    _trainer(max_steps=1).fit(module, TensorBatchLoader(x, y, 16, shuffle=False))
    first_pass.train()
    first_pass(x)  # one forward at w: what the running statistics should hold
    bn, ref = module.model.features[1], first_pass.features[1]
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(bn.running_var, ref.running_var)
    assert bn.momentum == 0.1  # restored after the second pass


def test_the_lr_schedule_is_stepped_every_epoch():
    torch.manual_seed(0)
    module = SAMModule(
        model=_mlp(),
        optimizer=partial(torch.optim.SGD, lr=0.8),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    x, y = _data(20)
    _trainer(max_epochs=3).fit(module, TensorBatchLoader(x, y, 10))
    assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.1)


def test_bad_values_are_errors():
    with pytest.raises(ValueError, match="rho=0"):
        SAMModule(model=_mlp(), optimizer=partial(torch.optim.SGD, lr=0.1), rho=0)
    module = SAMModule(model=_mlp(), optimizer=partial(torch.optim.SGD, lr=0.1))
    x, y = _data(20)
    with pytest.raises(ValueError, match="precision='bf16-mixed'"):
        _trainer(precision="bf16-mixed").fit(module, TensorBatchLoader(x, y, 10))


def test_sam_end_to_end(compose_cfg, tmp_path):
    from conftest import TINY

    from mia_bench.pipeline import run

    cfg = compose_cfg([*TINY, "defense=sam", "attack=loss"])
    assert cfg.train.module.rho == 0.05 and cfg.train.module.adaptive is False
    records = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved[0]["defense"] == records[0]["defense"] == "sam"
    assert saved[0]["test_acc_mean"] > 0.5

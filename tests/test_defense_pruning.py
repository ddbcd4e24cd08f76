"""MIA-Pruning (ADMM) callback: the ADMM variables follow the recipe exactly, the W-step gradient term is added once
per classifier step (also under manual optimisation with two optimizers), hard pruning reaches each layer's target
and fine-tuning keeps it, biases and norms are untouched, and the reported figures are right."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from mia_bench.data.base import ArrayData
from mia_bench.defenses.advreg import AdvRegModule
from mia_bench.defenses.pruning import ADMMPruning, num_pruned, project_topk
from mia_bench.models import create_model
from mia_bench.pipeline import run
from mia_bench.training import ClassifierModule, TensorBatchLoader
from tests.conftest import TINY


def _data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def _cnn():
    # features.0 conv (36 weights) -> BatchNorm -> ...; features.4 conv (288); head Linear (32) + bias.
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=4, channels=[4, 8], norm="batch")


def _trainer(callbacks, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )


def _sgd(p):
    return torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3)


def test_admm_update_is_the_topk_projection_of_w_plus_u_by_hand():
    layer = nn.Linear(3, 2, bias=False)
    w = torch.tensor([[0.5, -2.0, 0.1], [3.0, -0.2, 0.4]])
    u = torch.tensor([[0.2, 0.1, -0.6], [-0.5, 0.3, 0.0]])
    with torch.no_grad():
        layer.weight.copy_(w)
    cb = ADMMPruning(sparsity=0.5)  # 6 weights -> 3 pruned
    cb.targets = cb.resolve_targets(layer)
    assert list(cb.targets) == ["weight"]
    cb.admm_init()
    # Z = proj(W) at init keeps |3.0|, |-2.0|, |0.5|; U = 0.
    assert torch.equal(cb.Z["weight"], torch.tensor([[0.5, -2.0, 0.0], [3.0, 0.0, 0.0]]))
    assert torch.equal(cb.U["weight"], torch.zeros(2, 3))
    cb.U["weight"] = u.clone()
    cb.admm_update()
    # W + U = [[0.7, -1.9, -0.5], [2.5, 0.1, 0.4]]: the three largest magnitudes are 2.5, -1.9, 0.7.
    z = torch.tensor([[0.7, -1.9, 0.0], [2.5, 0.0, 0.0]])
    assert torch.allclose(cb.Z["weight"], z, atol=1e-7)
    assert torch.allclose(cb.U["weight"], u + w - z, atol=1e-7)  # U += W - Z
    assert torch.equal(layer.weight.detach(), w)  # the ADMM update never touches W itself


def test_project_topk_counts():
    t = torch.randn(1000)
    for s in (0.0, 0.5, 0.9, 0.999):
        assert int((project_topk(t, s) == 0).sum()) == num_pruned(1000, s) == round(s * 1000)
    assert num_pruned(2, 0.9) == 1  # at least one weight survives


class _GradProbe(pl.Callback):
    """Records, at every optimizer step, the gradient of each watched parameter (placed before and after the
    pruning callback, the difference is what the callback added)."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = params
        self.records: list[tuple[int, dict[str, torch.Tensor | None]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.records.append(
            (id(optimizer), {n: None if p.grad is None else p.grad.clone() for n, p in self.params.items()})
        )


class _StateProbe(pl.Callback):
    def __init__(self, cb: ADMMPruning, params: dict[str, nn.Parameter]) -> None:
        self.cb, self.params, self.records = cb, params, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.records.append(
            {
                n: (p.detach().clone(), self.cb.Z.get(n), None if n not in self.cb.U else self.cb.U[n].clone())
                for n, p in self.params.items()
            }
        )


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "advreg_manual_two_optimizers"])
def test_admm_gradient_is_added_exactly_once_per_classifier_step(manual):
    torch.manual_seed(0)
    x, y = _data(64)
    model = create_model("mlp", input_shape=(1, 8, 8), num_classes=4, hidden=[16])
    if manual:
        module = AdvRegModule(
            model=model, optimizer=_sgd, warmup_epochs=0, k=2, probs_hidden=[8], label_hidden=[4], combine_hidden=[4]
        )
        module.attach_data(ArrayData(x, y), ArrayData(x[:20] + 5, y[:20]))
    else:
        module = ClassifierModule(model, optimizer=_sgd)
    rho = 0.37
    cb = ADMMPruning(sparsity=0.6, rho=rho, pretrain_epochs=0, admm_epochs=2)
    params = dict(cb.resolve_targets(model))
    params = {n: p for n, (p, _) in params.items()}
    before, state, after = _GradProbe(params), _StateProbe(cb, params), _GradProbe(params)
    _trainer([before, state, cb, after], epochs=2).fit(module, TensorBatchLoader(x, y, 16, seed=0))
    classifier_opt = id(module.trainer.optimizers[0])
    f_steps = [i for i, (opt, _) in enumerate(after.records) if opt == classifier_opt]
    assert len(f_steps) == 8  # 4 batches x 2 epochs
    if manual:
        assert len(after.records) == 8 * 3  # k = 2 h steps per classifier step
    for i, (opt, grads) in enumerate(after.records):
        for name in params:
            g_before, g_after = before.records[i][1][name], grads[name]
            if opt != classifier_opt:  # h's steps: the classifier's gradients are not touched
                assert (g_before is None and g_after is None) or torch.equal(g_before, g_after)
                continue
            w, z, u = state.records[i][name]
            assert torch.allclose(g_after - g_before, rho * (w - z + u), atol=1e-6, rtol=0)
    # U is zero during the first ADMM epoch and has moved (U += W - Z) in the second
    u_sums = [sum(float(r[n][2].abs().sum()) for n in params) for r in state.records]
    assert u_sums[0] == 0 and u_sums[-1] > 0


@pytest.fixture(scope="module", params=[False, True], ids=["automatic", "advreg_manual"])
def pruned(request):
    return _fit_pruned(manual=request.param)


def _fit_pruned(callback_cls=ADMMPruning, epochs: int = 4, manual: bool = False):
    """Pretrain 1 epoch, ADMM 1, fine-tune 2, with momentum SGD + weight decay; under manual optimisation the
    advreg game runs throughout (two optimizers, h steps between the classifier's)."""
    torch.manual_seed(0)
    x, y = _data(96)
    model = _cnn()
    if manual:
        module = AdvRegModule(
            model=model, optimizer=_sgd, warmup_epochs=0, k=2, probs_hidden=[8], label_hidden=[4], combine_hidden=[4]
        )
        module.attach_data(ArrayData(x, y), ArrayData(x[:20] + 5, y[:20]))
    else:
        module = ClassifierModule(model, optimizer=_sgd)
    cb = callback_cls(
        sparsity=0.75,
        layer_sparsity=[{"pattern": "head.*", "sparsity": 0.5}],
        rho=0.05,
        pretrain_epochs=1,
        admm_epochs=1,
    )
    zeros: list[dict[str, int]] = []

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch >= 2:
                zeros.append({n: int((p == 0).sum()) for n, p in model.named_parameters()})

    _trainer([cb, Count()], epochs).fit(module, TensorBatchLoader(x, y, 16, seed=0))
    return model, module, cb, zeros


def test_hard_prune_reaches_each_target_and_masked_finetune_with_momentum_keeps_it(pruned):
    model, module, cb, zeros = pruned
    expected = {
        "features.0.weight": num_pruned(36, 0.75),
        "features.4.weight": num_pruned(288, 0.75),
        "head.weight": num_pruned(32, 0.5),
    }
    assert {n: r for n, (_, r) in cb.targets.items()} == {
        "features.0.weight": 0.75,
        "features.4.weight": 0.75,
        "head.weight": 0.5,
    }
    assert len(zeros) == 2 * 6  # every fine-tune step (2 epochs x 6 batches)
    for counts in zeros:
        for name, n_zero in expected.items():
            assert counts[name] == n_zero, name
        # biases and the BatchNorm affine parameters are never pruned
        assert all(counts[n] == 0 for n in counts if n not in expected)
    # the mask is fixed at hard-prune time: the same entries are zero at the end as right after pruning
    for name, (w, _) in cb.targets.items():
        assert torch.equal(w.detach() != 0, cb.masks[name])


def test_without_mask_reapplication_momentum_and_weight_decay_revive_pruned_weights():
    class NoReapply(ADMMPruning):
        def _after_step(self, optimizer, args, kwargs):
            pass

    _, _, cb, zeros = _fit_pruned(NoReapply)
    # gradients are still masked, yet the momentum buffers move pruned weights off zero: the test above would fail
    assert zeros[-1]["features.4.weight"] < num_pruned(288, 0.75)


def test_defense_info_reports_sparsity_and_parameter_counts(pruned):
    model, module, cb, _ = pruned
    info = module.defense_info
    pruned = [w for w, _ in cb.targets.values()]
    sparsity = sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned)
    assert info["sparsity"] == pytest.approx(sparsity)
    assert info["sparsity"] == pytest.approx((27 + 216 + 16) / (36 + 288 + 32))
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert info["total_params"] == total and info["nonzero_params"] == nonzero
    assert info["nonzero_params"] == total - 27 - 216 - 16
    assert info["compression"] == pytest.approx(total / nonzero)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sparsity": 1.0}, "sparsity=1.0: expected a fraction in"),
        ({"sparsity": -0.1}, "sparsity=-0.1"),
        ({"rho": 0}, "rho=0: expected > 0"),
        ({"pretrain_epochs": -1}, "pretrain_epochs=-1"),
        ({"admm_epochs": 2.5}, "admm_epochs=2.5: a value >= 1 is an epoch count"),
        ({"layer_sparsity": [{"pattern": "head.weight"}]}, "layer_sparsity entry"),
        ({"layer_sparsity": {"head.weight": 1.5}}, "layer_sparsity\\['head.weight'\\]=1.5"),
    ],
)
def test_bad_values_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ADMMPruning(**kwargs)


def test_phases_must_fit_and_patterns_must_match():
    x, y = _data(32)
    with pytest.raises(ValueError, match="exceed max_epochs=3"):
        _trainer([ADMMPruning(pretrain_epochs=2, admm_epochs=2)], 3).fit(
            ClassifierModule(_cnn(), optimizer=_sgd), TensorBatchLoader(x, y, 16)
        )
    with pytest.raises(ValueError, match="match no prunable weight"):
        ADMMPruning(layer_sparsity={"classifier.*": 0.5}).resolve_targets(_cnn())


def test_pipeline_reports_sparsity(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, "defense=mia_pruning", "attack=[loss]", "logger=none"])
    records = run(cfg, {"defense": "mia_pruning"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    target = cfg.callbacks.admm_pruning.sparsity
    assert on_disk[0]["defense/sparsity"] == pytest.approx(target, abs=1e-3) == records[0]["defense/sparsity"]
    assert on_disk[0]["defense/compression"] > 8

"""MID: the bottleneck head and loss as the paper defines them, a finite loss where sigma underflows, the mu
(deterministic) and sampled (the authors') predictors, the weight of the KL term, configuration errors, a tiny
end-to-end run, and the authors' CIFAR-10 setting (model and recipe)."""

from __future__ import annotations

import json
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from mia_bench.defenses.mid import MIDModule, VIBHead, log_softplus
from mia_bench.models import create_model
from mia_bench.training import TensorBatchLoader
from tests.conftest import CONF


def _module(**kwargs) -> MIDModule:
    model = create_model("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=[16])
    return MIDModule(model, optimizer=partial(torch.optim.Adam, lr=3e-3), **kwargs)


def _data(n: int = 120, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def test_the_bottleneck_replaces_the_head():
    module = _module()
    head = module.model.head
    assert isinstance(head, VIBHead)
    assert (head.encoder.in_features, head.encoder.out_features) == (16, 16)  # Linear(d, 2k), k = d / 2 = 8
    assert (head.classifier.in_features, head.classifier.out_features) == (8, 3)  # Linear(k, C)
    names = {n for n, _ in module.named_parameters()}
    assert names == {
        "model.body.1.weight", "model.body.1.bias",
        "model.head.encoder.weight", "model.head.encoder.bias",
        "model.head.classifier.weight", "model.head.classifier.bias",
    }  # fmt: skip
    assert _module(bottleneck_dim=5).model.head.classifier.in_features == 5


def test_loss_is_cross_entropy_plus_beta_times_kl():
    torch.manual_seed(0)
    beta = 0.05
    module = _module(beta=beta, label_smoothing=0.1)
    x, y = _data(32)
    torch.manual_seed(1)
    loss, logits, kl = module.mid_loss(x, y)
    # By hand, with the same noise draw.
    torch.manual_seed(1)
    h = module.model.forward_features(x)
    raw = h @ module.model.head.encoder.weight.T + module.model.head.encoder.bias
    mu, sigma = raw[:, :8], torch.log1p(torch.exp(raw[:, 8:] - 5))
    z = mu + sigma * torch.randn_like(sigma)
    ref_logits = z @ module.model.head.classifier.weight.T + module.model.head.classifier.bias
    ref_kl = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(1).mean()  # independent closed form
    target = 0.9 * F.one_hot(y, 3).float() + 0.1 / 3
    ref_ce = -(target * ref_logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert torch.allclose(kl, ref_kl, rtol=1e-5)
    assert torch.allclose(loss, ref_ce + beta * ref_kl, rtol=1e-5)
    assert kl > 30  # sigma starts near softplus(-5) ~ 0.0067: each of the 8 code dimensions costs ~4.5 nats
    # training_step returns the same loss
    module.log_dict = lambda *a, **k: None
    torch.manual_seed(1)
    assert torch.allclose(module.training_step((x, y), 0), loss)


def test_prediction_uses_mu_deterministically():
    torch.manual_seed(0)
    module = _module()
    x, _ = _data(16)
    a, b = module.predict_logits(x), module.predict_logits(x)
    assert torch.equal(a, b)
    head = module.model.head
    mu, _ = head.stats(module.model.forward_features(x))
    assert torch.allclose(a, head.classifier(mu))
    module.model.train()
    assert not torch.equal(module(x), module(x))  # the training forward samples z
    assert module.model.training  # clean_logits restores the mode


def test_the_authors_predictor_samples_one_code_per_query():
    torch.manual_seed(0)
    module = _module(predictor="sample")
    x, _ = _data(16)
    a, b = module.predict_logits(x), module.predict_logits(x)
    assert not torch.equal(a, b)  # a fresh code at every query: the same records answer differently
    head = module.model.head
    mu, sigma = head.stats(module.model.forward_features(x))
    # The logits of one code mu + sigma * eps (theirs: net(img)[0] in eval mode), one eps per query record.
    torch.manual_seed(3)
    out = module.predict_logits(x)
    torch.manual_seed(3)
    assert torch.allclose(out, head.classifier(mu + sigma * torch.randn_like(sigma)), atol=1e-6)
    assert not torch.allclose(out, head.classifier(mu), atol=1e-6)
    # The head itself is the deployed predictor: calling the model in eval mode samples too.
    module.model.eval()
    assert not torch.equal(module(x), module(x))


def test_sampling_predictor_averages_softmax_over_codes():
    torch.manual_seed(0)
    module = _module(predictor="sample", predict_samples=50)
    x, _ = _data(16)
    out = module.predict_logits(x)
    assert torch.allclose(out.logsumexp(-1), torch.zeros(16), atol=1e-5)  # log-probabilities
    assert not torch.equal(out, module.predict_logits(x))  # stochastic
    head = module.model.head
    mu, sigma = head.stats(module.model.forward_features(x))
    torch.manual_seed(5)
    out = module.predict_logits(x)
    torch.manual_seed(5)
    eps = torch.randn(50, *mu.shape)
    assert torch.allclose(out, head.classifier(mu + sigma * eps).softmax(-1).mean(0).log(), atol=1e-5)


def test_a_sigma_that_underflows_gives_a_finite_loss_and_gradient():
    torch.manual_seed(0)
    module = _module()
    x, y = _data(32)
    with torch.no_grad():
        module.model.head.encoder.bias[8:] = -300.0  # softplus(-305) is 0 in float32: sigma.log() would be -inf
    _, sigma, t = module.model.head.code(module.model.forward_features(x))
    assert (sigma == 0).all() and torch.isfinite(log_softplus(t, sigma)).all()
    loss, _, kl = module.mid_loss(x, y)
    assert torch.isfinite(loss) and kl > 8 * 290  # each code dimension costs about -log sigma ~ 305 nats
    loss.backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # The KL still pushes sigma up (d KL / d t = -1 per dimension and record, over the batch mean), not to 0.
    assert torch.all(module.model.head.encoder.bias.grad[8:] < 0)


def test_log_sigma_is_the_log_of_softplus_where_that_is_representable():
    t = torch.linspace(-19.9, 30.0, 500)
    assert torch.equal(log_softplus(t), F.softplus(t).log())  # bitwise: the default cells keep their numbers
    deep = torch.tensor([-25.0, -80.0, -200.0, -1e4])
    assert torch.equal(log_softplus(deep), deep)  # log(log1p(e^t)) = t + O(e^t)
    assert torch.allclose(
        log_softplus(torch.tensor([-25.0], dtype=torch.float64)),
        F.softplus(torch.tensor([-25.0], dtype=torch.float64)).log(),
        rtol=1e-12,
    )


def _train(beta: float) -> tuple[MIDModule, torch.Tensor]:
    torch.manual_seed(0)
    module = _module(beta=beta)
    x, y = _data(120)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=8, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, TensorBatchLoader(x, y, 20, seed=0))
    with torch.no_grad():
        mu, sigma = module.model.head.stats(module.model.forward_features(x))
        kl = (-0.5 * (1 + 2 * sigma.log() - mu**2 - sigma**2).sum(1)).mean()
    return module, kl


def test_the_kl_weight_matters():
    plain, kl_plain = _train(0.0)
    squeezed, kl_squeezed = _train(0.1)
    # Same init, data and batch order: beta alone changes the training, and it shrinks the code's information.
    assert not torch.allclose(plain.model.head.encoder.weight, squeezed.model.head.encoder.weight)
    assert kl_squeezed < 0.5 * kl_plain


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -0.1}, "beta=-0.1"),
        ({"bottleneck_dim": 0}, "bottleneck_dim=0"),
        ({"predict_samples": 0}, "predict_samples=0"),
        ({"predict_samples": 2.5, "predictor": "sample"}, "predict_samples=2.5"),
        ({"predict_samples": 5}, "predict_samples=5 with predictor=mu"),
        ({"predictor": "median"}, "predictor='median'.*'mu', 'sample'"),
    ],
)
def test_bad_values_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _module(**kwargs)


def test_mid_end_to_end(compose_cfg, tmp_path):
    from conftest import TINY

    from mia_bench.pipeline import run

    cfg = compose_cfg([*TINY, "defense=mid", "attack=loss"])
    assert cfg.train.module.beta == 0.01
    records = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved[0]["defense"] == records[0]["defense"] == "mid"
    assert 0.0 <= saved[0]["test_acc_mean"] <= 1.0 and "auc_mean" in saved[0]


def test_the_cifar10_experiment_composes_the_authors_setting(compose_cfg):
    """update_leaks/train_vib.py, models.py SimpleCNN_VIB and utils.py load_data of their repository."""
    cfg = compose_cfg(["experiment=mid_cifar10"])
    assert cfg.dataset.name == "cifar10" and cfg.model.name == "mid_cnn" and cfg.defense.name == "mid"
    module = cfg.train.module
    assert module._target_.endswith("MIDModule") and module.beta == 0.01 and module.predictor == "mu"
    assert cfg.train.epochs == 200 and cfg.train.batch_size == 128 and module.scheduler is None
    opt = module.optimizer
    assert opt._target_ == "torch.optim.SGD" and (opt.lr, opt.momentum, opt.weight_decay) == (5e-3, 0.9, 0.0)
    assert not opt.nesterov
    assert cfg.dataset.train_augment.crop_padding == 0 and not cfg.dataset.train_augment.hflip
    # 20,000 of the 45,000 records outside the public split: 10,000 per model, the size of their target set
    assert round(cfg.dataset.population_size * (50_000 - cfg.dataset.public_size)) == 20_000
    for line in (CONF / "experiment" / "mid_cifar10.yaml").read_text().splitlines():
        assert len(line) <= 120, line


def test_the_authors_cifar10_model_gets_their_bottleneck():
    """SimpleCNN_VIB: st_layer Linear(2048, 2048) (k = 1024), classifier Linear(1024, 10); 4,282,250 weights."""
    model = create_model("mid_cnn", (3, 32, 32), 10)
    module = MIDModule(model, optimizer=partial(torch.optim.SGD, lr=5e-3))
    head = module.model.head
    assert (head.encoder.in_features, head.encoder.out_features) == (2048, 2048)
    assert (head.classifier.in_features, head.classifier.out_features) == (1024, 10)
    assert sum(p.numel() for p in module.parameters()) == 4_282_250
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss, logits, _ = module.mid_loss(x, y)
    assert logits.shape == (4, 10) and torch.isfinite(loss)

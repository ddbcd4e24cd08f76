"""The ensemble path: models trained together equal the same models trained one at a time (weights and logits,
float32 on the CPU), the engine is chosen with a reason, and the cache cannot tell the two paths apart."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from mia_bench.cache.keys import describe_recipe
from mia_bench.cache.models import open_cache
from mia_bench.data.splits import make_masks
from mia_bench.pipeline import load_data
from mia_bench.training.train import Recipe, choose_engine, train_models

#: Weights and logits must agree this closely (relative to each tensor's largest value): batched matrix products
#: sum in another order than one model's (float32 rounding, ~1e-7), which a few epochs of training amplify.
TOLERANCE = 1e-4
SMALL = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
CIFAR_SHAPED = ["dataset=synthetic", "dataset.loader.num_records=300", "dataset.loader.input_shape=[3,16,16]",
                "dataset.train_augment.crop_padding=2", "dataset.train_augment.hflip=true", "model=cnn",
                "model.channels=[8,16]", "train=cifar", "train.batch_size=32"]


def _both_ways(cfg, k: int):
    recipe = Recipe.from_config(cfg)
    _, splits = load_data(cfg.dataset, cfg.seed)
    masks = make_masks(len(splits.population), k, "paired", 0)
    recipe.train.engine = "sequential"
    alone = train_models(recipe, splits, masks)
    recipe.train.engine = "ensemble"
    together = train_models(recipe, splits, masks)
    return alone, together, splits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("overrides", [
    pytest.param(["train.epochs=3"], id="mlp-adam"),
    pytest.param(["train.epochs=2", *CIFAR_SHAPED], id="cnn-batchnorm-crop-flip-sgd-cosine"),
    pytest.param(["train.epochs=3", "defense=mixup"], id="mixup"),
    pytest.param(["train.epochs=3", "defense=label_smoothing"], id="label_smoothing"),
    pytest.param(["train.epochs=3", "defense=adamixup"], id="adamixup-closed-loop-callback"),
    pytest.param(["train.epochs=2", *[o for o in CIFAR_SHAPED if not o.startswith(("model", "train"))],
                  "model=fastnet", "model.width=8", "train=fast", "train.batch_size=32"],
                 id="fastnet-whitening-onecycle-per-step"),
])
def test_models_trained_together_equal_the_models_trained_one_at_a_time(compose_cfg, overrides):
    cfg = compose_cfg([*SMALL, *overrides])
    alone, together, splits = _both_ways(cfg, 4)
    x = splits.test.x[:128]
    for a, b in zip(alone, together, strict=True):
        assert type(a.module) is type(b.module) and a.index == b.index
        sa, sb = a.module.state_dict(), b.module.state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            if sa[name].is_floating_point():
                assert _rel(sb[name], sa[name]) < TOLERANCE, (a.index, name, _rel(sb[name], sa[name]))
            else:  # BatchNorm's step counter
                assert torch.equal(sa[name], sb[name]), name
        assert _rel(b.module.predict_logits(x), a.module.predict_logits(x)) < TOLERANCE
        assert b.module.training == a.module.training
        assert b.module.defense_info.keys() == a.module.defense_info.keys()  # e.g. AdaMixup's ratios, per model
        for key, value in a.module.defense_info.items():
            assert b.module.defense_info[key] == pytest.approx(value, rel=TOLERANCE, abs=1e-6), key


@pytest.mark.parametrize("overrides", [
    pytest.param([], id="adam"),
    pytest.param(["train.module.optimizer._target_=torch.optim.AdamW", "+train.module.optimizer.amsgrad=true"],
                 id="adamw-amsgrad"),
    pytest.param(["train.module.optimizer._target_=torch.optim.SGD", "train.module.optimizer.lr=0.05",
                  "+train.module.optimizer.momentum=0.9", "+train.module.optimizer.nesterov=true",
                  "train.module.optimizer.weight_decay=5e-4"], id="sgd-nesterov-wd"),
])
def test_the_stack_steps_with_foreach_and_trains_bit_for_bit_the_same_models(compose_cfg, monkeypatch, overrides):
    """The faster foreach step on the stack is not an approximation: the weights are identical to the last bit."""
    from mia_bench.training import ensemble

    cfg = compose_cfg([*SMALL, "train.epochs=2", *overrides])
    recipe = Recipe.from_config(cfg)
    recipe.train.engine = "ensemble"
    _, splits = load_data(cfg.dataset, cfg.seed)
    masks = make_masks(len(splits.population), 2, "paired", 0)
    built = []
    monkeypatch.setattr(ensemble, "stacked_optimizer", lambda f, p: built.append(f(p, foreach=True)) or built[-1])
    foreach = train_models(recipe, splits, masks)
    monkeypatch.setattr(ensemble, "stacked_optimizer", lambda f, p: built.append(f(p, foreach=False)) or built[-1])
    single = train_models(recipe, splits, masks)
    assert [o.defaults["foreach"] for o in built] == [True, False]
    for a, b in zip(single, foreach, strict=True):
        for name, value in a.module.state_dict().items():
            assert torch.equal(b.module.state_dict()[name], value), (a.index, name)


def test_the_stacked_optimizer_is_foreach_only_where_the_recipe_left_the_choice_open():
    from functools import partial

    from mia_bench.training.ensemble import stacked_optimizer

    params = [torch.nn.Parameter(torch.zeros(3, 4))]
    assert stacked_optimizer(partial(torch.optim.Adam, lr=0.1), params).defaults["foreach"] is True
    assert stacked_optimizer(partial(torch.optim.SGD, lr=0.1, foreach=False), params).defaults["foreach"] is False
    assert stacked_optimizer(partial(torch.optim.RMSprop, lr=0.1), params).defaults["foreach"] is None  # unchecked
    assert stacked_optimizer(lambda p: torch.optim.Adam(p), params).defaults["foreach"] is None  # not a partial


def test_the_models_differ_from_each_other_and_from_their_initial_weights(compose_cfg):
    """Guards the test above: equal results must not come from models that never trained or share weights."""
    cfg = compose_cfg([*SMALL, "train.epochs=2"])
    _, together, _ = _both_ways(cfg, 2)
    w0, w1 = (m.module.model.head.weight for m in together)
    assert _rel(w0, w1) > 0.05
    pl.seed_everything(0, workers=False, verbose=False)


@pytest.mark.parametrize("overrides, reason", [
    (["defense=sam"], "two passes"),
    (["defense=dpsgd"], "per-sample gradients"),
    (["defense=advreg"], "min-max"),
    (["defense=mid"], "noise inside the model"),
    (["defense=dropout"], "dropout"),
    (["defense=mia_pruning"], "ADMMPruning"),
    (["defense=early_stopping"], "BestModelEarlyStopping"),
    (["train.validate=true"], "validation"),
    (["+trainer.gradient_clip_val=1.0"], "gradient clipping"),
])
def test_the_engine_says_why_a_recipe_trains_one_at_a_time(compose_cfg, caplog, overrides, reason):
    cfg = compose_cfg([*SMALL, *overrides])
    recipe = Recipe.from_config(cfg)
    _, splits = load_data(cfg.dataset, cfg.seed)
    with caplog.at_level(logging.INFO, logger="mia_bench.training.train"):
        assert choose_engine(recipe, splits, None, 4) == "sequential"
    assert reason in caplog.text, caplog.text
    recipe.train.engine = "ensemble"
    with pytest.raises(ValueError, match=f"train.engine=ensemble.*{reason}"):
        choose_engine(recipe, splits, None, 4)


def test_auto_picks_the_ensemble_where_callbacks_declare_they_act_on_their_own_model(compose_cfg):
    from mia_bench.dynamics.recorder import DynamicsRecorder

    cfg = compose_cfg(SMALL)
    recipe = Recipe.from_config(cfg)
    _, splits = load_data(cfg.dataset, cfg.seed)
    recorder = DynamicsRecorder(splits.test.x, splits.test.y, [1, 2])
    assert choose_engine(recipe, splits, None, 16) == "ensemble"
    assert choose_engine(recipe, splits, lambda k: [recorder], 16) == "ensemble"  # +analysis=dynamics' recorder
    assert choose_engine(recipe, splits, lambda k: [pl.Callback()], 16) == "sequential"  # one that does not say so
    assert choose_engine(recipe, splits, None, 1) == "sequential"
    recipe.train.engine = "fastest"
    with pytest.raises(ValueError, match="train.engine='fastest'.*auto"):
        choose_engine(recipe, splits, None, 4)


def test_the_cache_cannot_tell_the_paths_apart_and_a_killed_group_is_retrained_alone(compose_cfg, monkeypatch):
    cfg = compose_cfg([*SMALL, "train.epochs=1", "train.ensemble_size=2"])
    recipe = Recipe.from_config(cfg)
    _, splits = load_data(cfg.dataset, cfg.seed)
    masks = make_masks(len(splits.population), 6, "paired", 0)
    cache = open_cache(cfg.cache, describe_recipe(cfg), population=splits.population)
    fits = []
    original = pl.Trainer.fit

    def fit(self, module, *args, **kwargs):
        fits.append(len(getattr(module, "members", [module])))
        if len(fits) == 2:
            raise KeyboardInterrupt("killed during the second group")
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        train_models(recipe, splits, masks[:4], cache=cache)
    assert fits == [2, 2]  # the first group of two was stored before the kill
    again = train_models(recipe, splits, masks[:4], cache=cache)
    assert fits == [2, 2, 2] and [m.from_cache for m in again] == [True, True, False, False]
    recipe.train.engine = "sequential"  # models trained together serve a run that trains one at a time
    more = train_models(recipe, splits, masks, cache=cache)
    assert fits == [2, 2, 2, 1, 1] and [m.from_cache for m in more] == [True] * 4 + [False] * 2
    assert np.allclose(more[0].module.clean_logits(splits.test.x).numpy(),
                       again[0].module.clean_logits(splits.test.x).numpy())


def test_the_dynamics_recorder_records_the_same_snapshots_in_both_paths(compose_cfg):
    """+analysis=dynamics in the ensemble path: each member's recorder sees its own model at each epoch."""
    from mia_bench.analyses import RunInfo, build_analyses
    from mia_bench.augment import query_offsets

    cfg = compose_cfg([*SMALL, "train.epochs=4", "+analysis=dynamics", "analysis.dynamics.every=2",
                       "analysis.dynamics.initial=true", "analysis.dynamics.dtype=float32"])
    recipe = Recipe.from_config(cfg)
    _, splits = load_data(cfg.dataset, cfg.seed)
    masks = make_masks(len(splits.population), 4, "paired", 0)
    [analysis] = build_analyses(cfg.analysis).values()
    analysis.setup(RunInfo(4, 4, cfg.seed, cfg.model, False, splits.population, query_offsets()))
    out = {}
    for engine in ("sequential", "ensemble"):
        recipe.train.engine = engine
        out[engine] = train_models(recipe, splits, masks, callbacks_for=analysis.callbacks)
    for a, b in zip(out["sequential"], out["ensemble"], strict=True):
        assert a.module.artifacts.keys() == b.module.artifacts.keys()
        np.testing.assert_array_equal(a.module.artifacts["dynamics/epochs"], [0, 2, 4])
        np.testing.assert_array_equal(b.module.artifacts["dynamics/epochs"], [0, 2, 4])
        for key in ("dynamics/logits", "dynamics/grad_norm"):
            sa, sb = torch.from_numpy(a.module.artifacts[key]), torch.from_numpy(b.module.artifacts[key])
            assert _rel(sb, sa) < TOLERANCE, key


def test_the_group_size_follows_memory_on_a_gpu_and_takes_every_model_on_a_cpu(compose_cfg):
    from mia_bench.training.train import memory_group_size, models_that_fit

    assert models_that_fit(10e9, 1e9, 64) == 10 and models_that_fit(10e9, 1e9, 4) == 4
    assert models_that_fit(1e8, 1e9, 64) == 1  # one model at a time when even one barely fits
    cfg = compose_cfg(SMALL)
    _, splits = load_data(cfg.dataset, cfg.seed)
    assert memory_group_size(Recipe.from_config(cfg), splits, 16) == 16


def test_cuda_probe_stays_cheap_without_a_gpu(monkeypatch):
    """Lightning's NVML-based CUDA probe (retried by Adam at every step) is switched off only where no GPU is
    available; with a GPU, Lightning's fork-safe setting stays."""
    import os

    from mia_bench.training.cuda_probe import NVML_CHECK, keep_cuda_probe_cheap

    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not keep_cuda_probe_cheap() and os.environ[NVML_CHECK] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert keep_cuda_probe_cheap() and os.environ[NVML_CHECK] == "0"
    assert not keep_cuda_probe_cheap()  # once is enough


def test_training_leaves_lightnings_log_level_as_it_found_it(compose_cfg):
    """The banner is shown for the first fit only, and the logger's level is restored after training (also when
    training fails), so a Python caller's logging is untouched."""
    from mia_bench.training.train import lightning_banner_once

    lg = logging.getLogger("lightning.pytorch")
    lg.setLevel(logging.INFO)
    try:
        with pytest.raises(RuntimeError), lightning_banner_once() as fitted:
            fitted()
            assert lg.level == logging.WARNING
            raise RuntimeError("a training failure")
        assert lg.level == logging.INFO
        cfg = compose_cfg(["num_models=2", "train.epochs=1", "train.engine=sequential", "cache.enabled=false"])
        _, splits = load_data(cfg.dataset, cfg.seed)
        train_models(Recipe.from_config(cfg), splits, make_masks(len(splits.population), 2, "paired", 0))
        assert lg.level == logging.INFO
    finally:
        lg.setLevel(logging.NOTSET)


def test_channels_last_is_chosen_for_convolutions_and_computes_what_nchw_does():
    """``channels_last: auto`` gives NHWC to models with convolutions only; a cnn's logits and gradients in NHWC
    equal the NCHW ones up to float rounding (stated tolerance: 1e-5 absolute on logits, 1e-4 relative on gradients)."""
    from hydra.utils import instantiate

    from mia_bench.models import create_model
    from mia_bench.training.module import ClassifierModule, resolve_channels_last

    assert resolve_channels_last("auto", create_model("cnn", (3, 16, 16), 10))
    assert not resolve_channels_last("auto", create_model("mlp", (1, 8, 8), 10))
    with pytest.raises(ValueError, match="channels_last='yes'"):
        resolve_channels_last("yes", create_model("mlp", (1, 8, 8), 10))
    optimizer = instantiate({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    grads, logits = [], []
    for layout in (False, "auto"):
        torch.manual_seed(0)
        module = ClassifierModule(create_model("cnn", (3, 16, 16), 10), optimizer, channels_last=layout)
        assert module.channels_last is bool(layout)
        x, y = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10
        out = module(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        logits.append(out.detach())
        grads.append([p.grad.clone() for p in module.parameters()])
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)

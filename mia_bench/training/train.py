"""One function trains the K models of a cell, all with the same recipe (the attacker knows the algorithm)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig
from torch import nn

from mia_bench import progress
from mia_bench.cache.models import ModelCache
from mia_bench.data.base import ArrayData
from mia_bench.data.splits import Splits, model_seed
from mia_bench.loggers import flat_hparams, logger_kind, model_logger
from mia_bench.models.adapter import build_model
from mia_bench.training.cuda_probe import keep_cuda_probe_cheap
from mia_bench.training.ensemble import EnsembleLoader, EnsembleModule, RandomState, ensemble_obstacle
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule

log = logging.getLogger(__name__)

#: ``callbacks_for(k)``: callbacks the pipeline adds to model k's training (e.g. an analysis' recorder).
CallbackFactory = Callable[[int], list[pl.Callback]]
#: ``train.engine``: auto (the ensemble path where it is exact), ensemble (required), sequential (one at a time).
ENGINES = ("auto", "ensemble", "sequential")


@dataclass
class Recipe:
    """How every model of a cell is built and trained: the config nodes that say so, and nothing else."""

    model: DictConfig  # the architecture (conf/model)
    train: DictConfig  # epochs, batch size, validation, and the LightningModule with the defense's subclass
    trainer: DictConfig  # lightning.pytorch.Trainer settings
    augment: Any = field(default_factory=dict)  # batched training augmentation (dataset.train_augment)
    callbacks: Any = field(default_factory=dict)  # extra callbacks by name (defenses add theirs)
    logger: DictConfig | None = None  # one logger per model, or None
    predict: DictConfig | None = None  # the inference-time defense (defense.predict), or None
    seed: int = 0  # the run seed; model k trains with model_seed(seed, k)
    hparams: dict = field(default_factory=dict)  # what each model's logger records as its hyper-parameters

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Recipe:
        return cls(
            model=cfg.model,
            train=cfg.train,
            trainer=cfg.trainer,
            augment=cfg.dataset.get("train_augment") or {},
            callbacks=cfg.get("callbacks") or {},
            logger=cfg.get("logger"),
            predict=(cfg.get("defense") or {}).get("predict"),
            seed=int(cfg.seed),
            hparams=flat_hparams({"model": cfg.model, "train": cfg.train, "dataset": cfg.dataset,
                                  "defense": cfg.get("defense") or {}, "seed": int(cfg.seed),
                                  "num_models": int(cfg.num_models)}),
        )


@dataclass
class TrainedModel:
    index: int
    module: ClassifierModule
    seconds: float  # training time (for a cached model: the time it took when it was trained)
    from_cache: bool = False  # loaded from the cache instead of trained in this run
    key: str | None = None  # its cache key (None when the cache is off)


def build_module(recipe: Recipe, splits: Splits) -> ClassifierModule:
    model = build_model(recipe.model, splits.input_shape, splits.num_classes)
    return instantiate(
        recipe.train.module,
        model=model,
        crop_padding=int(recipe.augment.get("crop_padding", 0)),
        hflip=bool(recipe.augment.get("hflip", False)),
    )


def member_callbacks(recipe: Recipe, k: int, callbacks_for: CallbackFactory | None = None) -> list[pl.Callback]:
    """Model k's own callbacks: the config's (a defense's), then the pipeline's (an analysis' recorder)."""
    own = [instantiate(c) for c in recipe.callbacks.values() if c is not None]
    return own + (list(callbacks_for(k)) if callbacks_for else [])


def build_trainer(recipe: Recipe, k: int, extra: Sequence[pl.Callback] = ()) -> pl.Trainer:
    callbacks = member_callbacks(recipe, k) + list(extra)
    return instantiate(recipe.trainer, logger=model_logger(recipe.logger, k, recipe.hparams), callbacks=callbacks)


def build_predictor(recipe: Recipe, public: ArrayData | None, seed: int):
    """The inference-time defense (``defense.predict``, a partial called with the public pool and a seed), or
    None. Its pool is the public split: never scored by the attacker, disjoint from the test split."""
    if recipe.predict is None:
        return None
    return instantiate(recipe.predict)(pool=public, seed=seed)


def train_models(
    recipe: Recipe,
    splits: Splits,
    masks: np.ndarray,
    indices: Sequence[int] | None = None,
    callbacks_for: CallbackFactory | None = None,
    cache: ModelCache | None = None,
) -> list[TrainedModel]:
    """Model k trained on ``splits.population[masks[k]]`` for every k in ``indices`` (default: all).

    What is cached is loaded; the rest trains in groups in the ensemble path where that is exact, one at a time
    otherwise (``train.engine``; :func:`choose_engine` logs which and why). Each trained model (each group, in the
    ensemble path) is stored as soon as it is done, so an interrupted run resumes there and a larger K trains only
    the new models.
    """
    keep_cuda_probe_cheap()  # after Lightning's import set it (see cuda_probe)
    indices = list(range(masks.shape[0]) if indices is None else indices)
    build_predictor(recipe, splits.public, model_seed(recipe.seed, 0))  # fail fast on a bad defense.predict
    keys = {k: cache.model_key(k, model_seed(recipe.seed, k), masks[k]) for k in indices} if cache else {}
    done = {k: m for k in keys if (m := load_stored(recipe, splits, cache, keys[k], k)) is not None}
    plan = Plan(recipe, splits, masks, keys, callbacks_for, cache, indices)
    with lightning_banner_once() as fitted:
        missing = [k for k in indices if k not in done]
        if missing and choose_engine(recipe, splits, callbacks_for, len(missing)) == "ensemble":
            done |= train_together(plan, missing, fitted)
        done |= train_one_at_a_time(plan, [k for k in indices if k not in done], fitted)
    if cache is not None:
        fits = sum(not m.from_cache for m in done.values())
        log.info("models: %d from the cache, %d trained (cache %s)", len(done) - fits, fits, cache.store.root)
        replay_curves(recipe, [done[k] for k in indices if done[k].from_cache])
    return [done[k] for k in indices]


@dataclass
class Plan:
    """What both training paths need to know about the models to train (see :func:`train_models`)."""

    recipe: Recipe
    splits: Splits
    masks: np.ndarray
    keys: dict[int, str]  # model index -> cache key (empty when the cache is off)
    callbacks_for: CallbackFactory | None
    cache: ModelCache | None
    indices: list[int]  # every model asked for, in order (for the log lines' "model i of n")

    def finished(self, m: TrainedModel) -> TrainedModel:
        """A model just trained: counted, and stored at once (a run killed later resumes after it)."""
        progress.advance("models")
        if self.cache is not None:
            store_model(self.cache, m, model_seed(self.recipe.seed, m.index))
        return m


@contextmanager
def lightning_banner_once() -> Iterator[Callable[[], None]]:
    """Lightning prints its banner ("GPU available ...") at every fit: the block's first fit keeps it, later ones
    are quiet (call the yielded function after each fit). The logger's level is restored on leaving the block."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    try:
        yield lambda: lightning_log.setLevel(max(level, logging.WARNING))
    finally:
        lightning_log.setLevel(level)


def train_together(plan: Plan, ks: list[int], fitted: Callable[[], None]) -> dict[int, TrainedModel]:
    """Models ``ks`` in groups of the ensemble path; a model another job is building is left to the one-at-a-time
    pass (which waits for it)."""
    recipe, cache, done = plan.recipe, plan.cache, {}
    size = recipe.train.get("ensemble_size") or memory_group_size(recipe, plan.splits, len(ks))
    for group in ensemble_groups(ks, plan.masks, size):
        with cache.claim({k: plan.keys[k] for k in group}) if cache else nullcontext(set(group)) as claimed:
            for m in fit_group(recipe, plan.splits, plan.masks, [k for k in group if k in claimed], plan.keys,
                               plan.callbacks_for):
                done[m.index] = plan.finished(m)
        fitted()
    return done


def train_one_at_a_time(plan: Plan, ks: list[int], fitted: Callable[[], None]) -> dict[int, TrainedModel]:
    """Models ``ks`` one after another, each under its cache lock: loaded if another job stored it meanwhile."""
    recipe, cache = plan.recipe, plan.cache

    def obtain(k: int) -> TrainedModel:
        key = plan.keys.get(k)
        if cache is not None and (loaded := load_stored(recipe, plan.splits, cache, key, k)) is not None:
            return loaded
        log.info("training model %d (%d/%d) on %d records (seed %d)", k, plan.indices.index(k) + 1,
                 len(plan.indices), int(plan.masks[k].sum()), model_seed(recipe.seed, k))
        extra = plan.callbacks_for(k) if plan.callbacks_for else []
        module, seconds = fit_model(recipe, plan.splits, plan.masks[k], k, extra)
        fitted()
        return plan.finished(TrainedModel(k, module, seconds, from_cache=False, key=key))

    if cache is None:
        return {k: obtain(k) for k in ks}
    return cache.obtain_all({k: plan.keys[k] for k in ks}, obtain) if ks else {}


def replay_curves(recipe: Recipe, cached: list[TrainedModel]) -> None:
    """The training curves of models that came from the cache, written into this run's logger as their training
    wrote them (same metrics, same steps), so a rerun's CSV, TensorBoard and W&B show every model's curves; one
    log line says so (and names models stored before curves were kept, which have none)."""
    if not cached or logger_kind(recipe.logger) is None:
        return
    without = [m.index for m in cached if not m.module.history]
    for m in cached:
        if not m.module.history:
            continue
        lg = model_logger(recipe.logger, m.index, recipe.hparams)
        for row in m.module.history:
            values = {k: v for k, v in row.items() if k != "step"}
            lg.log_metrics(values, step=int(row.get("step", 0)))
        lg.save()
        lg.finalize("success")
    log.info("training curves of %d cached model(s) replayed into the %s logger from their original training%s",
             len(cached) - len(without), logger_kind(recipe.logger),
             f"; models {without} were stored without curves" if without else "")


def store_model(cache: ModelCache, m: TrainedModel, seed: int) -> None:
    """Model ``m`` into the cache with what restoring it needs besides its weights."""
    meta = {"seed": seed, "seconds": m.seconds, **m.module.stored_state()}
    cache.save_model(m.key, m.index, m.module.state_dict(), m.module.artifacts, meta)


def choose_engine(recipe: Recipe, splits: Splits, callbacks_for: CallbackFactory | None, count: int) -> str:
    """``ensemble`` or ``sequential`` for ``count`` models of this recipe (``train.engine``: auto | ensemble |
    sequential), with one log line saying which and why. Forcing the ensemble where it is not exact is an error.
    ``callbacks_for``: the callbacks the pipeline adds to each model (an analysis' recorder), or None."""
    engine = str(recipe.train.get("engine", "auto"))
    if engine not in ENGINES:
        raise ValueError(f"train.engine={engine!r}: expected one of {list(ENGINES)}")
    if engine == "sequential":
        log.info("training %d model(s) one at a time (train.engine=sequential)", count)
        return engine
    pl.seed_everything(recipe.seed, workers=False, verbose=False)
    callbacks = [get_class(c._target_) for c in recipe.callbacks.values() if c is not None]
    callbacks += [type(cb) for cb in callbacks_for(0)] if callbacks_for else []
    obstacle = ensemble_obstacle(build_module(recipe, splits), recipe.trainer, callbacks, bool(recipe.train.validate))
    if obstacle and engine == "ensemble":
        raise ValueError(f"train.engine=ensemble: {obstacle}; use train.engine=auto or sequential")
    if obstacle or count < 2:
        log.info("training %d model(s) one at a time: %s", count, obstacle or "a single model")
        return "sequential"
    size = recipe.train.get("ensemble_size") or "as many as fit in memory"
    log.info("training %d models in the ensemble path, %s at once (train.engine=%s)", count, size, engine)
    return "ensemble"


def memory_group_size(recipe: Recipe, splits: Splits, count: int, headroom: float = 0.8) -> int:
    """How many models train together when ``train.ensemble_size`` is null: all on a CPU; on a GPU, as many as
    ``headroom`` of its free memory holds, at one model's footprint measured on a probe (one batch forward and
    backward in float32, plus gradients and two optimizer states per parameter: an upper bound in bf16)."""
    device = resolve_device(recipe.trainer)
    if device.type != "cuda":
        return count
    pl.seed_everything(recipe.seed, workers=False, verbose=False)
    probe = build_module(recipe, splits).to(device)
    batch = int(recipe.train.batch_size)
    x, y = splits.population.x[:batch].to(device), splits.population.y[:batch].to(device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.nn.functional.cross_entropy(probe.model(x), y).backward()
    activations = torch.cuda.max_memory_allocated(device) - base
    weights = sum(p.numel() * p.element_size() for p in probe.parameters())
    del probe, x, y
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    size = models_that_fit(free * headroom, activations + 3 * weights, count)
    log.info("ensemble: %d of %d models at once (%.2f GiB free, %.3f GiB per model)", size, count, free / 2**30,
             (activations + 3 * weights) / 2**30)
    return size


def models_that_fit(budget: float, per_model: float, count: int) -> int:
    """``count`` models, or fewer (at least 1) when ``budget`` bytes hold fewer at ``per_model`` bytes each."""
    return max(1, min(count, int(budget // max(per_model, 1))))


def ensemble_groups(ks: Sequence[int], masks: np.ndarray, size: int | None) -> list[list[int]]:
    """The models to train together: as many records each (their batches line up), at most ``size`` per group."""
    by_count: dict[int, list[int]] = {}
    for k in ks:
        by_count.setdefault(int(masks[k].sum()), []).append(k)
    size = int(size) if size else len(ks)
    if size < 1:
        raise ValueError(f"train.ensemble_size={size}: expected a positive number of models, or null for all")
    return [group[i : i + size] for group in by_count.values() for i in range(0, len(group), size)]


def new_member(recipe: Recipe, splits: Splits, k: int) -> ClassifierModule:
    """Model k's module, seeded: both training paths and the cache build it so (the same initial weights)."""
    pl.seed_everything(model_seed(recipe.seed, k), workers=False, verbose=False)
    module = build_module(recipe, splits)
    module.index = k
    return module


def feed_member(module: ClassifierModule, recipe: Recipe, splits: Splits, mask: np.ndarray, k: int,
                device: torch.device):
    """Model k's training batches on ``device``, and its own records and the public split on the module (for the
    defenses that read them and for a data-dependent initialisation, which runs here)."""
    member = torch.from_numpy(np.flatnonzero(mask))
    x, y = splits.population.x[member].to(device), splits.population.y[member].to(device)
    loader = module.make_train_loader(x, y, int(recipe.train.batch_size), bool(recipe.train.drop_last),
                                      model_seed(recipe.seed, k))
    module.attach_data(splits.population.subset(member), splits.public)
    module.init_from_data()
    return loader


def finish_member(module: ClassifierModule, recipe: Recipe, splits: Splits, k: int, device: torch.device) -> None:
    """A trained or restored model as the queries use it: on ``device``, behind its inference-time defense, without
    its training records or trainer."""
    module.to(device)
    module.release_training(splits.public, build_predictor(recipe, splits.public, model_seed(recipe.seed, k)))


def fit_group(
    recipe: Recipe, splits: Splits, masks: np.ndarray, ks: Sequence[int], keys: dict[int, str],
    callbacks_for: CallbackFactory | None = None,
) -> list[TrainedModel]:
    """Train models ``ks`` together in the ensemble path (see :mod:`mia_bench.training.ensemble`)."""
    if not ks:
        return []
    device = resolve_device(recipe.trainer)
    members, states, loaders = [], [], []
    for k in ks:
        members.append(new_member(recipe, splits, k))
        states.append(RandomState(device))  # the member's random stream from here on, as if it trained alone
        loaders.append(feed_member(members[-1], recipe, splits, masks[k], k, device))
    log.info("training models %s together on %d records each", list(ks), int(masks[ks[0]].sum()))
    # vmap on a GPU (one kernel launch for G models); on a CPU only for models without convolutions (see forward).
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in members[0].model.modules())
    ensemble = EnsembleModule(members, states, [model_logger(recipe.logger, k, recipe.hparams) for k in ks],
                              vectorize=device.type == "cuda" or not convolutional,
                              callbacks=[member_callbacks(recipe, k, callbacks_for) for k in ks])
    trainer = instantiate(recipe.trainer, logger=False, callbacks=[])
    t0 = time.perf_counter()
    trainer.fit(ensemble, train_dataloaders=EnsembleLoader(loaders))
    seconds = (time.perf_counter() - t0) / len(ks)
    out = []
    for k, module in zip(ks, ensemble.unstack(), strict=True):
        finish_member(module, recipe, splits, k, device)
        out.append(TrainedModel(k, module, seconds, from_cache=False, key=keys.get(k)))
    return out


def fit_model(
    recipe: Recipe, splits: Splits, mask: np.ndarray, k: int, callbacks: Sequence[pl.Callback] = ()
) -> tuple[ClassifierModule, float]:
    """Train model k on ``splits.population[mask]``; returns the module and its training seconds."""
    module = new_member(recipe, splits, k)
    trainer = build_trainer(recipe, k, callbacks)
    device = trainer.strategy.root_device
    loader = feed_member(module, recipe, splits, mask, k, device)
    val = validation_loader(recipe.train, splits, device)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val)
    seconds = time.perf_counter() - t0
    finish_member(module, recipe, splits, k, device)
    return module, seconds


def load_stored(recipe: Recipe, splits: Splits, cache: ModelCache | None, key: str | None,
                k: int) -> TrainedModel | None:
    """Model k from the cache, built as training builds it (same defense subclass, same BatchNorm->GroupNorm fix for
    DP-SGD, same MID head) and restored as its training left it; None on a miss or without a cache (a stored entry
    whose structure no longer fits is removed)."""
    hit = cache.load_model(key) if cache is not None else None
    if hit is None:
        return None
    state, artifacts, meta = hit
    module = new_member(recipe, splits, k)
    try:
        module.restore(state, artifacts, meta)
    except RuntimeError as err:  # the module's structure changed under the same key (code edited, same version)
        cache.invalidate_model(key, f"incompatible with the model built now ({err})")
        return None
    finish_member(module, recipe, splits, k, resolve_device(recipe.trainer))
    progress.advance("models")
    return TrainedModel(k, module, float(meta.get("seconds", 0.0)), from_cache=True, key=key)


def resolve_device(trainer: DictConfig) -> torch.device:
    """The device the Trainer would train on (``accelerator``/``devices``), without building one."""
    acc = str(trainer.get("accelerator", "auto")).lower()
    devices = trainer.get("devices", 1)
    index = int(devices[0]) if isinstance(devices, (list, tuple, ListConfig)) and len(devices) else 0
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", index)
    if acc == "mps" or (acc == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def shard_indices(shard: DictConfig | dict | None, num_models: int, cache_enabled: bool) -> list[int] | None:
    """The models this job trains under ``shard.count`` > 1 (k with ``k % count == index``), else None (all).

    Round-robin rather than blocks so that every shard gets both halves of the complementary mask pairs and
    shards stay balanced when K grows."""
    shard = shard or {}
    count, index = shard.get("count", 1), shard.get("index", 0)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"shard.count={count!r}: expected a positive int (1 = no sharding)")
    if count == 1:
        return None
    if not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"shard.index={index!r}: expected an int in 0..{count - 1} (shard.count={count})")
    if not cache_enabled:
        raise ValueError(
            f"shard.count={count}: a shard job stores its models in the cache for the attack stage to load; "
            "set cache.enabled=true"
        )
    return [k for k in range(int(num_models)) if k % count == index]


def validation_loader(train: DictConfig, splits: Splits, device: torch.device) -> TensorBatchLoader | None:
    """Per-epoch validation data (for logging and early stopping), or None when ``train.validate`` is off.

    ``train.val_split: public`` (default) validates on the public split, so that choices made during training
    (early stopping) never see the test split that utility is reported on.
    """
    if not train.validate:
        return None
    which = train.get("val_split", "public")
    if which not in ("public", "test"):
        raise ValueError(f"train.val_split={which!r}: expected 'public' or 'test'")
    data = splits.public if which == "public" else splits.test
    if data is None or len(data) == 0:
        raise ValueError(
            "train.val_split=public but the public split is empty: set dataset.public_size to a positive "
            "count or fraction (e.g. dataset.public_size=200)"
        )
    return TensorBatchLoader(data.x.to(device), data.y.to(device), train.eval_batch_size, shuffle=False)

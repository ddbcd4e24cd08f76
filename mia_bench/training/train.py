"""One function trains the K models of a cell, all with the same recipe (the attacker knows the algorithm)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mia_bench.analysis import recording_key
from mia_bench.data.splits import Splits
from mia_bench.training.cache import RunCache
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    index: int
    module: ClassifierModule
    seconds: float  # training time (for a cached model: the time it took when it was trained)
    from_cache: bool = False  # loaded from the cache instead of trained in this run
    key: str | None = None  # its cache key (None when the cache is off)


def model_seed(base_seed: int, k: int) -> int:
    """Seed of model k: depends only on the run seed and k, so adding models never changes existing ones."""
    return int(base_seed) * 100_003 + int(k)


def build_module(cfg: DictConfig, splits: Splits) -> ClassifierModule:
    model = instantiate(cfg.model, input_shape=list(splits.input_shape), num_classes=splits.num_classes)
    aug = cfg.dataset.get("train_augment") or {}
    return instantiate(
        cfg.train.module,
        model=model,
        crop_padding=int(aug.get("crop_padding", 0)),
        hflip=bool(aug.get("hflip", False)),
    )


def build_logger(cfg: DictConfig, k: int, output_dir: Path):
    """One logger per model: CSV/TensorBoard write a version folder per model; W&B logs every model into the
    cell's single run under a ``model<k>/`` prefix."""
    if cfg.get("logger") is None:
        return False
    target = str(cfg.logger.get("_target_", ""))
    if target.endswith("WandbLogger"):
        return instantiate(cfg.logger, prefix=f"model{k}")
    return instantiate(cfg.logger, version=f"model_{k}")


def build_trainer(cfg: DictConfig, k: int, output_dir: Path, extra: Sequence[pl.Callback] = ()) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += list(extra)
    return instantiate(cfg.trainer, logger=build_logger(cfg, k, output_dir), callbacks=callbacks)


def train_models(
    cfg: DictConfig,
    splits: Splits,
    masks: np.ndarray,
    output_dir: Path,
    indices: Sequence[int] | None = None,
    extra_callbacks: Callable[[int], list[pl.Callback]] | None = None,
    cache: RunCache | None = None,
) -> list[TrainedModel]:
    """Train model k on ``splits.population[masks[k]]`` for every k in ``indices`` (default: all).

    ``extra_callbacks(k)`` gives callbacks built by the pipeline for model k (e.g. the per-epoch signal
    recorder of ``+analysis=dynamics``), added after the config's ``callbacks``.
    With a ``cache`` (see :mod:`mia_bench.training.cache`), a model whose key is stored is loaded instead of
    trained, and each trained model is stored as soon as it is done, so an interrupted run resumes at the
    next model and a larger K trains only the new models.
    """
    indices = list(range(masks.shape[0]) if indices is None else indices)
    build_predictor(cfg, splits, model_seed(cfg.seed, 0))  # fail fast on a bad defense.predict (e.g. empty pool)
    lightning_log = logging.getLogger("lightning.pytorch")
    done: dict[int, TrainedModel] = {}

    def key_of(k: int) -> str | None:
        return cache.model_key(k, model_seed(cfg.seed, k), masks[k]) if cache is not None else None

    def obtain(k: int, key: str | None) -> TrainedModel:
        """Model k from the cache, or trained (and then stored at once: a run killed later resumes after it)."""
        seed = model_seed(cfg.seed, k)
        loaded = load_cached_model(cfg, splits, cache, key, k, seed) if cache is not None else None
        if loaded is not None:
            return loaded
        fitted = sum(not m.from_cache for m in done.values())
        if fitted == 1:  # Lightning's banner ("GPU available ...") once, not K times
            lightning_log.setLevel(logging.WARNING)
        module, seconds = fit_model(cfg, splits, masks, output_dir, k, seed, len(done), len(indices), extra_callbacks)
        if cache is not None:
            meta = {"seed": seed, "seconds": seconds, "defense_info": dict(module.defense_info)}
            cache.save_model(key, k, module.state_dict(), module.artifacts, {**meta, "train_mode": module.training})
        return TrainedModel(k, module, seconds, from_cache=False, key=key)

    # Parallel jobs sharing the cache (a multirun over attacks) split the work: a model another job is building
    # is skipped and taken from the cache at the end (waiting for that job if it is still at it).
    deferred = []
    for k in indices:
        key = key_of(k)
        with cache.lock(key) if cache is not None else nullcontext(True) as mine:
            if mine:
                done[k] = obtain(k, key)
            else:
                deferred.append(k)
    for k in deferred:
        key = key_of(k)
        with cache.lock(key, blocking=True):
            done[k] = obtain(k, key)
    lightning_log.setLevel(logging.NOTSET)
    trained = [done[k] for k in indices]
    if cache is not None:
        fits = sum(not m.from_cache for m in trained)
        log.info("models: %d from the cache, %d trained (cache %s)", len(trained) - fits, fits, cache.store.root)
    return trained


def fit_model(
    cfg: DictConfig,
    splits: Splits,
    masks: np.ndarray,
    output_dir: Path,
    k: int,
    seed: int,
    n: int,
    total: int,
    extra_callbacks: Callable[[int], list[pl.Callback]] | None = None,
) -> tuple[ClassifierModule, float]:
    """Train model k (the ``n``-th of ``total`` this run obtains); returns the module and its training seconds."""
    pl.seed_everything(seed, workers=False, verbose=False)
    module = build_module(cfg, splits)
    trainer = build_trainer(cfg, k, output_dir, extra_callbacks(k) if extra_callbacks else ())
    device = trainer.strategy.root_device
    member = torch.from_numpy(np.flatnonzero(masks[k]))
    x = splits.population.x[member].to(device)
    y = splits.population.y[member].to(device)
    loader = module.make_train_loader(x, y, int(cfg.train.batch_size), bool(cfg.train.drop_last), seed)
    module.attach_data(splits.population.subset(member), splits.public)
    val = validation_loader(cfg, splits, device)
    log.info("training model %d (%d/%d) on %d records (seed %d)", k, n + 1, total, len(member), seed)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val)
    seconds = time.perf_counter() - t0
    module.to(device)
    module.predictor = build_predictor(cfg, splits, seed)
    # Drop what only training needed: the trainer holds the loader and with it this model's copy of its
    # training tensors (about 300 MB per CIFAR-10 model), which K models would otherwise keep alive.
    module._trainer = None
    module.train_data = None
    return module, seconds


def load_cached_model(
    cfg: DictConfig, splits: Splits, cache: RunCache, key: str, k: int, seed: int
) -> TrainedModel | None:
    """Model k from the cache, rebuilt exactly as training builds it (``build_module``: same defense subclass,
    same BatchNorm->GroupNorm fix for DP-SGD, same MID head), then its weights, ``defense_info``, ``artifacts``
    and predictor as after training; None on a miss (a stored entry that no longer fits is removed)."""
    hit = cache.load_model(key)
    if hit is None:
        return None
    state, artifacts, meta = hit
    pl.seed_everything(seed, workers=False, verbose=False)  # module construction draws initial weights
    module = build_module(cfg, splits)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # the module's structure changed under the same key (code edited, same version)
        cache.store.invalidate("models", key, f"incompatible with the model built now ({err})")
        return None
    module.defense_info = {name: float(v) for name, v in (meta.get("defense_info") or {}).items()}
    module.artifacts = dict(artifacts)
    module.train(bool(meta.get("train_mode", False)))
    module.to(resolve_device(cfg))
    module.attach_data(None, splits.public)  # as after training: own records dropped, public split kept
    module.predictor = build_predictor(cfg, splits, seed)
    return TrainedModel(k, module, float(meta.get("seconds", 0.0)), from_cache=True, key=key)


def resolve_device(cfg: DictConfig) -> torch.device:
    """The device the Trainer would train on (``trainer.accelerator``/``devices``), without building one."""
    acc = str(cfg.trainer.get("accelerator", "auto")).lower()
    devices = cfg.trainer.get("devices", 1)
    index = int(devices[0]) if isinstance(devices, (list, tuple, ListConfig)) and len(devices) else 0
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", index)
    if acc == "mps" or (acc == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def shard_indices(cfg: DictConfig) -> list[int] | None:
    """The models this job trains under ``shard.count`` > 1 (k with ``k % count == index``), else None (all).

    Round-robin rather than blocks so that every shard gets both halves of the complementary mask pairs and
    shards stay balanced when K grows."""
    node = cfg.get("shard") or {}
    count, index = node.get("count", 1), node.get("index", 0)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"shard.count={count!r}: expected a positive int (1 = no sharding)")
    if count == 1:
        return None
    if not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"shard.index={index!r}: expected an int in 0..{count - 1} (shard.count={count})")
    if not (cfg.get("cache") or {}).get("enabled", False):
        raise ValueError(
            f"shard.count={count}: a shard job stores its models in the cache for the attack stage to load; "
            "set cache.enabled=true"
        )
    return [k for k in range(int(cfg.num_models)) if k % count == index]


def validation_loader(cfg: DictConfig, splits: Splits, device: torch.device) -> TensorBatchLoader | None:
    """Per-epoch validation data (for logging and early stopping), or None when ``train.validate`` is off.

    ``train.val_split: public`` (default) validates on the public split, so that choices made during training
    (early stopping) never see the test split that utility is reported on.
    """
    if not cfg.train.validate:
        return None
    which = cfg.train.get("val_split", "public")
    if which not in ("public", "test"):
        raise ValueError(f"train.val_split={which!r}: expected 'public' or 'test'")
    data = splits.public if which == "public" else splits.test
    if data is None or len(data) == 0:
        raise ValueError(
            "train.val_split=public but the public split is empty: set dataset.public_size to a positive "
            "count or fraction (e.g. dataset.public_size=200)"
        )
    return TensorBatchLoader(data.x.to(device), data.y.to(device), cfg.train.eval_batch_size, shuffle=False)


def build_predictor(cfg: DictConfig, splits: Splits, seed: int):
    """The inference-time defense (``defense.predict``, a partial called with the public pool and a seed), or
    None. Its pool is the public split: never scored by the attacker, disjoint from the test split."""
    factory = (cfg.get("defense") or {}).get("predict")
    if factory is None:
        return None
    return instantiate(factory)(pool=splits.public, seed=seed)


#: Trainer settings that do not change the trained weights (display, logging, where it runs): not in cache keys.
#: The device is left out on purpose: shards trained on GPUs serve an attack stage on a CPU node.
TRAINER_KEYS_IGNORED = (
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "default_root_dir",
    "enable_checkpointing",
    "accelerator",
    "devices",
    "num_nodes",
)
#: Dataset-loader settings that locate data rather than define it (the data fingerprint covers the content).
LOADER_KEYS_IGNORED = ("root", "path", "download")


def describe_recipe(cfg: DictConfig) -> dict:
    """The parts of the config that determine a trained model: logged, stored in cache manifests, hashed into
    cache keys (with the data fingerprint, version, and each model's index, seed and mask).

    Left out because they do not change a model: attacks, evaluation, signals, logger, paths, cpu_threads,
    num_models (masks are prefix-stable; each model's mask bytes are in its key), membership (enters through
    the mask bytes), the trainer's display/logging/device settings, the data location, and
    ``dataset.query_augment`` unless an analysis records signals during training."""
    keys = ("dataset", "model", "train", "trainer", "defense", "callbacks", "seed")
    out = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
        for k in keys
        if k in cfg
    }
    recorded = recording_key(cfg)  # what analyses record while training (epochs, queries, null_test), not their
    if recorded is not None:  # analysis-only settings (fpr, grid edges, plots): those reuse the cached models
        out["analysis"] = recorded
    if isinstance(out.get("trainer"), dict):
        out["trainer"] = {k: v for k, v in out["trainer"].items() if k not in TRAINER_KEYS_IGNORED}
    dataset = out.get("dataset")
    if isinstance(dataset, dict):
        if isinstance(dataset.get("loader"), dict):
            dataset["loader"] = {k: v for k, v in dataset["loader"].items() if k not in LOADER_KEYS_IGNORED}
        if not out.get("analysis"):
            dataset.pop("query_augment", None)
    return out

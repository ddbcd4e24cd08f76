"""One function trains the K models of a cell, all with the same recipe (the attacker knows the algorithm)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia_bench.data.splits import Splits
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    index: int
    module: ClassifierModule
    seconds: float


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
) -> list[TrainedModel]:
    """Train model k on ``splits.population[masks[k]]`` for every k in ``indices`` (default: all).

    ``extra_callbacks(k)`` gives callbacks built by the pipeline for model k (e.g. the per-epoch signal
    recorder of ``+analysis=dynamics``), added after the config's ``callbacks``.
    """
    indices = range(masks.shape[0]) if indices is None else indices
    trained = []
    lightning_log = logging.getLogger("lightning.pytorch")
    build_predictor(cfg, splits, model_seed(cfg.seed, 0))  # fail fast on a bad defense.predict (e.g. empty pool)
    for n, k in enumerate(indices):
        if n == 1:  # Lightning's banner ("GPU available ...") once, not K times
            lightning_log.setLevel(logging.WARNING)
        seed = model_seed(cfg.seed, k)
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
        log.info("training model %d/%d on %d records (seed %d)", n + 1, len(indices), len(member), seed)
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=val)
        module.to(device)
        module.predictor = build_predictor(cfg, splits, seed)
        # Drop what only training needed: the trainer holds the loader and with it this model's copy of its
        # training tensors (about 300 MB per CIFAR-10 model), which K models would otherwise keep alive.
        module._trainer = None
        module.train_data = None
        trained.append(TrainedModel(k, module, time.perf_counter() - t0))
    lightning_log.setLevel(logging.NOTSET)
    return trained


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


def describe_recipe(cfg: DictConfig) -> dict:
    """The parts of the config that determine a trained model (for logs and, later, cache keys)."""
    keys = ("dataset", "model", "train", "trainer", "defense", "seed", "membership")
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
        for k in keys
        if k in cfg
    }

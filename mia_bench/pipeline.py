"""The one top-level flow of a benchmark cell: data -> train K models -> signals -> attacks -> metrics -> report.

Read this file to know what a run does; every step is a call into one module.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia_bench import __version__
from mia_bench.analysis import run_analyses, training_callbacks
from mia_bench.attacks.evaluate import evaluate, plan_references
from mia_bench.augment import query_offsets
from mia_bench.data.base import ArrayData, RawDataset
from mia_bench.data.splits import Splits, make_masks, make_splits
from mia_bench.io import atomic_write_text
from mia_bench.report.outputs import log_to_wandb, plot_roc, print_table, save_roc_curves
from mia_bench.signals import Signals
from mia_bench.training.cache import RunCache, open_cache
from mia_bench.training.predict import accuracy, collect_logits
from mia_bench.training.train import TrainedModel, shard_indices, train_models

log = logging.getLogger(__name__)


def run(cfg: DictConfig, choices: dict[str, str] | None = None) -> list[dict]:
    """Run one cell and write its outputs to ``cfg.paths.output_dir``; returns the metrics records."""
    t_start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    choices = dict(choices or {})
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    # Fail on a bad attack or target choice now, not after training.
    attacks = {name: instantiate(node) for name, node in (cfg.attack or {}).items()}
    if not attacks:
        raise ValueError("no attack selected: choose e.g. attack=all, attack=lira or attack=[loss,rmia]")
    targets = resolve_targets(cfg.evaluation.targets, cfg.num_models)
    shard = shard_indices(cfg)  # shard.count > 1: this job only trains its share of the K models into the cache

    # 1. Data: population (membership is defined over it), test (utility), public (defenses' own data).
    raw, splits = load_data(cfg)
    # 2. Masks: which records each of the K models trains on. The null test trains on one half of the
    # population and scores the other half, which no model saw, against random fake masks.
    train_pool, audit, train_masks, audit_masks = membership(splits.population, cfg)
    plan_references(audit_masks, attacks, targets)  # an attack that would get no reference models fails now
    splits.population = train_pool
    log.info(
        "%s: %d population records (%d scored), %d test records, %d classes, K=%d models",
        splits.name,
        len(train_pool),
        len(audit),
        len(splits.test),
        splits.num_classes,
        cfg.num_models,
    )

    # 3. Train all K models with the same recipe (analyses may record signals while they train). Models are
    # cached under a hash of everything that determines them: stored ones are loaded, not retrained.
    cache = open_cache(cfg, population=train_pool, audit=audit, test=splits.test, public=splits.public)
    aug = cfg.dataset.get("query_augment") or {}
    queries = (
        query_offsets(int(aug.get("shift", 0)), bool(aug.get("hflip", False)))
        if raw.is_image
        else query_offsets()
    )
    trained = train_models(
        cfg,
        splits,
        train_masks,
        out,
        indices=shard,
        extra_callbacks=training_callbacks(cfg, audit, queries),
        cache=cache,
    )
    t_trained = time.perf_counter()
    if shard is not None:  # a shard job stops here; the attack stage (shard.count=1) loads every model
        return finish_shard(cfg, trained, out, t_start)

    # 4. Signals: every model queried on every scored record under every query augmentation; cached with the
    # models' accuracies, so a run that changes only the attack neither trains nor queries.
    signals, test_acc, train_acc = query_models(cfg, trained, splits, audit, audit_masks, train_masks, queries, cache)
    signals.save(out / "signals.npz")
    np.save(out / "masks.npy", audit_masks)
    utility = utility_metrics(trained, test_acc, train_acc)

    # 5-6. Attacks over the saved signals, metrics over target models.
    result = evaluate(
        signals,
        attacks,
        targets,
        n_bootstrap=cfg.evaluation.n_bootstrap,
        confidence=cfg.evaluation.confidence,
        seed=cfg.seed,
    )

    # 7. Analyses across training (+analysis=dynamics): their own files, summary figures into metrics.json.
    analysis = run_analyses(cfg, trained, signals, audit_masks, out)

    # 8. Outputs.
    context = {
        "dataset": choices.get("dataset", splits.name),
        "model": choices.get("model", str(cfg.model.get("name", ""))),
        "defense": choices.get("defense", str(cfg.defense.get("name", ""))),
        "num_models": int(cfg.num_models),
        "num_queries": len(queries),
        "null_test": bool(cfg.evaluation.null_test),
        "seed": int(cfg.seed),
        "version": __version__,
        **{f"choice/{k}": v for k, v in choices.items()},
        **utility,
        "train_seconds": round(t_trained - t_start, 2),
        "models_from_cache": sum(m.from_cache for m in trained),
        **analysis,
    }
    records = [{**context, **rec} for rec in result.records]
    atomic_write_text(out / "metrics.json", json.dumps(records, indent=2, default=_json_default))
    save_roc_curves(result.rocs, out / "roc_curves.npz")
    plot_roc(
        result.rocs,
        out / "roc.png",
        title=f"{context['dataset']} / {context['model']} / {context['defense']}",
    )
    print_table(records)
    if cfg.get("logger") is not None and str(cfg.logger.get("_target_", "")).endswith("WandbLogger"):
        log_to_wandb(records, out / "roc.png", choices)
    log.info("wrote %s (%.1fs total)", out, time.perf_counter() - t_start)
    return records


def load_data(cfg: DictConfig) -> tuple[RawDataset, Splits]:
    """The dataset as loaded, and its population / test / public splits as the config asks."""
    raw = instantiate(cfg.dataset.loader)
    splits = make_splits(
        raw,
        population_size=cfg.dataset.population_size,
        test_size=cfg.dataset.test_size,
        public_size=cfg.dataset.public_size,
        seed=cfg.seed,
    )
    return raw, splits


def membership(population: ArrayData, cfg: DictConfig) -> tuple[ArrayData, ArrayData, np.ndarray, np.ndarray]:
    """Returns (records to train on, records to score, training masks, ground-truth masks of scored records)."""
    scheme, seed, k = cfg.membership.scheme, cfg.membership.seed, cfg.num_models
    if not cfg.evaluation.null_test:
        masks = make_masks(len(population), k, scheme, seed)
        return population, population, masks, masks
    perm = torch.randperm(len(population), generator=torch.Generator().manual_seed(int(seed) + 7919))
    half = len(population) // 2
    train_pool = population.subset(perm[:half].sort().values)
    audit = population.subset(perm[half:].sort().values)
    return (
        train_pool,
        audit,
        make_masks(len(train_pool), k, scheme, seed),
        make_masks(len(audit), k, scheme, seed + 1),
    )


def query_models(
    cfg: DictConfig,
    trained: list[TrainedModel],
    splits: Splits,
    audit: ArrayData,
    audit_masks: np.ndarray,
    train_masks: np.ndarray,
    queries: list,
    cache: RunCache | None,
) -> tuple[Signals, np.ndarray, np.ndarray]:
    """The signals (every model on every scored record under every query) and each model's test and train
    accuracy through its predict path; from the cache when these models' signals are stored."""
    dtype = np.dtype(cfg.signals.dtype)
    key = cache.signals_key([m.key for m in trained], audit, audit_masks, queries, dtype) if cache else None
    hit = cache.load_signals(key) if cache else None
    if hit is not None:
        log.info("signals and utility of the %d models loaded from the cache", len(trained))
        signals = Signals(logits=hit["logits"], labels=hit["labels"], masks=hit["masks"])
        return signals, hit["test_acc"], hit["train_acc"]
    logits = np.stack([collect_logits(m.module, audit.x, queries, cfg.signals.batch_size, dtype) for m in trained])
    signals = Signals(logits=logits, labels=audit.y.numpy(), masks=audit_masks)
    test_acc, train_acc = model_accuracies(trained, splits, train_masks, cfg)
    if cache is not None:
        arrays = {"logits": logits, "labels": signals.labels, "masks": audit_masks, "test_acc": test_acc}
        cache.save_signals(key, {**arrays, "train_acc": train_acc})
    return signals, test_acc, train_acc


def model_accuracies(trained, splits, train_masks: np.ndarray, cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """Test and train accuracy of every model through its predict path."""
    test, train = [], []
    for m in trained:
        test_logits = collect_logits(m.module, splits.test.x, query_offsets(), cfg.signals.batch_size)[:, 0]
        test.append(accuracy(test_logits, splits.test.y.numpy()))
        member = np.flatnonzero(train_masks[m.index])
        tr_logits = collect_logits(
            m.module, splits.population.x[member], query_offsets(), cfg.signals.batch_size
        )
        train.append(accuracy(tr_logits[:, 0], splits.population.y[member].numpy()))
    return np.array(test, dtype=np.float64), np.array(train, dtype=np.float64)


def utility_metrics(trained, test_a: np.ndarray, train_a: np.ndarray) -> dict:
    """Mean test and train accuracy over the models, the generalization gap, and the defense's figures."""
    info: dict[str, list[float]] = {}
    for m in trained:
        for key, value in m.module.defense_info.items():
            info.setdefault(key, []).append(float(value))
    return {
        **{f"defense/{key}": float(np.mean(values)) for key, values in info.items()},
        "test_acc_mean": float(test_a.mean()),
        "test_acc_std": float(test_a.std(ddof=1)) if len(test_a) > 1 else 0.0,
        "train_acc_mean": float(train_a.mean()),
        "train_acc_std": float(train_a.std(ddof=1)) if len(train_a) > 1 else 0.0,
        "gen_gap": float(train_a.mean() - test_a.mean()),
    }


def finish_shard(cfg: DictConfig, trained: list[TrainedModel], out: Path, t_start: float) -> list[dict]:
    """End of a shard job: its models are in the cache; write a marker naming them and return no records."""
    marker = {
        "shard": f"{cfg.shard.index}/{cfg.shard.count}",
        "models": [m.index for m in trained],
        "trained": [m.index for m in trained if not m.from_cache],
        "from_cache": [m.index for m in trained if m.from_cache],
        "keys": {str(m.index): m.key for m in trained},
        "cache_dir": str(cfg.cache.dir),
        "seconds": round(time.perf_counter() - t_start, 2),
        "version": __version__,
    }
    atomic_write_text(out / "shard.json", json.dumps(marker, indent=2))
    log.info(
        "shard %s: models %s are in the cache %s; run again without shard.* to attack (%.1fs)",
        marker["shard"],
        marker["models"],
        marker["cache_dir"],
        marker["seconds"],
    )
    return []


def resolve_targets(targets, num_models: int) -> list[int]:
    """``evaluation.targets``: an int n (the first n models), 'all', or an explicit list of model indices."""
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(
                f"evaluation.targets={targets!r}: expected an int, 'all' or a list of model indices"
            )
        return list(range(num_models))
    if isinstance(targets, int):
        if not 1 <= targets <= num_models:
            raise ValueError(
                f"evaluation.targets={targets}: expected 1..{num_models} (num_models={num_models})"
            )
        return list(range(targets))
    out = [int(t) for t in targets]
    bad = [t for t in out if not 0 <= t < num_models]
    if bad or not out:
        raise ValueError(f"evaluation.targets={out}: indices must lie in 0..{num_models - 1}")
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")

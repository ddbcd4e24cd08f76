"""The one top-level flow of a benchmark cell: data -> train K models -> signals -> attacks -> metrics -> report.

Read this file to know what a run does; every step is a call into one module, which gets the config nodes it needs.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia_bench import __version__, progress
from mia_bench.analyses import Analysis, RunInfo, build_analyses
from mia_bench.atomic import atomic_write_text, atomic_writer, make_dir, write_json
from mia_bench.attacks.base import Attack
from mia_bench.attacks.evaluate import CI_METHODS, EvaluationResult, evaluate, plan_references
from mia_bench.augment import query_offsets
from mia_bench.cache.keys import describe_recipe
from mia_bench.cache.models import ModelCache, open_cache
from mia_bench.cache.store import ShardNotStored
from mia_bench.data.base import ArrayData, RawDataset, check_finite
from mia_bench.data.splits import Splits, make_splits, membership
from mia_bench.loggers import logger_kind
from mia_bench.metrics import default_delta
from mia_bench.models.adapter import BUILDER, model_name
from mia_bench.report.exposed import most_exposed, write_exposed
from mia_bench.report.outputs import (
    log_to_tensorboard,
    log_to_wandb,
    plot_roc,
    print_table,
    save_roc_curves,
    save_scores,
)
from mia_bench.signals import Signals
from mia_bench.training.query import accuracy, collect_logits
from mia_bench.training.train import Recipe, TrainedModel, shard_indices, train_models

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run is, so that an interruption can say what it kept (the command line fills and reads it)."""

    stage: str = "starting"
    cache: ModelCache | None = None
    num_models: int = 0
    cache_opened: bool = False  # the cache is opened once the data is loaded (its keys need the data)
    on_stage: Callable[[], None] | None = None  # called as each stage begins (the command line checks for signals)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "stage" and getattr(self, "on_stage", None) is not None:
            self.on_stage()
        super().__setattr__(name, value)

    def kept(self) -> str:
        if not self.cache_opened:
            return "nothing was stored yet: a rerun starts over"
        if self.cache is None:
            return "nothing is kept (the cache is off): a rerun starts over"
        stored, where = self.cache.stored_models(), self.cache.store.root
        if not stored:
            return f"none of the {self.num_models} models is in the cache {where} yet; a rerun trains them"
        return (f"models {_ranges(stored)} of {self.num_models} are stored in the cache {where}; run the same "
                "command again to resume from them")


def _ranges(ks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    out, start = [], None
    for i, k in enumerate(ks):
        start = k if start is None else start
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            out.append(f"{start}-{k}" if k > start else str(k))
            start = None
    return ", ".join(out)


def run(cfg: DictConfig, choices: dict[str, str] | None = None, state: RunState | None = None) -> list[dict]:
    """Run one cell and write its outputs to ``cfg.paths.output_dir``; returns the metrics records. ``state``
    follows the run (its stage and cache), for the command line's message when it is interrupted."""
    with claim_output_dir(make_dir(cfg.paths.output_dir)) as out, progress.cell_progress(
            cfg.get("num_models"), len(cfg.get("attack") or {}), bool(cfg.get("progress", True))):
        return run_cell(cfg, dict(choices or {}), state if state is not None else RunState(), out)


@contextmanager
def claim_output_dir(out: Path) -> Iterator[Path]:
    """Hold the run's output folder for the run. A folder that another run is writing into now, or that holds the
    results of a finished run (``metrics.json``, ``shard.json``), is refused: a run never mixes its files with
    another's. A run killed before its results resumes in its own folder."""
    fd = os.open(out / ".mia_bench.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"paths.output_dir={out}: another run is writing into this folder now; give this run "
                             "its own (hydra.run.dir=...)") from None
        done = [name for name in ("metrics.json", "shard.json") if (out / name).exists()]
        if done:
            raise ValueError(f"paths.output_dir={out} already holds the results of another run ({', '.join(done)}); "
                             "give this run its own folder (hydra.run.dir=...) or move them")
        yield out
    finally:
        os.close(fd)  # releases the lock


def run_cell(cfg: DictConfig, choices: dict[str, str], state: RunState, out: Path) -> list[dict]:
    t_start = time.perf_counter()
    check_config(cfg)
    state.num_models = int(cfg.num_models)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    # Fail on a bad attack, target, shard or analysis now, not after training.
    attacks = build_attacks(cfg.attack)
    targets = resolve_targets(cfg.evaluation.targets, cfg.num_models)
    cache_on = bool((cfg.get("cache") or {}).get("enabled", False))
    shard = shard_indices(cfg.get("shard"), cfg.num_models, cache_on)  # a shard job trains its share, then stops
    analyses = build_analyses(cfg.get("analysis"))

    # 1. Data: population (membership is defined over it), test (utility), public (defenses' own data).
    state.stage = "loading the data"
    raw, splits = load_data(cfg.dataset, cfg.seed)
    # 2. Masks: which records each of the K models trains on; the null test scores records no model saw.
    train_pool, audit, train_masks, audit_masks = membership(
        splits.population, cfg.num_models, cfg.membership.scheme, cfg.membership.seed, cfg.evaluation.null_test)
    plan_references(audit_masks, attacks, targets)  # an attack that would get no reference models fails now
    splits.population = train_pool
    queries = attacker_queries(raw, cfg.dataset.get("query_augment"))
    info = RunInfo(cfg.num_models, cfg.train.epochs, cfg.seed, cfg.model, cfg.evaluation.null_test, audit, queries)
    for analysis in analyses.values():
        analysis.setup(info)
    log.info("%s: %d population records (%d scored), %d test records, %d classes, K=%d models", splits.name,
             len(train_pool), len(audit), len(splits.test), splits.num_classes, cfg.num_models)

    # 3. Train all K models with the same recipe. Models are cached under a hash of everything that determines
    # them (what analyses record while training included): stored ones are loaded, not retrained.
    recorded = {name: r for name, a in analyses.items() if (r := a.recorded()) is not None}
    cache = open_cache(cfg.get("cache"), describe_recipe(cfg, recorded), population=train_pool, audit=audit,
                       test=splits.test, public=splits.public)
    state.stage, state.cache, state.cache_opened = "training", cache, True
    trained = train_models(Recipe.from_config(cfg), splits, train_masks, shard, callbacks_for(analyses), cache)
    t_trained = time.perf_counter()
    if shard is not None:  # the attack stage (shard.count=1) loads every model from the cache
        return finish_shard(cfg, trained, out, t_start, cache)

    # 4. Signals: every model on every scored record under every query augmentation, through its predict path;
    # cached with the models' accuracies, so a run that changes only the attack neither trains nor queries.
    state.stage = "querying the models"
    signals, test_acc, train_acc = query_models(cfg.signals, trained, splits, audit, audit_masks, train_masks,
                                                queries, cache)
    signals.save(out / "signals.npz")
    with atomic_writer(out / "masks.npy") as f:
        np.save(f, audit_masks)

    # 5-6. Attacks over the signals, metrics over target models (with an empirical epsilon at the run's delta).
    ev = cfg.evaluation
    state.stage = "attacking"
    utility = utility_metrics(trained, test_acc, train_acc)
    delta = run_delta(ev.delta, utility, train_masks)
    result = evaluate(signals, attacks, targets, n_bootstrap=ev.n_bootstrap, confidence=ev.confidence, seed=cfg.seed,
                      ci_method=ev.ci_method, delta=delta)

    # 7. Analyses across training (+analysis=...): their own files, summary figures into metrics.json.
    summary, state.stage = {}, "analysing"
    for analysis in analyses.values():
        summary.update(analysis.run(trained, signals, audit_masks, out))

    # 8. Outputs: metrics.json (one flat record per attack with the cell's context), per-target metrics, per-record
    # scores, ROC, most exposed records, table, W&B.
    notes = training_notes(trained, splits.num_classes)
    context = cell_context(cfg, choices, splits.name, len(queries), utility, round(t_trained - t_start, 2))
    context.update(models_from_cache=sum(m.from_cache for m in trained), **summary)
    if notes:
        context["warnings"] = "; ".join(notes)
    records = [{**context, **rec} for rec in result.records]
    state.stage = "writing the outputs"
    kind = logger_kind(cfg.get("logger"))
    write_outputs(out, records, result, audit, choices, wandb=kind == "wandb", tensorboard=kind == "tensorboard",
                  figures=bool(cfg.get("figures", True)))
    log.info("wrote %s (%.1fs total)", out, time.perf_counter() - t_start)
    return records


def build_attacks(node: DictConfig | None) -> dict[str, Attack]:
    """The selected attacks by name (``attack=all``, ``attack=lira``, ``attack=[loss,rmia]``)."""
    attacks = {name: instantiate(sub) for name, sub in (node or {}).items()}
    if not attacks:
        raise ValueError("no attack selected: choose e.g. attack=all, attack=lira or attack=[loss,rmia]")
    return attacks


def cell_context(cfg: DictConfig, choices: dict, dataset: str, num_queries: int, utility: dict,
                 train_seconds: float) -> dict:
    """What every metrics record of the cell carries besides the attack's own figures."""
    return {
        "dataset": choices.get("dataset", dataset),
        "model": model_name(cfg.model) if str(cfg.model.get("_target_")) != BUILDER else choices.get(
            "model", model_name(cfg.model)),
        "defense": choices.get("defense", str(cfg.defense.get("name", ""))),
        "num_models": int(cfg.num_models),
        "num_queries": num_queries,
        "null_test": bool(cfg.evaluation.null_test),
        "seed": int(cfg.seed),
        "version": __version__,
        **{f"choice/{k}": v for k, v in choices.items()},
        **utility,
        "train_seconds": train_seconds,
    }


def write_outputs(out: Path, records: list[dict], result: EvaluationResult, audit: ArrayData, choices: dict,
                  wandb: bool, tensorboard: bool = False, figures: bool = True) -> None:
    """metrics.json, per_target.json, scores.npz, the ROC curves and plots, the most exposed records, the console
    table, and the W&B summary when logging there (docs/outputs.md describes every file)."""
    write_json(out / "metrics.json", records)
    write_json(out / "per_target.json", result.per_target)
    save_scores(result, audit.y.numpy(), out / "scores.npz")
    save_roc_curves(result.rocs, out / "roc_curves.npz", pooled=result.pooled_rocs)
    r0 = records[0]
    title = f"{r0['dataset']} / {r0['model']} / {r0['defense']}"
    if figures:
        plot_roc(result.rocs, out / "roc.png", title=title, records=records)
        plot_roc(result.pooled_rocs, out / "roc_pooled.png", title=f"{title} (pooled over targets)",
                 records=records, pooled=True)
    write_exposed(most_exposed(result, records), audit, out, title, figure=figures)
    print_table(records)
    if tensorboard:
        log_to_tensorboard(records, out, choices)
    if wandb:
        log_to_wandb(records, out, choices, result.rocs)


def run_delta(setting: str | float, utility: dict, train_masks: np.ndarray) -> float:
    """The delta of the empirical epsilon bound: the setting, else DP-SGD's own delta when the models report one,
    else DP-SGD's default rule (1/n rounded down to a power of ten) for a model's training set size n."""
    if setting != "auto":
        return float(setting)
    if "defense/delta" in utility:
        return float(utility["defense/delta"])
    return default_delta(int(round(float(train_masks.sum(1).mean()))))


def _queried(logits: np.ndarray) -> np.ndarray:
    progress.advance("signals")
    return logits


def load_data(dataset: DictConfig, seed: int) -> tuple[RawDataset, Splits]:
    """The dataset as loaded, and its population / test / public splits as the ``dataset`` node asks."""
    raw = instantiate(dataset.loader)
    check_finite(raw)
    splits = make_splits(raw, population_size=dataset.population_size, test_size=dataset.test_size,
                         public_size=dataset.public_size, seed=seed)
    return raw, splits


def attacker_queries(raw: RawDataset, augment: DictConfig | None) -> list[tuple[int, int, bool]]:
    """The attacker's query augmentations (``dataset.query_augment``; images only); the first is the clean query."""
    if not raw.is_image or not augment:
        return query_offsets()
    return query_offsets(int(augment.get("shift", 0)), bool(augment.get("hflip", False)))


def callbacks_for(analyses: dict[str, Analysis]):
    """``fn(k)``: the callbacks the selected analyses add to model k's training (None when there are none)."""
    if not analyses:
        return None
    return lambda k: [cb for a in analyses.values() for cb in a.callbacks(k)]


def query_models(
    node: DictConfig,
    trained: list[TrainedModel],
    splits: Splits,
    audit: ArrayData,
    audit_masks: np.ndarray,
    train_masks: np.ndarray,
    queries: list,
    cache: ModelCache | None,
) -> tuple[Signals, np.ndarray, np.ndarray]:
    """The signals (every model on every scored record under every query) and each model's test and train
    accuracy through its predict path; from the cache when these models' signals are stored. ``node``: the
    ``signals`` config (dtype, batch_size)."""
    dtype = np.dtype(node.dtype)
    key = cache.signals_key([m.key for m in trained], audit, audit_masks, queries, dtype) if cache else None
    hit = cached_signals(cache, key, len(trained), audit, audit_masks, len(queries)) if cache else None
    if hit is not None:
        log.info("signals and utility of the %d models loaded from the cache", len(trained))
        return hit
    logits = np.stack([_queried(collect_logits(m.module.predict_logits, audit.x, queries, node.batch_size, dtype))
                       for m in trained])
    signals = Signals(logits=logits, labels=audit.y.numpy(), masks=audit_masks)
    test_acc, train_acc = model_accuracies(trained, splits, train_masks, node.batch_size)
    if cache is not None:
        arrays = {"logits": logits, "labels": signals.labels, "masks": audit_masks, "test_acc": test_acc}
        cache.save_signals(key, {**arrays, "train_acc": train_acc})
    return signals, test_acc, train_acc


def cached_signals(
    cache: ModelCache, key: str, k: int, audit: ArrayData, audit_masks: np.ndarray, q: int
) -> tuple[Signals, np.ndarray, np.ndarray] | None:
    """A stored signals entry if its contents fit this run (K models, the audit records' labels and masks, Q queries,
    finite logits); otherwise the entry is invalidated, with the reason, so that the run recomputes and replaces it
    instead of failing on it on every rerun (checksums catch damage to files, not contents that never fit)."""
    hit = cache.load_signals(key)
    if hit is None:
        return None
    try:
        missing = {"logits", "labels", "masks", "test_acc", "train_acc"} - set(hit)
        if missing:
            raise ValueError(f"arrays {sorted(missing)} missing")
        signals = Signals(logits=hit["logits"], labels=hit["labels"], masks=hit["masks"])
        want = (k, len(audit), q)
        if signals.logits.shape[:3] != want:
            raise ValueError(f"logits {signals.logits.shape} for [K, N, Q] = {list(want)}")
        if not np.array_equal(signals.labels, audit.y.numpy()) or not np.array_equal(signals.masks, audit_masks):
            raise ValueError("labels or membership masks differ from this run's")
        if hit["test_acc"].shape != (k,) or hit["train_acc"].shape != (k,):
            raise ValueError(f"accuracies of shape {hit['test_acc'].shape} / {hit['train_acc'].shape} for {k} models")
    except ValueError as err:
        cache.store.invalidate("signals", key, f"unusable contents ({err})")
        return None
    return signals, hit["test_acc"], hit["train_acc"]


def model_accuracies(
    trained: list[TrainedModel], splits: Splits, train_masks: np.ndarray, batch_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Test and train accuracy of every model through its predict path."""
    test, train = [], []
    for m in trained:
        test_logits = collect_logits(m.module.predict_logits, splits.test.x, batch_size=batch_size)[:, 0]
        test.append(accuracy(test_logits, splits.test.y.numpy()))
        member = np.flatnonzero(train_masks[m.index])
        tr_logits = collect_logits(m.module.predict_logits, splits.population.x[member], batch_size=batch_size)
        train.append(accuracy(tr_logits[:, 0], splits.population.y[member].numpy()))
    return np.array(test, dtype=np.float64), np.array(train, dtype=np.float64)


def training_notes(trained: list[TrainedModel], num_classes: int) -> list[str]:
    """Warnings about the models that a table of attack figures should carry: a training that ended with a loss
    above twice a uniform guess's (ln C) diverged or learned nothing, and its attack figures mean little."""
    limit = 2 * math.log(max(num_classes, 2))
    high = {m.index: m.module.final_train_loss for m in trained if m.module.final_train_loss > limit}
    if not high:
        return []
    worst = max(high.values())
    note = (f"the training loss of models {sorted(high)} ended above {limit:.2f} (twice a uniform guess's ln C; up to "
            f"{worst:.3g}): they diverged or did not learn; check the learning rate (train.module.optimizer.lr)")
    log.warning(note)
    return [note]


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


def finish_shard(
    cfg: DictConfig, trained: list[TrainedModel], out: Path, t_start: float, cache: ModelCache
) -> list[dict]:
    """End of a shard job: its models are in the cache; write a marker naming them and return no records. A model
    the cache could not store (a full or read-only cache) fails the job, naming it: the attack stage would train it
    again, or fail."""
    stored = set(cache.stored_models())
    missing = [m.index for m in trained if m.index not in stored]
    if missing:
        raise ShardNotStored(f"shard {cfg.shard.index}/{cfg.shard.count}: models {missing} are not in the cache "
                      f"{cache.store.root} (it could not store them; see the warnings above)")
    marker = {
        "shard": f"{cfg.shard.index}/{cfg.shard.count}",
        "models": [m.index for m in trained],
        "trained": [m.index for m in trained if not m.from_cache],
        "from_cache": [m.index for m in trained if m.from_cache],
        "keys": {str(m.index): m.key for m in trained},
        "cache_dir": str(cache.store.root),  # the folder actually used (relative paths anchored)
        "seconds": round(time.perf_counter() - t_start, 2),
        "version": __version__,
    }
    write_json(out / "shard.json", marker)
    log.info("shard %s: models %s are in the cache %s; run again without shard.* to attack (%.1fs)",
             marker["shard"], marker["models"], marker["cache_dir"], marker["seconds"])
    return []


#: ``evaluation.targets: auto``: this many target models, or every model when K is smaller.
AUTO_TARGETS = 8


def resolve_targets(targets, num_models: int) -> list[int]:
    """``evaluation.targets``: ``auto`` (the first min(8, K) models), an int n (the first n), ``all``, or an explicit
    list of model indices."""
    if isinstance(targets, str):
        if targets not in ("all", "auto"):
            raise ValueError(
                f"evaluation.targets={targets!r}: expected auto, all, an int or a list of model indices")
        return list(range(num_models if targets == "all" else min(AUTO_TARGETS, num_models)))
    if isinstance(targets, int) and not isinstance(targets, bool):
        if not 1 <= targets <= num_models:
            raise ValueError(f"evaluation.targets={targets}: expected 1..{num_models} (num_models={num_models})")
        return list(range(targets))
    try:
        out = [int(t) for t in targets]
    except (TypeError, ValueError):
        raise ValueError(f"evaluation.targets={targets!r}: expected auto, all, an int or a list of model "
                         "indices") from None
    bad = [t for t in out if not 0 <= t < num_models]
    if bad or not out:
        raise ValueError(f"evaluation.targets={out}: indices must lie in 0..{num_models - 1}")
    return out


def _whole(value, at_least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


#: The run-level settings checked before any data loads: key -> (test, what is accepted).
CHECKS = {
    "num_models": (lambda v: _whole(v, 2), "a whole number of models >= 2"),
    "seed": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "cpu_threads": (lambda v: v is None or _whole(v, 1), "null or a whole number of threads >= 1"),
    "membership.scheme": (lambda v: v in ("paired", "bernoulli"), "paired or bernoulli"),
    "signals.dtype": (lambda v: v in ("float16", "float32"), "float16 or float32"),
    "signals.batch_size": (lambda v: v is None or _whole(v, 1), "null or a whole number of records >= 1"),
    "evaluation.n_bootstrap": (lambda v: _whole(v, 0), "a whole number of resamples >= 0 (0 = no intervals)"),
    "evaluation.confidence": (lambda v: isinstance(v, float) and 0 < v < 1, "a level in (0, 1), e.g. 0.95"),
    "evaluation.null_test": (lambda v: isinstance(v, bool), "true or false"),
    "evaluation.ci_method": (lambda v: v in CI_METHODS, " or ".join(CI_METHODS)),
    "evaluation.delta": (lambda v: v == "auto" or (isinstance(v, int | float) and not isinstance(v, bool)
                                                   and 0 <= v < 1), "auto or a delta in [0, 1), e.g. 1e-5"),
    "train.epochs": (lambda v: _whole(v, 1), "a whole number of epochs >= 1"),
    "train.batch_size": (lambda v: _whole(v, 1), "a whole number of records >= 1"),
    "train.eval_batch_size": (lambda v: _whole(v, 1), "a whole number of records >= 1"),
    "train.ensemble_size": (lambda v: v is None or _whole(v, 1), "null or a whole number of models >= 1"),
    "cache.enabled": (lambda v: isinstance(v, bool), "true or false"),
}


def check_config(cfg: DictConfig) -> None:
    """Every run-level setting, before any data loads or model trains: a bad value fails in a second, with a
    message naming the key, the value and what is accepted (the components check their own arguments when they
    are built, also before training)."""
    for key, (ok, accepted) in CHECKS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if not ok(value):
            raise ValueError(f"{key}={value!r}: expected {accepted}")
    if cfg.membership.scheme == "paired" and cfg.num_models % 2:
        raise ValueError(f"num_models={cfg.num_models}: the paired mask scheme needs an even number of models "
                         "(or membership.scheme=bernoulli)")
    resolve_targets(cfg.evaluation.targets, cfg.num_models)

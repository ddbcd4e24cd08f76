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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mia_bench import __version__, progress
from mia_bench.analyses import Analysis, RunInfo, build_analyses
from mia_bench.atomic import atomic_write_text, atomic_writer, make_dir, write_json
from mia_bench.attacks.base import Attack
from mia_bench.attacks.evaluate import EvaluationResult, evaluate, plan_references, resolve_targets
from mia_bench.augment import query_offsets
from mia_bench.cache.keys import describe_recipe
from mia_bench.cache.models import ModelCache, open_cache
from mia_bench.cache.signals import cached_signals
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
from mia_bench.validation import check_config

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run is, so that an interruption can say what it kept (the command line fills and reads it)."""

    stage: str = "starting"
    cache: ModelCache | None = None
    num_models: int = 0
    cache_opened: bool = False  # the cache is opened once the data is loaded (its keys need the data)
    on_stage: Callable[[], None] | None = None  # called as each stage begins (the command line checks for signals)

    def enter(self, stage: str) -> None:
        """Begin ``stage``, after ``on_stage`` (which may raise: a signal that arrived in the stage before)."""
        if self.on_stage is not None:
            self.on_stage()
        self.stage = stage

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
    with cell_scope(cfg, len(cfg.get("attack") or {})) as out:
        return run_cell(cfg, dict(choices or {}), state if state is not None else RunState(), out)


@contextmanager
def cell_scope(cfg: DictConfig, num_attacks: int) -> Iterator[Path]:
    """What every cell runs inside, a run or an audit: its own output folder, the progress display, and torch's
    thread count (``cpu_threads``) for the cell only, restored for a Python caller afterwards."""
    with claim_output_dir(make_dir(cfg.paths.output_dir)) as out, progress.cell_progress(
            cfg.get("num_models"), num_attacks, bool(cfg.get("progress", True))), torch_threads(cfg.get("cpu_threads")):
        yield out


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: left as they are)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:  # check_config names a bad value
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def claim_output_dir(out: Path) -> Iterator[Path]:
    """Hold the run's output folder for the run. A folder that another run is writing into now, or that holds the
    results of a finished run (``metrics.json``, ``shard.json``), is refused, and a refused run leaves nothing there:
    a run never mixes its files with another's. A run killed before its results resumes in its own folder; one that
    finishes removes its lock file."""
    lock = out / ".mia_bench.lock"
    created = not lock.exists()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"paths.output_dir={out}: another run is writing into this folder now; give this run "
                             "its own (hydra.run.dir=...)") from None
        done = [name for name in ("metrics.json", "shard.json") if (out / name).exists()]
        if done:
            if created:
                lock.unlink(missing_ok=True)
            raise ValueError(f"paths.output_dir={out} already holds the results of another run ({', '.join(done)}); "
                             "give this run its own folder (hydra.run.dir=...) or move them")
        yield out
        lock.unlink(missing_ok=True)  # the run is complete: nothing to hold any more
    finally:
        os.close(fd)  # releases the lock


@dataclass
class CellPlan:
    """What a cell computes besides its models, built from the config before anything loads: a bad attack, target,
    shard or analysis fails in seconds, not after training."""

    attacks: dict[str, Attack]
    targets: list[int]
    shard: list[int] | None  # the models a shard job trains, None for a whole cell
    analyses: dict[str, Analysis]


def plan_cell(cfg: DictConfig, attacks: dict[str, Attack] | None = None) -> CellPlan:
    """Validate the config and build the cell's attacks (``attacks``: given by a Python caller instead of
    ``cfg.attack``), targets, shard and analyses."""
    check_config(cfg)
    cache_on = bool((cfg.get("cache") or {}).get("enabled", False))
    return CellPlan(attacks=attacks if attacks is not None else build_attacks(cfg.attack),
                    targets=resolve_targets(cfg.evaluation.targets, cfg.num_models),
                    shard=shard_indices(cfg.get("shard"), cfg.num_models, cache_on),
                    analyses=build_analyses(cfg.get("analysis")))


@dataclass
class CellData:
    """The records of a cell and which model trains on which."""

    splits: Splits  # population: the records the models train on (under the null test, half of the population)
    audit: ArrayData  # the records the attacks score
    train_masks: np.ndarray  # [K, len(splits.population)]: model k trains on the records of row k
    audit_masks: np.ndarray  # [K, len(audit)]: the ground truth of the scored records
    queries: list  # the attacker's query augmentations, the clean query first


def cell_data(cfg: DictConfig, plan: CellPlan) -> CellData:
    """The dataset's splits, the membership masks (the null test scores records no model saw) and the queries."""
    raw, splits = load_data(cfg.dataset, cfg.seed)
    train_pool, audit, train_masks, audit_masks = membership(
        splits.population, cfg.num_models, cfg.membership.scheme, cfg.membership.seed, cfg.evaluation.null_test)
    plan_references(audit_masks, plan.attacks, plan.targets)  # an attack that would get no reference models fails now
    queries = attacker_queries(raw, cfg.dataset.get("query_augment"))
    log.info("%s: %d population records (%d scored), %d test records, %d classes, K=%d models", splits.name,
             len(train_pool), len(audit), len(splits.test), splits.num_classes, cfg.num_models)
    return CellData(replace(splits, population=train_pool), audit, train_masks, audit_masks, queries)


def train_cell(cfg: DictConfig, data: CellData, plan: CellPlan, state: RunState) -> list[TrainedModel]:
    """All K models with the same recipe, cached under a hash of everything that determines them (what analyses
    record while training included): stored ones are loaded, not retrained."""
    recorded = {name: r for name, a in plan.analyses.items() if (r := a.recorded()) is not None}
    cache = open_cache(cfg.get("cache"), describe_recipe(cfg, recorded), population=data.splits.population,
                       audit=data.audit, test=data.splits.test, public=data.splits.public)
    state.enter("training")
    state.cache, state.cache_opened = cache, True
    return train_models(Recipe.from_config(cfg), data.splits, data.train_masks, plan.shard,
                        callbacks_for(plan.analyses), cache)


def attack_cell(node: DictConfig, signals: Signals, plan: CellPlan, targets: list[int], seed: int,
                delta: float) -> EvaluationResult:
    """Every attack against every target, with the ``evaluation`` node's intervals."""
    return evaluate(signals, plan.attacks, targets, n_bootstrap=node.n_bootstrap, confidence=node.confidence,
                    seed=seed, ci_method=node.ci_method, delta=delta)


def run_cell(cfg: DictConfig, choices: dict[str, str], state: RunState, out: Path) -> list[dict]:
    """The cell's stages in order, each one call; ``out``: its output folder, held by the caller."""
    t_start = time.perf_counter()
    plan = plan_cell(cfg)
    state.num_models = int(cfg.num_models)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    # 1-2. Data (population, test, public) and masks: which records each of the K models trains on.
    state.enter("loading the data")
    data = cell_data(cfg, plan)
    for analysis in plan.analyses.values():  # checks that depend on the data fail now, not after training
        analysis.setup(RunInfo(cfg.num_models, cfg.train.epochs, cfg.seed, cfg.model, cfg.evaluation.null_test,
                               data.audit, data.queries))

    # 3. Train all K models with the same recipe (or load them from the cache).
    trained = train_cell(cfg, data, plan, state)
    t_trained = time.perf_counter()
    if plan.shard is not None:  # the attack stage (shard.count=1) loads every model from the cache
        return finish_shard(cfg, trained, out, t_start, state.cache)

    # 4. Signals: every model on every scored record under every query augmentation, through its predict path;
    # cached with the models' accuracies, so a run that changes only the attack neither trains nor queries.
    state.enter("querying the models")
    signals, test_acc, train_acc = query_models(cfg.signals, trained, data, state.cache)
    write_signals(out, signals, data.audit_masks)

    # 5-6. Attacks over the signals, metrics over target models (with an empirical epsilon at the run's delta).
    state.enter("attacking")
    utility = utility_metrics(trained, test_acc, train_acc)
    result = attack_cell(cfg.evaluation, signals, plan, plan.targets, cfg.seed,
                         run_delta(cfg.evaluation.delta, utility, data.train_masks))

    # 7. A defense's per-epoch figures, then analyses across training (+analysis=...), into metrics.json.
    summary = defense_trajectories(trained, out, cfg)
    state.enter("analysing")
    for analysis in plan.analyses.values():
        summary.update(analysis.run(trained, signals, data.audit_masks, out))

    # 8. Outputs: metrics.json (a flat record per attack), per-target metrics, scores, ROC, exposed records, W&B.
    context = cell_context(cfg, choices, data.splits.name, len(data.queries), utility, round(t_trained - t_start, 2))
    context.update(models_from_cache=sum(m.from_cache for m in trained), **summary)
    if notes := training_notes(trained, data.splits.num_classes, test_acc):
        context["warnings"] = "; ".join(notes)
    records = [{**context, **rec} for rec in result.records]
    state.enter("writing the outputs")
    kind = logger_kind(cfg.get("logger"))
    write_outputs(out, records, result, data.audit, choices, wandb=kind == "wandb", tensorboard=kind == "tensorboard",
                  figures=bool(cfg.get("figures", True)))
    log.info("wrote %s (%.1fs total)", out, time.perf_counter() - t_start)
    return records


@dataclass
class AuditOutcome:
    """What :func:`audit_model` found (see ``mia_bench.audit``)."""

    scores: dict[str, np.ndarray]  # attack -> [N] scores of the target
    signals: Signals  # the reference models first, the target last
    records: list[dict] = field(default_factory=list)  # metrics per attack, when membership is known
    per_target: list[dict] = field(default_factory=list)


def audit_model(cfg: DictConfig, target: torch.nn.Module, records: ArrayData, members: np.ndarray | None,
                attacks: dict[str, Attack]) -> AuditOutcome:
    """Audit a model trained elsewhere through the same stages as a cell: the config validated, reference models
    (``num_models`` of them, on paired halves of ``records``) trained or loaded from the cache with the progress
    display, their signals cached, the target queried, the attacks run, the results written to
    ``cfg.paths.output_dir``. ``members``: the target's membership of ``records`` for metrics, or None (scores
    only)."""
    with cell_scope(cfg, len(attacks)) as out:
        plan = plan_cell(cfg, attacks)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        k, num_classes = int(cfg.num_models), int(records.y.max()) + 1
        _, _, masks, _ = membership(records, k, cfg.membership.scheme, cfg.membership.seed)
        truth = members if members is not None else np.zeros(len(records), bool)
        if members is not None:  # the target is model k, scored against the K reference models; fails before training
            plan_references(np.vstack([masks, truth]), attacks, [k])
        splits = Splits(population=records, test=records.subset(torch.arange(0)), public=None,
                        num_classes=num_classes, input_shape=tuple(records.x.shape[1:]), name="audit")
        data = CellData(splits, records, masks, masks, [query_offsets()[0]])
        state = RunState()
        trained = train_cell(cfg, data, plan, state)
        references, _, _ = query_models(cfg.signals, trained, data, state.cache)
        target_logits = query_target(target, records.x, num_classes).astype(references.logits.dtype)
        signals = Signals(logits=np.concatenate([references.logits, target_logits[None]]), labels=records.y.numpy(),
                          masks=np.vstack([masks, truth]))
        signals.save(out / "signals.npz")
        if members is None:
            scores = {name: np.asarray(a.score(signals, k, np.arange(k)), dtype=np.float64)
                      for name, a in attacks.items()}
            with atomic_writer(out / "scores.npz") as f:
                np.savez(f, **{f"scores/{name}": s for name, s in scores.items()})
            return AuditOutcome(scores, signals)
        ev = cfg.evaluation
        delta = default_delta(max(1, int(members.sum()))) if ev.delta == "auto" else float(ev.delta)
        result = attack_cell(ev, signals, plan, [k], cfg.seed, delta)
        write_json(out / "per_target.json", result.per_target)
        save_scores(result, records.y.numpy(), out / "scores.npz")
        write_json(out / "metrics.json", result.records)  # last: a folder with metrics.json is a finished one
        return AuditOutcome({a: s[0] for a, s in result.scores.items()}, signals, result.records, result.per_target)


def query_target(target: torch.nn.Module, x: torch.Tensor, num_classes: int) -> np.ndarray:
    """``[N, 1, C]`` logits of a model trained elsewhere, in eval mode, on its own device."""
    target.eval()
    device = next(iter(target.parameters()), torch.empty(0)).device

    @torch.no_grad()
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return target(batch.to(device))

    logits = collect_logits(forward, x, device=device)
    if logits.shape[-1] != num_classes:
        raise ValueError(f"the target outputs {logits.shape[-1]} logits but y has {num_classes} classes")
    return logits


def write_signals(out: Path, signals: Signals, masks: np.ndarray) -> None:
    """The signals and the scored records' masks, so attacks can be rerun on a finished run without its models."""
    signals.save(out / "signals.npz")
    with atomic_writer(out / "masks.npy") as f:
        np.save(f, masks)


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
    node: DictConfig, trained: list[TrainedModel], data: CellData, cache: ModelCache | None
) -> tuple[Signals, np.ndarray, np.ndarray]:
    """The signals (every model on every scored record under every query) and each model's test and train
    accuracy through its predict path; from the cache when these models' signals are stored. ``node``: the
    ``signals`` config (dtype, batch_size)."""
    dtype, audit = np.dtype(node.dtype), data.audit
    key = cache.signals_key([m.key for m in trained], audit, data.audit_masks, data.queries, dtype) if cache else None
    hit = cached_signals(cache, key, len(trained), audit.y.numpy(), data.audit_masks, len(data.queries)) \
        if cache else None
    if hit is not None:
        log.info("signals and utility of the %d models loaded from the cache", len(trained))
        return hit
    logits = np.stack([_queried(collect_logits(m.module.predict_logits, audit.x, data.queries, node.batch_size,
                                               dtype)) for m in trained])
    signals = Signals(logits=logits, labels=audit.y.numpy(), masks=data.audit_masks)
    test_acc, train_acc = model_accuracies(trained, data.splits, data.train_masks, node.batch_size)
    if cache is not None:
        arrays = {"logits": logits, "labels": signals.labels, "masks": data.audit_masks, "test_acc": test_acc}
        cache.save_signals(key, {**arrays, "train_acc": train_acc})
    return signals, test_acc, train_acc


def model_accuracies(
    trained: list[TrainedModel], splits: Splits, train_masks: np.ndarray, batch_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Test and train accuracy of every model through its predict path."""
    test, train = [], []
    for m in trained:
        if len(splits.test):
            test_logits = collect_logits(m.module.predict_logits, splits.test.x, batch_size=batch_size)[:, 0]
            test.append(accuracy(test_logits, splits.test.y.numpy()))
        else:  # an audit of records the caller gave: no test split
            test.append(float("nan"))
        member = np.flatnonzero(train_masks[m.index])
        tr_logits = collect_logits(m.module.predict_logits, splits.population.x[member], batch_size=batch_size)
        train.append(accuracy(tr_logits[:, 0], splits.population.y[member].numpy()))
    return np.array(test, dtype=np.float64), np.array(train, dtype=np.float64)


def training_notes(trained: list[TrainedModel], num_classes: int, test_acc: np.ndarray) -> list[str]:
    """Warnings about the models that a table of attack figures should carry, since a defense that ruined its models
    looks like protection there: a training loss above twice a uniform guess's (ln C: diverged or learned nothing),
    test accuracy near chance, or models far below the cell's best (half-way or more from it down to chance)."""
    notes = []
    limit = 2 * math.log(max(num_classes, 2))
    high = {m.index: m.module.final_train_loss for m in trained if m.module.final_train_loss > limit}
    if high:
        notes.append(f"the training loss of models {sorted(high)} ended above {limit:.2f} (twice a uniform guess's "
                     f"ln C; up to {max(high.values()):.3g}): they diverged or did not learn; check the learning rate "
                     "(train.module.optimizer.lr)")
    chance, acc = 1.0 / max(num_classes, 2), np.asarray(test_acc, dtype=np.float64)
    if np.isfinite(acc).any():
        best = np.nanmax(acc)
        if np.nanmean(acc) < chance + 0.1:
            notes.append(f"mean test accuracy {100 * np.nanmean(acc):.1f}% is near chance ({100 * chance:.0f}%): the "
                         "models did not learn, so a low attack figure is no protection; train longer "
                         "(train.epochs) or check the defense's strength")
        elif low := [m.index for m, a in zip(trained, acc, strict=True) if a < (best + chance) / 2]:
            notes.append(f"models {low} reached a test accuracy far below the cell's best ({100 * best:.1f}%; "
                         f"as low as {100 * np.nanmin(acc):.1f}%): a defense that ruins models looks like protection; "
                         "train longer (train.epochs) or weaken the defense")
    for note in notes:
        log.warning(note)
    return notes


def defense_trajectories(trained: list[TrainedModel], out: Path, cfg: DictConfig) -> dict[str, list[float]]:
    """The per-epoch figures a defense records (``module.artifacts['trajectory/<name>']``, one value per epoch,
    e.g. AdaMixup's ratio): their mean over the models, epoch 1 first, for metrics.json under the same name, and
    (``figures=true``) every model's curve in ``trajectory.png``. Only names every model carries: a mean over some of
    the models would read as the cell's."""
    names = set.intersection(*({k for k in m.module.artifacts if k.startswith("trajectory/")} for m in trained)) \
        if trained else set()
    curves = {}
    for name in sorted(names):
        rows = [np.asarray(m.module.artifacts[name], dtype=np.float64).ravel() for m in trained]
        stack = np.full((len(rows), max(len(r) for r in rows)), np.nan)  # NaN past a model's last epoch
        for i, row in enumerate(rows):
            stack[i, : len(row)] = row
        curves[name] = stack
    if curves and cfg.get("figures", True):
        from mia_bench.report.plots import defense_trajectory_plot

        defense_trajectory_plot(curves, out / "trajectory.png", f"{cfg.defense.name}: per-epoch figures")
    return {name: [round(float(v), 6) for v in np.nanmean(c, 0)] for name, c in curves.items()}


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



"""``analysis.dynamics`` settings, checked before any model trains (a bad value fails in seconds, not hours)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mia_bench.dynamics.hardness import MODEL_SELECTIONS
from mia_bench.dynamics.vulnerability import check_edges

KEYS = {
    "epochs", "every", "initial", "queries", "dtype", "batch_size", "attack", "fpr", "edges", "entropy_bins",
    "plot_epochs", "early_fraction", "hardness",
}
HARDNESS_KEYS = {"models", "grad_norm", "grad_batch_size", "mc_dropout"}
QUERIES = ("identity", "run")
DTYPES = ("float16", "float32")
#: Fewer models leave too few IN/OUT references per record for LiRA and per-record rates in steps of 1/2.
MIN_MODELS = 4


@dataclass
class DynamicsConfig:
    record_epochs: list[int]                 # sorted epochs to snapshot (0 = before training); the last = final
    final_epoch: int
    queries: str = "identity"
    dtype: str = "float16"
    batch_size: int = 1024
    attack: dict = field(default_factory=dict)
    fpr: float = 0.05
    edges: np.ndarray = field(default_factory=lambda: np.array([1 / 3, 2 / 3]))
    entropy_bins: int = 10
    plot_epochs: list[int] = field(default_factory=list)
    early_fraction: float = 0.375
    hardness_models: str = "all"
    grad_norm: bool = True
    grad_batch_size: int = 128
    mc_dropout: int = 0


def _bad(key: str, value, accepted: str) -> ValueError:
    return ValueError(f"analysis.dynamics.{key}={value!r}: {accepted}")


def _int(key: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise _bad(key, value, f"expected an int >= {lo}")
    return int(value)


def parse(cfg: DictConfig) -> DynamicsConfig:
    """Validate ``cfg.analysis.dynamics`` against the run (``train.epochs``, ``num_models``, ``model.dropout``)."""
    node = OmegaConf.to_container(cfg.analysis.dynamics, resolve=True)
    unknown = sorted(set(node) - KEYS)
    if unknown:
        raise ValueError(f"analysis.dynamics: unknown key(s) {unknown}; accepted: {sorted(KEYS)}")
    k = int(cfg.num_models)
    if k < MIN_MODELS:
        raise ValueError(
            f"num_models={k}: the dynamics analysis needs at least {MIN_MODELS} models (each record's TPR and FPR "
            "are shares of its IN and OUT models; the paper uses about 16-20)"
        )
    final = int(cfg.train.epochs)

    epochs = node.get("epochs")
    if epochs is not None:
        if not isinstance(epochs, list) or not epochs:
            raise _bad("epochs", epochs, "expected a non-empty list of epochs, or null to use `every`")
        bad = [e for e in epochs if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e <= final]
        if bad:
            raise _bad("epochs", epochs, f"epochs must be ints in 0..train.epochs={final} (0 = before training)")
        record = set(epochs)
    else:
        every = _int("every", node.get("every", 5), 1)
        if every > final:
            raise _bad("every", every, f"expected 1..train.epochs={final}")
        record = set(range(every, final + 1, every))
    if node.get("initial", False):
        record.add(0)
    record.add(final)
    record_epochs = sorted(record)
    if len(record_epochs) < 2:
        raise ValueError(
            f"analysis.dynamics: records only epoch(s) {record_epochs}; transitions need at least two checkpoints "
            "(set analysis.dynamics.every or analysis.dynamics.epochs)"
        )

    queries = node.get("queries", "identity")
    if queries not in QUERIES:
        raise _bad("queries", queries, f"expected one of {list(QUERIES)}")
    dtype = node.get("dtype", "float16")
    if dtype not in DTYPES:
        raise _bad("dtype", dtype, f"expected one of {list(DTYPES)}")
    fpr = node.get("fpr", 0.05)
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 < fpr < 1.0:
        raise _bad("fpr", fpr, "expected a float in (0, 1), e.g. 0.05")
    edges = check_edges(node.get("edges", [1 / 3, 2 / 3]))
    bins = _int("entropy_bins", node.get("entropy_bins", 10), 2)
    early = node.get("early_fraction", 0.375)
    if isinstance(early, bool) or not isinstance(early, (int, float)) or not 0.0 < early <= 1.0:
        raise _bad("early_fraction", early, "expected a fraction of training in (0, 1]")

    plot = node.get("plot_epochs")
    if plot is None:
        n = len(record_epochs)
        plot = sorted({record_epochs[i] for i in (0, n // 3, (2 * n) // 3, n - 1)})
    elif not isinstance(plot, list) or not plot or any(e not in record_epochs for e in plot):
        raise _bad("plot_epochs", plot, f"expected a non-empty list of recorded epochs {record_epochs}")

    attack = node.get("attack") or {"_target_": "mia_bench.attacks.lira.LiRA", "online": True}
    if not isinstance(attack, dict) or "_target_" not in attack:
        raise _bad("attack", attack, "expected a _target_ node of an Attack (default mia_bench.attacks.lira.LiRA)")

    hard = node.get("hardness") or {}
    unknown = sorted(set(hard) - HARDNESS_KEYS)
    if unknown:
        raise ValueError(f"analysis.dynamics.hardness: unknown key(s) {unknown}; accepted: {sorted(HARDNESS_KEYS)}")
    models = hard.get("models", "all")
    if models not in MODEL_SELECTIONS:
        raise _bad("hardness.models", models, f"expected one of {list(MODEL_SELECTIONS)}")
    mc = _int("hardness.mc_dropout", hard.get("mc_dropout", 0), 0)
    if mc == 1:
        raise _bad("hardness.mc_dropout", mc, "expected 0 (off) or at least 2 stochastic passes")
    dropout = float((cfg.get("model") or {}).get("dropout", 0.0) or 0.0)
    if mc > 0 and dropout <= 0:
        raise ValueError(
            f"analysis.dynamics.hardness.mc_dropout={mc} needs a model with dropout > 0, but model.dropout={dropout}: "
            "set model.dropout (e.g. 0.2) or defense=dropout, or mc_dropout=0"
        )
    return DynamicsConfig(
        record_epochs=record_epochs,
        final_epoch=final,
        queries=queries,
        dtype=dtype,
        batch_size=_int("batch_size", node.get("batch_size", 1024), 1),
        attack=attack,
        fpr=float(fpr),
        edges=edges,
        entropy_bins=bins,
        plot_epochs=[int(e) for e in plot],
        early_fraction=float(early),
        hardness_models=models,
        grad_norm=bool(hard.get("grad_norm", True)),
        grad_batch_size=_int("hardness.grad_batch_size", hard.get("grad_batch_size", 128), 1),
        mc_dropout=mc,
    )


def recording_settings(cfg: DictConfig) -> dict:
    """What the recorder's artifacts depend on beyond the model's own recipe: for the model cache's key, so that
    changing an analysis-only setting (fpr, edges, attack, plots) reuses the cached models and their snapshots,
    while changing what is recorded (epochs, queries, dtype, hardness passes, or the scored records: the null
    test scores a different half) trains again."""
    dc = parse(cfg)
    return {
        "record_epochs": dc.record_epochs,
        "queries": dc.queries,
        "dtype": dc.dtype,
        "grad_norm": dc.grad_norm,
        "mc_dropout": dc.mc_dropout,
        "null_test": bool(cfg.get("evaluation", {}).get("null_test", False)),
    }

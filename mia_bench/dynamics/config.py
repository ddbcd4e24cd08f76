"""``analysis.dynamics`` settings: a structured config (types and unknown keys checked by OmegaConf, ranges here),
and the checks against the run, both before any model trains (a bad value fails in seconds, not hours)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mia_bench.dynamics.hardness import MODEL_SELECTIONS
from mia_bench.dynamics.vulnerability import check_edges

QUERIES = ("identity", "run")
DTYPES = ("float16", "float32")
#: Fewer models leave too few IN/OUT references per record for LiRA and per-record rates in steps of 1/2.
MIN_MODELS = 4
PREFIX = "analysis.dynamics"


def _bad(key: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"{PREFIX}.{key}={value!r}: {accepted}")


@dataclass
class HardnessSettings:
    models: str = "all"  # all | out | in: the models a record's hardness is measured on
    grad_norm: bool = True  # per-sample gradient norm of the final models
    grad_batch_size: int = 128
    mc_dropout: int = 0  # MC-dropout passes per final model (0 = off)

    def __post_init__(self) -> None:
        if self.models not in MODEL_SELECTIONS:
            raise _bad("hardness.models", self.models, f"expected one of {list(MODEL_SELECTIONS)}")
        if self.grad_batch_size < 1:
            raise _bad("hardness.grad_batch_size", self.grad_batch_size, "expected an int >= 1")
        if self.mc_dropout < 0 or self.mc_dropout == 1:
            raise _bad("hardness.mc_dropout", self.mc_dropout, "expected 0 (off) or at least 2 stochastic passes")


@dataclass
class DynamicsSettings:
    """What ``conf/analysis/dynamics.yaml`` documents, key by key."""

    epochs: list[int] | None = None
    every: int = 5
    initial: bool = False
    queries: str = "identity"
    dtype: str = "float16"
    batch_size: int = 1024
    attack: dict[str, Any] = field(default_factory=lambda: {"_target_": "mia_bench.attacks.lira.LiRA", "online": True})
    fpr: float = 0.05
    edges: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    entropy_bins: int = 10
    plot_epochs: list[int] | None = None
    early_fraction: float = 0.375
    hardness: HardnessSettings = field(default_factory=HardnessSettings)

    def __post_init__(self) -> None:
        if self.epochs is not None and not self.epochs:
            raise _bad("epochs", self.epochs, "expected a non-empty list of epochs, or null to use `every`")
        for key, lo in (("every", 1), ("batch_size", 1), ("entropy_bins", 2)):
            if getattr(self, key) < lo:
                raise _bad(key, getattr(self, key), f"expected an int >= {lo}")
        if self.queries not in QUERIES:
            raise _bad("queries", self.queries, f"expected one of {list(QUERIES)}")
        if self.dtype not in DTYPES:
            raise _bad("dtype", self.dtype, f"expected one of {list(DTYPES)}")
        if not 0.0 < self.fpr < 1.0:
            raise _bad("fpr", self.fpr, "expected a float in (0, 1), e.g. 0.05")
        if not 0.0 < self.early_fraction <= 1.0:
            raise _bad("early_fraction", self.early_fraction, "expected a fraction of training in (0, 1]")
        if "_target_" not in self.attack:
            raise _bad("attack", self.attack, "expected a _target_ node of an Attack, e.g. LiRA")
        self.edges = check_edges(self.edges)

    @classmethod
    def parse(cls, settings: dict[str, Any]) -> DynamicsSettings:
        """Settings from the config node's keys; errors name the key, the value and what is accepted."""
        try:
            merged = OmegaConf.merge(OmegaConf.structured(cls), settings)
            return OmegaConf.to_object(merged)
        except ConfigKeyError as err:
            known = sorted(f.name for f in fields(cls))
            raise ValueError(f"{PREFIX}: unknown key {err.key!r} ({err.full_key}); accepted: {known}") from None
        except OmegaConfBaseException as err:
            raise ValueError(f"{PREFIX}.{err.full_key}={err.value!r}: {err.msg}") from None


def record_epochs(s: DynamicsSettings, train_epochs: int) -> list[int]:
    """The sorted epochs to snapshot (0 = before training); the last is always the final epoch."""
    final = int(train_epochs)
    if s.epochs is not None:
        if any(not 0 <= e <= final for e in s.epochs):
            raise _bad("epochs", s.epochs, f"epochs must be ints in 0..train.epochs={final} (0 = before training)")
        record = set(s.epochs)
    else:
        if s.every > final:
            raise _bad("every", s.every, f"expected 1..train.epochs={final}")
        record = set(range(s.every, final + 1, s.every))
    if s.initial:
        record.add(0)
    record.add(final)
    if len(record) < 2:
        raise ValueError(
            f"{PREFIX}: records only epoch(s) {sorted(record)}; transitions need at least two checkpoints "
            f"(set {PREFIX}.every or {PREFIX}.epochs)"
        )
    return sorted(record)


def plot_epochs(s: DynamicsSettings, recorded: list[int]) -> list[int]:
    """The recorded epochs drawn side by side: as set, or the first, ~1/3, ~2/3 and final."""
    if s.plot_epochs is None:
        n = len(recorded)
        return sorted({recorded[i] for i in (0, n // 3, (2 * n) // 3, n - 1)})
    if not s.plot_epochs or any(e not in recorded for e in s.plot_epochs):
        raise _bad("plot_epochs", s.plot_epochs, f"expected a non-empty list of recorded epochs {recorded}")
    return list(s.plot_epochs)


def check_run(s: DynamicsSettings, num_models: int, model_dropout: float) -> None:
    """The settings against the run: enough models, dropout for MC dropout."""
    if num_models < MIN_MODELS:
        raise ValueError(
            f"num_models={num_models}: the dynamics analysis needs at least {MIN_MODELS} models (each record's TPR "
            "and FPR are shares of its IN and OUT models; the paper uses about 16-20)"
        )
    if s.hardness.mc_dropout > 0 and model_dropout <= 0:
        raise ValueError(
            f"{PREFIX}.hardness.mc_dropout={s.hardness.mc_dropout} needs a model with dropout > 0, but "
            f"model.dropout={model_dropout}: set model.dropout (e.g. 0.2) or defense=dropout, or mc_dropout=0"
        )

"""The run-level settings of the config, checked before any data loads or model trains: a bad value fails in a
second with a message naming the key, the value and what is accepted. The components (attacks, defenses, loaders)
check their own arguments when they are built, also before training."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from mia_bench.attacks.settings import CI_METHODS, resolve_targets


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
    """Every setting of :data:`CHECKS`, the paired scheme's even K and the targets, against ``cfg``."""
    for key, (ok, accepted) in CHECKS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if not ok(value):
            raise ValueError(f"{key}={value!r}: expected {accepted}")
    if cfg.membership.scheme == "paired" and cfg.num_models % 2:
        raise ValueError(f"num_models={cfg.num_models}: the paired mask scheme needs an even number of models "
                         "(or membership.scheme=bernoulli)")
    resolve_targets(cfg.evaluation.targets, cfg.num_models)

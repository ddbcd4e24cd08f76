"""The run-level settings of the config, checked before any data loads or model trains: a bad value fails in a
second with a message naming the key, the value and what is accepted. The components (attacks, defenses, loaders)
check their own arguments when they are built, also before training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------- overrides
#: Nodes that take keys of the user's own besides those with a ``_target_`` (whose constructor checks its keys).
FREE_NODES = ("callbacks", "hydra")


def _flat_values(value) -> list:
    """The option names a group override selects: a name, a list of names, or a sweep of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for item in value for v in _flat_values(item)]
    if hasattr(value, "list"):  # a ChoiceSweep (defense=none,dropout)
        return _flat_values(value.list)
    return []  # a glob or a range: Hydra expands and checks it


def _suggest(name: str, known) -> str:
    from difflib import get_close_matches

    close = get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def group_options(config_dir: Path) -> dict[str, list[str]]:
    """The config tree's groups and their options (``attack`` also has the registered bundles ``all`` and
    ``fast``); Hydra's own groups (``hydra/...``) are left to Hydra."""
    from mia_bench.config import BUNDLES

    groups = {}
    for folder in sorted(p for p in Path(config_dir).rglob("*") if p.is_dir()):
        name = folder.relative_to(config_dir).as_posix()
        if name.startswith("hydra") or name.startswith("__"):
            continue
        groups[name] = sorted(p.stem for p in folder.glob("*.yaml"))
    groups.setdefault("attack", []).extend(BUNDLES)
    return groups


def check_overrides(overrides: Sequence[str], config_dir: Path | None = None) -> None:
    """Every group option an override names exists (inside a list or a sweep too), and every key it sets exists
    or may be added there, before anything is composed or imported: a typo fails naming the value, what is known
    there and the closest name. A key added with ``+`` must sit under a node with a ``_target_`` (a constructor,
    which checks its own arguments: a model's, an optimizer's, the Trainer's) or under ``callbacks``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mia_bench.config import CONFIG_DIR, compose

    config_dir = Path(config_dir or CONFIG_DIR)
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    groups = group_options(config_dir)
    chosen = []
    for o in parsed:
        if o.key_or_group.startswith("hydra/") and isinstance(o.value(), str):
            chosen.append(f"{o.key_or_group}={o.value()}")  # Hydra's own groups: a launcher may add keys (gpus)
        if o.key_or_group in groups:
            known = groups[o.key_or_group]
            for name in _flat_values(o.value()):
                if name is not None and str(name) not in known and str(name) != "null":
                    raise ValueError(f"{o.key_or_group}={name}: no such option; {_suggest(name, known)}the options "
                                     f"are {', '.join(known)} (mia_bench/conf/{o.key_or_group}/)")
            value = o.value().list[0] if o.is_sweep_override() and hasattr(o.value(), "list") else o.value()
            if isinstance(value, str):  # the group's option the keys are checked against (a sweep's first)
                chosen.append(f"{o.key_or_group}={value}")
    keys = [o for o in parsed if o.key_or_group not in groups and "/" not in o.key_or_group
            and not o.key_or_group.startswith("hydra")]
    if keys:
        _check_keys(compose(chosen, config_dir=config_dir, strict=False), keys)


def _check_keys(base: DictConfig, keys) -> None:
    """Each overridden key exists in ``base`` (the config its groups compose), or may be added where it is."""
    missing = object()
    for o in keys:
        path = o.key_or_group
        if OmegaConf.select(base, path, default=missing, throw_on_missing=False) is not missing:
            continue
        parts = path.split(".")
        parent, depth = base, 0
        while depth < len(parts) - 1 and isinstance(parent, DictConfig) and parts[depth] in parent:
            parent, depth = parent[parts[depth]], depth + 1
        where = ".".join(parts[:depth])
        free = any(path == n or path.startswith(n + ".") for n in FREE_NODES)
        if (o.is_add() or o.is_force_add()) and (free or (isinstance(parent, DictConfig) and "_target_" in parent)):
            continue
        known = list(parent.keys()) if isinstance(parent, DictConfig) else []
        plus = "" if o.is_add() else " (+key adds a key only under a constructor's node, e.g. +model.width=64)"
        raise ValueError(f"{path}: no such key{' in ' + where if where else ''}; {_suggest(parts[depth], known)}"
                         f"the keys there are {', '.join(map(str, known))}{plus}")


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """After composing: every key added with ``+`` sits under a constructor's node (or ``callbacks``), so a
    misspelt key (``+num_model=8``) is refused instead of running with the default beside it. Cheap: no second
    composition (:func:`check_overrides` gives the full message, with the keys known where it was added)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    adds = [o for o in overrides if o.startswith("+") and not o.startswith("++") and "=" in o]
    for o in OverridesParser.create().parse_overrides(adds):
        path = o.key_or_group
        if "/" in path or o.key_or_group in _groups_of(cfg) or any(
                path == n or path.startswith(n + ".") for n in FREE_NODES):
            continue
        parts, node, targeted = path.split("."), cfg, False
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, DictConfig) else None
            targeted = targeted or (isinstance(node, DictConfig) and "_target_" in node)
        if not targeted:
            check_overrides(overrides)  # names the key, where it was added and the closest known one
            raise ValueError(f"{path}: no such key (+key adds a key only under a constructor's node)")


def _groups_of(cfg: DictConfig) -> set[str]:
    from mia_bench.config import CONFIG_DIR

    return set(group_options(CONFIG_DIR))

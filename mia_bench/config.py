"""The config tree and how it is composed, for the command line and for Python alike.

The YAML files live in ``mia_bench/conf`` so that a wheel carries them (the repository's top-level ``conf/`` is a
link to that folder, where users of Hydra projects look for it). Two things are derived from the files rather
than kept by hand beside them:

* which groups accept ``+group=option``: Hydra takes ``group=x`` for a group in the defaults list and rejects
  ``+group=x`` there ("Multiple values for ..."), while it requires ``+group=x`` for a group outside the list.
  Users know both spellings from other Hydra tools (``python -m mia_bench +defense=adamixup +dataset=cifar10``),
  so ``+group=x`` is rewritten to ``group=x`` for every group of the primary config's defaults list and of
  Hydra's own (``hydra/launcher``, ``hydra/sweeper``, ...);
* the attack bundles ``all`` and ``fast``: every ``attack/<name>.yaml`` that defines one attack, registered in
  Hydra's ConfigStore when this module is imported, so a new attack needs only its class and its YAML.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
CONFIG_NAME = "config"

#: Attack bundles registered from the attack files: name -> (what it holds, attacks left out).
BUNDLES = {
    "all": ("every attack of the benchmark", ()),
    "fast": ("every attack except the shadow-model classifier, the only one that trains a model per target",
             ("shadow_model",)),
}


# ------------------------------------------------------------------------------------------------ groups
def _group_of(entry: Any) -> str | None:
    """The group a defaults-list entry selects (``dataset: digits`` -> dataset), None for ``_self_`` / a config."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return None
    words = str(next(iter(entry))).split("@", 1)[0].split()
    if len(words) == 2 and words[0] in ("optional", "override"):
        return words[1]
    return words[0] if len(words) == 1 else None


@lru_cache(maxsize=1)
def default_groups() -> frozenset[str]:
    """Groups in the primary config's defaults list and in Hydra's own (as ``hydra/<group>``)."""
    from hydra.conf import HydraConf

    primary = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{CONFIG_NAME}.yaml"))
    groups = {g for g in map(_group_of, primary.get("defaults", [])) if g}
    groups |= {f"hydra/{g}" for g in map(_group_of, HydraConf().defaults) if g}
    return frozenset(groups)


def normalize_overrides(overrides: Iterable[str]) -> list[str]:
    """``+group=x`` -> ``group=x`` for the groups of :func:`default_groups`; everything else unchanged."""
    out = []
    for arg in overrides:
        if arg.startswith("+") and not arg.startswith("++") and arg[1:].split("=", 1)[0] in default_groups():
            arg = arg[1:]
        out.append(arg)
    return out


# ------------------------------------------------------------------------------------------------ attacks
def attack_configs(config_dir: Path = CONFIG_DIR) -> dict[str, DictConfig]:
    """Every single-attack file of the ``attack`` group: name -> its node (``_target_`` and arguments), by name.

    A single-attack file holds one top-level key named like the file with a ``_target_``; bundles (files with a
    ``defaults`` list, such as ``lira`` and ``threshold``) are not attacks themselves."""
    out = {}
    for path in sorted((config_dir / "attack").glob("*.yaml")):
        node = OmegaConf.load(path)
        if isinstance(node, DictConfig) and "defaults" not in node and list(node) == [path.stem]:
            if isinstance(node[path.stem], DictConfig) and "_target_" in node[path.stem]:
                out[path.stem] = node[path.stem]
    return out


def register_bundles(config_dir: Path = CONFIG_DIR) -> None:
    """Register the attack bundles of :data:`BUNDLES` in Hydra's ConfigStore (``attack=all``, ``attack=fast``)."""
    from hydra.core.config_store import ConfigStore

    names = list(attack_configs(config_dir))
    for bundle, (_, left_out) in BUNDLES.items():
        members = [n for n in names if n not in left_out]
        ConfigStore.instance().store(group="attack", name=bundle, node={"defaults": [*members, "_self_"]})


# ------------------------------------------------------------------------------------------------ resolvers
#: Longest overrides part of a multirun job folder's name (file systems allow 255 bytes per name).
DIRNAME_LIMIT = 64


def short_dirname(overrides: str, limit: int = DIRNAME_LIMIT) -> str:
    """A job folder's overrides part: as Hydra writes it when short, else cut with a digest of the whole, so names
    stay short, stable and distinct (the full overrides stay in the job's .hydra/overrides.yaml and config)."""
    text = overrides.replace("/", "_")
    if len(text) <= limit:
        return text
    return f"{text[: limit - 9]}~{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    """The resolvers the config tree uses: ``${mia_bench.gpu_count:}``, ``${mia_bench.gpu_jobs:<per GPU>}`` (the
    ``gpus`` launcher), ``${mia_bench.pid:}`` (run folders: two runs started in the same second get distinct ones),
    ``${mia_bench.dirname:<overrides>}`` (multirun job folders) and ``${mia_bench.anchor:<path>}`` (data and cache
    paths relative to where the command was started)."""
    from mia_bench.gpu_pool import gpu_count, jobs_per_gpu
    from mia_bench.paths import anchored

    resolvers = {
        "mia_bench.gpu_count": gpu_count,
        "mia_bench.gpu_jobs": lambda per=None: gpu_count() * jobs_per_gpu(per),
        "mia_bench.pid": os.getpid,
        "mia_bench.dirname": short_dirname,
        "mia_bench.anchor": anchored,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "mia_bench.pid")


def build_attack(name: str, **overrides):
    """An attack by its config name, with its config file's arguments and ``overrides``, e.g.
    ``build_attack("lira_offline", estimator="mean")``."""
    from hydra.utils import instantiate

    configs = attack_configs()
    if name not in configs:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(configs)}")
    return instantiate(OmegaConf.merge(configs[name], overrides))


# ------------------------------------------------------------------------------------------------ compose
def compose(
    overrides: Sequence[str] = (), *, return_hydra_config: bool = False, config_dir: Path = CONFIG_DIR
) -> DictConfig:
    """The config ``python -m mia_bench <overrides>`` would run, composed from Python (both ``+group=x`` and
    ``group=x`` spellings). Leaves Hydra's global state as it found it (safe inside a running Hydra app).
    ``config_dir``: another config tree of the same shape (e.g. a copy with your own attack files)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(
                CONFIG_NAME, overrides=normalize_overrides(overrides), return_hydra_config=return_hydra_config
            )
    finally:
        restore_gh_from_backup(backup)


register_bundles()
register_resolvers()

"""The config tree and how it is composed, for the command line and for Python alike.

The YAML files live in ``mia_bench/conf`` so that a wheel carries them (the repository's top-level ``conf/`` is a
link to that folder, where users of Hydra projects look for it). Two things are derived from the files rather
than kept by hand beside them:

* which groups accept ``+group=option``: Hydra takes ``group=x`` for a group in the defaults list and rejects
  ``+group=x`` there ("Multiple values for ..."), while it requires ``+group=x`` for a group outside the list.
  Users know both spellings from other Hydra tools (``python -m mia_bench +defense=adamixup +dataset=cifar10``),
  so ``+group=x`` is rewritten to ``group=x`` for every group of the primary config's defaults list and of
  Hydra's own (``hydra/launcher``, ``hydra/sweeper``, ...);
* the attack bundles ``all`` and ``fast``: every ``attack/<name>.yaml`` that defines one attack, stored in
  Hydra's ConfigStore by :func:`register`, so a new attack needs only its class and its YAML.

Nothing is registered on import: :func:`register` (the resolvers and those bundles) is called by :func:`compose`
and by the command line before Hydra composes; call it yourself before composing the tree with Hydra's own API
(``hydra.initialize_config_module("mia_bench.conf")``, ``@hydra.main``). Multirun jobs get both from the
launching process: Hydra's joblib and submitit launchers hand every job the launcher's resolvers and ConfigStore.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
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
# How the files of conf/attack say what they are: by their package header, the ``# @package`` first line where
# Hydra itself reads where a file's content goes. A single attack puts its node at ``attack.<its name>``
# (``# @package attack.lira_online``); a bundle fills the whole group (``# @package attack``) with the attacks its
# defaults list names. Why the header and not a key or a sub-folder: a bundle's content *is* cfg.attack, so any
# key it carried would turn up there as one more "attack", and a sub-folder would rename the option
# (attack=lira -> attack=bundles/lira). Why attacks carry the header rather than a top-level key named like the
# file: a header-placed node can be reused under another name, so a variant is the file it starts from plus the
# keys it changes (``defaults: [lira_online@_here_, _self_]`` then ``online: false``), as in lira_offline.yaml.
ATTACK_GROUP = "attack"
_HEADER_LINE = re.compile(r"^\s*#\s*@")


def _package_header(path: Path) -> str | None:
    """The package of a config file's ``# @package <package>`` header line, None without one. Hydra reads the
    header from the file's first non-empty lines, up to the first that is not a ``# @key value`` line."""
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if not _HEADER_LINE.match(line):
            return None
        words = line.strip().lstrip("#").split()
        if len(words) == 2 and words[0] == "@package":
            return words[1]
    return None


def _is_keyed_attack(path: Path) -> bool:
    """The older single-attack form, still read: no header, one top-level key named like the file, a
    ``_target_`` under it and no defaults list."""
    node = OmegaConf.load(path)
    return (isinstance(node, DictConfig) and list(node) == [path.stem] and isinstance(node[path.stem], DictConfig)
            and "_target_" in node[path.stem])


def attack_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The single attacks of the ``attack`` group, by name: its files with the header ``# @package
    attack.<file name>`` (or the older keyed form, see :func:`_is_keyed_attack`). Bundles (``# @package attack``)
    are not attacks; a file that is neither is an error, so that no attack silently misses ``attack=all``."""
    names = []
    for path in sorted((Path(config_dir) / ATTACK_GROUP).glob("*.yaml")):
        header = _package_header(path)
        if header == f"{ATTACK_GROUP}.{path.stem}" or (header is None and _is_keyed_attack(path)):
            names.append(path.stem)
        elif header != ATTACK_GROUP:
            raise ValueError(
                f"{path}: begin it with '# @package {ATTACK_GROUP}.{path.stem}' (one attack) or "
                f"'# @package {ATTACK_GROUP}' (a bundle of attacks named in its defaults list)")
    return names


def attack_configs(config_dir: Path = CONFIG_DIR) -> dict[str, DictConfig]:
    """Every single attack of the ``attack`` group: name -> its node (``_target_`` and arguments) as
    ``attack=<name>`` composes it, a variant merged with the file it starts from; by name."""
    folder = Path(config_dir).resolve() / ATTACK_GROUP
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.glob("*.yaml")))
    return {name: copy.deepcopy(node) for name, node in _composed_attacks(folder.parent, stamp).items()}


@lru_cache(maxsize=8)
def _composed_attacks(config_dir: Path, stamp: tuple) -> dict[str, DictConfig]:
    """:func:`attack_configs` of one state of the attack files (``stamp``: their names, times and sizes)."""
    names = attack_names(config_dir)
    if not names:
        return {}
    node = compose([f"{ATTACK_GROUP}=[{','.join(names)}]"], config_dir=config_dir)[ATTACK_GROUP]
    return {name: node[name] for name in names}


def _store_bundles(config_dir: Path = CONFIG_DIR) -> None:
    """Store the attack bundles of :data:`BUNDLES` in Hydra's ConfigStore (``attack=all``, ``attack=fast``)."""
    from hydra.core.config_store import ConfigStore

    names = attack_names(config_dir)
    for bundle, (_, left_out) in BUNDLES.items():
        members = [n for n in names if n not in left_out]
        ConfigStore.instance().store(group=ATTACK_GROUP, name=bundle, node={"defaults": [*members, "_self_"]})


def _stored_bundles() -> dict[str, Any]:
    """The ConfigStore's entries for the bundles of :data:`BUNDLES` (None where absent), to put back later."""
    from hydra.core.config_store import ConfigStore

    group = ConfigStore.instance().repo.get(ATTACK_GROUP, {})
    return {f"{b}.yaml": group.get(f"{b}.yaml") for b in BUNDLES}


def _restore_bundles(saved: dict[str, Any]) -> None:
    from hydra.core.config_store import ConfigStore

    group = ConfigStore.instance().repo.setdefault(ATTACK_GROUP, {})
    for key, node in saved.items():
        if node is None:
            group.pop(key, None)
        else:
            group[key] = node


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


def _register_resolvers() -> None:
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


def register(config_dir: Path = CONFIG_DIR) -> None:
    """Register what the config tree needs before Hydra composes or resolves it: the ``${mia_bench.*}`` resolvers
    and the attack bundles ``all`` and ``fast`` of ``config_dir``'s attack files. Idempotent: call it as often as
    you like (the bundles are stored again, from the files as they are now)."""
    _register_resolvers()
    _store_bundles(config_dir)


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
    overrides: Sequence[str] = (), *, return_hydra_config: bool = False, config_dir: Path = CONFIG_DIR,
    strict: bool = True,
) -> DictConfig:
    """The config ``python -m mia_bench <overrides>`` would run, composed from Python (both ``+group=x`` and
    ``group=x`` spellings). Calls :func:`register` for ``config_dir`` first, and leaves Hydra's global state (its
    ConfigStore's bundles included) as it found it, safe inside a running Hydra app; the resolvers stay registered.
    ``config_dir``: another config tree of the same shape (e.g. a copy with your own attack files). ``strict``: a
    misspelt option or key (also one added with ``+`` outside a constructor's node) raises a ValueError naming it,
    what is known there and the closest name (:mod:`mia_bench.validation`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    overrides = normalize_overrides(overrides)
    backup, bundles = get_gh_backup(), _stored_bundles()
    register(config_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).absolute()), version_base="1.3"):
            cfg = hydra_compose(CONFIG_NAME, overrides=overrides, return_hydra_config=return_hydra_config)
    except HydraException:  # a misspelt option or key: our message names it, what is known and the closest name
        if strict:
            check_overrides(overrides, config_dir)
        raise
    finally:
        restore_gh_from_backup(backup)
        _restore_bundles(bundles)
    if strict:
        check_added_keys(cfg, overrides)
    return cfg


# ------------------------------------------------------------------------------------------------ overrides
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
    return set(group_options(CONFIG_DIR))

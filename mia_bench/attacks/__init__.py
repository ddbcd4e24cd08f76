"""Membership-inference attacks: every one maps the signals file to one score per record for a target model.

``ATTACKS`` maps the names used by ``conf/attack/*.yaml`` to constructors (the class, or the class with the
variant's arguments bound); ``build_attack(name, **overrides)`` makes an instance. The config files are the
source of truth for what a run uses; ``tests/test_attacks.py`` checks that both agree.
"""

from __future__ import annotations

from functools import partial

from mia_bench.attacks.base import Attack
from mia_bench.attacks.label_only import LabelOnlyAttack
from mia_bench.attacks.lira import LiRA
from mia_bench.attacks.rmia import RMIA
from mia_bench.attacks.shadow import ShadowModelAttack
from mia_bench.attacks.threshold import ConfidenceAttack, EntropyAttack, LossAttack, ModifiedEntropyAttack

ATTACKS = {
    "loss": LossAttack,
    "confidence": ConfidenceAttack,
    "entropy": EntropyAttack,
    "modified_entropy": ModifiedEntropyAttack,
    "shadow_model": ShadowModelAttack,
    "lira_online": partial(LiRA, online=True, fix_variance=False),
    "lira_offline": partial(LiRA, online=False, fix_variance=False),
    "lira_online_fixed_var": partial(LiRA, online=True, fix_variance=True),
    "lira_offline_fixed_var": partial(LiRA, online=False, fix_variance=True),
    "rmia": partial(RMIA, offline=False),
    "rmia_offline": partial(RMIA, offline=True),
    "label_only": LabelOnlyAttack,
}


def build_attack(name: str, **overrides) -> Attack:
    """An attack by its config name, e.g. ``build_attack("lira_offline", estimator="mean")``."""
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    return ATTACKS[name](**overrides)


__all__ = [
    "ATTACKS", "Attack", "build_attack", "ConfidenceAttack", "EntropyAttack", "LabelOnlyAttack", "LiRA",
    "LossAttack", "ModifiedEntropyAttack", "RMIA", "ShadowModelAttack",
]

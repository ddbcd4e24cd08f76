"""Membership-inference attacks: every one maps the signals to one score per record for a target model.

Each attack is a class here and a ``conf/attack/<name>.yaml`` that names it with its arguments; the config files
are the list of attacks (``attack=all`` is every one of them, :mod:`mia_bench.config`).
"""

from mia_bench.attacks.base import Attack
from mia_bench.attacks.label_only import LabelOnlyAttack
from mia_bench.attacks.lira import LiRA
from mia_bench.attacks.rmia import RMIA
from mia_bench.attacks.shadow import ShadowModelAttack
from mia_bench.attacks.threshold import ConfidenceAttack, EntropyAttack, LossAttack, ModifiedEntropyAttack

__all__ = [
    "Attack", "ConfidenceAttack", "EntropyAttack", "LabelOnlyAttack", "LiRA", "LossAttack", "ModifiedEntropyAttack",
    "RMIA", "ShadowModelAttack",
]

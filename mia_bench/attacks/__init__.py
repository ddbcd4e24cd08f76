"""Membership-inference attacks: every one maps the signals to one score per record for a target model.

Each attack is a class here and a ``conf/attack/<name>.yaml`` that names it with its arguments; the config files
are the list of attacks (``attack=all`` is every one of them, :mod:`mia_bench.config`).
"""

__all__ = [
    "Attack", "ConfidenceAttack", "EntropyAttack", "LabelOnlyAttack", "LiRA", "LossAttack", "ModifiedEntropyAttack",
    "RMIA", "ShadowModelAttack",
]
_HOMES = {"Attack": "base", "LabelOnlyAttack": "label_only", "LiRA": "lira", "RMIA": "rmia",
          "ShadowModelAttack": "shadow", "ConfidenceAttack": "threshold", "EntropyAttack": "threshold",
          "LossAttack": "threshold", "ModifiedEntropyAttack": "threshold"}


def __getattr__(name: str):
    """The attack classes on first use, so that importing a light submodule (``attacks.settings``) stays light."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"mia_bench.attacks.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'mia_bench.attacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

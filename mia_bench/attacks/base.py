"""The attack interface: one membership score per population record for one target model.

Every attack is an evaluation module over :class:`~mia_bench.signals.Signals` (never over training code).
``score(signals, target, reference)`` returns a float64 vector ``[N]``, **higher = more likely a member**.
``reference`` holds the indices of the attacker's reference (shadow) models; their masks and signals are
known to the attacker, the target's mask is not. An attack with diagnostics about a call (e.g. how many records
fell back to a global estimate) implements ``score_with_diagnostics`` instead, which returns them with the scores;
the evaluator reads them from there (``diag_<name>`` in metrics.json). Attacks keep no state between calls.
"""

from __future__ import annotations

import numpy as np

from mia_bench.signals import Signals

#: Share of the scored records above which an attack that fell back to a weaker estimate for them is flagged.
FALLBACK_SHARE = 0.5


class Attack:
    """Subclasses implement :meth:`score`, or :meth:`score_with_diagnostics` when they have diagnostics."""

    name: str = "attack"
    needs_reference: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.score is Attack.score and cls.score_with_diagnostics is Attack.score_with_diagnostics:
            raise TypeError(f"{cls.__name__} must implement score() or score_with_diagnostics()")

    def score(self, signals: Signals, target: int, reference: np.ndarray) -> np.ndarray:
        """One score per population record for model ``target``; higher = more likely a member."""
        return self.score_with_diagnostics(signals, target, reference)[0]

    def score_with_diagnostics(self, signals: Signals, target: int,
                               reference: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The scores of :meth:`score` and a small dict of figures about how they were computed."""
        return self.score(signals, target, reference), {}

    def fallback_note(self, name: str, record: dict) -> str | None:
        """A warning when most records were scored by a weaker form of the attack than its name says, read off the
        evaluation's ``record`` (``diag_*`` means over targets, ``n_records``, ``n_reference``); None if not."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------------------ helpers for subclasses
    def check(self, signals: Signals, target: int, reference, min_reference: int = 0) -> np.ndarray:
        """Validate ``target`` and ``reference``; returns the reference indices as an int array."""
        k = signals.num_models
        if not 0 <= int(target) < k:
            raise ValueError(f"{self.name}: target {target} out of range for K={k} models")
        ref = np.asarray(reference if reference is not None else [], dtype=np.int64).reshape(-1)
        if ref.size and (ref.min() < 0 or ref.max() >= k):
            raise ValueError(f"{self.name}: reference indices {ref.tolist()} out of range for K={k} models")
        if int(target) in set(ref.tolist()):
            raise ValueError(f"{self.name}: the reference models {ref.tolist()} contain the target {target}")
        if np.unique(ref).size != ref.size:
            raise ValueError(f"{self.name}: duplicate reference models {ref.tolist()}")
        if ref.size < min_reference:
            raise ValueError(f"{self.name}: needs at least {min_reference} reference model(s); "
                             f"got {ref.size}")
        return ref

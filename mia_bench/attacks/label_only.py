"""Label-only attack (Choquette-Choo et al. 2021, data-augmentation variant).

The attacker sees only the predicted labels; the score is the fraction of the Q queries (the record itself,
q = 0, and its query augmentations) that the target classifies correctly. With Q = 1 this is the gap
attack (correct => member). The boundary-distance variant (adversarial perturbations) needs the model, not
the signals file, and is not part of this benchmark.
"""

from __future__ import annotations

import numpy as np

from mia_bench.attacks.base import Attack
from mia_bench.signals import Signals


class LabelOnlyAttack(Attack):
    name = "label_only"

    def score(self, signals: Signals, target: int, reference: np.ndarray | None = None) -> np.ndarray:
        self.check(signals, target, reference)
        return signals.correct[target].mean(axis=1, dtype=np.float64)

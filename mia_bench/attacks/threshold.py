"""Metric-based attacks on the un-augmented query (q = 0): loss, confidence, entropy, modified entropy.

* Loss (Yeom et al. 2018): score ``-loss``. Confidence: ``p_y``. Entropy: ``-entropy``. These need no
  reference model to *rank* records; the benchmark's attack accuracy still calibrates their threshold on a
  shadow model (see ``evaluate``).
* Modified entropy (Song & Mittal 2021): class-wise thresholds ``tau_c`` on ``mentr`` fitted on the
  reference models' records of class c (members = the models' IN records, non-members = OUT), then
  ``score = tau_y - mentr`` so that 0 is the class-wise decision boundary (``score >= 0`` => member).
  Following the authors' ``_thre_setting``, candidate thresholds are the observed values and the criterion is
  the balanced accuracy ``(TPR + TNR) / 2`` (``criterion: accuracy`` maximises plain accuracy instead).
"""

from __future__ import annotations

import numpy as np

from mia_bench.attacks.base import Attack
from mia_bench.metrics import best_threshold
from mia_bench.signals import Signals


class LossAttack(Attack):
    name = "loss"

    def score(self, signals: Signals, target: int, reference: np.ndarray | None = None) -> np.ndarray:
        self.check(signals, target, reference)
        return -signals.loss[target, :, 0]


class ConfidenceAttack(Attack):
    name = "confidence"

    def score(self, signals: Signals, target: int, reference: np.ndarray | None = None) -> np.ndarray:
        self.check(signals, target, reference)
        return signals.conf[target, :, 0].copy()


class EntropyAttack(Attack):
    name = "entropy"

    def score(self, signals: Signals, target: int, reference: np.ndarray | None = None) -> np.ndarray:
        self.check(signals, target, reference)
        return -signals.entropy[target, :, 0]


class ModifiedEntropyAttack(Attack):
    name = "modified_entropy"
    needs_reference = True

    def __init__(self, criterion: str = "balanced_accuracy") -> None:
        super().__init__()
        if criterion not in ("balanced_accuracy", "accuracy"):
            raise ValueError("modified_entropy: criterion must be 'balanced_accuracy' or 'accuracy'; "
                             f"got {criterion!r}")
        self.criterion = criterion

    def thresholds(self, signals: Signals, reference: np.ndarray) -> tuple[np.ndarray, int]:
        """Class-wise thresholds ``tau[c]`` on ``mentr`` (member iff ``mentr <= tau[c]``) from the references, and
        the number of classes that fell back.

        A class whose pooled reference records lack members or non-members falls back to the threshold fitted
        on all classes together (counted in the diagnostics' ``n_fallback_classes``)."""
        ref = np.asarray(reference, dtype=np.int64)
        values = -signals.mentr[ref, :, 0]                    # [R, N], higher = member
        member = signals.masks[ref]                           # [R, N]
        labels = signals.labels
        balanced = self.criterion == "balanced_accuracy"
        glob = -best_threshold(values.ravel(), member.ravel(), balanced=balanced)
        tau = np.full(signals.num_classes, glob)
        n_fallback = 0
        for c in range(signals.num_classes):                  # one vectorised fit per class
            cols = labels == c
            v, m = values[:, cols].ravel(), member[:, cols].ravel()
            if m.all() or not m.any():
                n_fallback += int(cols.any())
                continue
            tau[c] = -best_threshold(v, m, balanced=balanced)
        return tau, n_fallback

    def score_with_diagnostics(self, signals: Signals, target: int, reference: np.ndarray):
        ref = self.check(signals, target, reference, min_reference=1)
        tau, n_fallback = self.thresholds(signals, ref)
        return tau[signals.labels] - signals.mentr[target, :, 0], {"n_fallback_classes": n_fallback}

"""Shadow-model attack (Shokri et al. 2017): a classifier trained to tell shadow models' IN from OUT records.

Features of a (model, record) pair: the model's probability vector on the un-augmented query, sorted in
decreasing order and cut to the ``top_k`` largest entries (default: all classes, at most 10), as
log-probabilities (computed from the logits, so the resolution near p = 1, where members sit, is not lost
to float rounding), followed by the one-hot true label. Training rows are the reference (shadow) models'
(model, record) pairs, labelled by the known masks (IN = 1), subsampled to ``max_train_rows`` with a seeded
generator, keeping the natural IN/OUT proportion. Score = predicted member probability for the target's
records.

``per_class: true`` trains one classifier per class on that class's rows, as in the paper (the label feature
is then constant and dropped); the default shares one classifier across classes, with the label as an input,
which needs C times fewer rows per class to work well.

``classifier``: ``gbdt`` (sklearn ``HistGradientBoostingClassifier``, the default) or ``mlp`` (sklearn
``MLPClassifier`` with ``hidden`` units behind a ``StandardScaler``; Shokri et al. used small neural nets).
GBDT is the default because it is several times faster on CPU at 50k rows, insensitive to the scale of the
features (log-probabilities reach -1000 for confident models) and needs no convergence tuning; it uses
sklearn's defaults (100 iterations, early stopping on a 10% validation split above 10k rows).

``n_threads`` caps the OpenMP/BLAS threads of the classifier (threadpoolctl). The default 1 suits Hydra
multiruns that run cells in parallel; on a shared 2-core machine libgomp's busy-waiting made 2 threads 6-10x
slower than 1.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mia_bench.attacks.base import Attack
from mia_bench.signals import Signals


@dataclass(frozen=True)
class _Fit:
    """The last fit: for which signals (a weak reference: the attack must not keep them alive) and references."""

    signals: weakref.ref
    reference: bytes
    fitted: object
    rows: int


class ShadowModelAttack(Attack):
    name = "shadow_model"
    needs_reference = True

    def __init__(self, classifier: str = "gbdt", per_class: bool = False, top_k: int | None = None,
                 hidden: Sequence[int] = (64,), max_iter: int | None = None,
                 max_train_rows: int | None = 50000, seed: int = 0, n_threads: int | None = 1) -> None:
        super().__init__()
        if classifier not in ("gbdt", "mlp"):
            raise ValueError(f"shadow_model: classifier must be 'gbdt' or 'mlp'; got {classifier!r}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"shadow_model: top_k must be >= 1 or null; got {top_k}")
        self.classifier = classifier
        self.per_class = bool(per_class)
        self.top_k = None if top_k is None else int(top_k)
        self.hidden = tuple(int(h) for h in hidden)
        self.max_iter = None if max_iter is None else int(max_iter)
        self.max_train_rows = None if max_train_rows is None else int(max_train_rows)
        self.seed = int(seed)
        self.n_threads = None if n_threads is None else int(n_threads)

    def _make_classifier(self):
        if self.classifier == "gbdt":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(max_iter=self.max_iter or 100, random_state=self.seed)
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=self.hidden, max_iter=self.max_iter or 200, early_stopping=True,
            random_state=self.seed))

    def features(self, signals: Signals, models: np.ndarray, records: np.ndarray) -> np.ndarray:
        """Feature rows ``[M, k (+ C)]`` for (model, record) pairs given as two index arrays of length M."""
        z = signals.logits[models, records, 0].astype(np.float64)          # [M, C]
        m = z.max(1, keepdims=True)
        log_p = z - (m + np.log(np.exp(z - m).sum(1, keepdims=True)))
        k = min(signals.num_classes, self.top_k or 10)
        top = -np.sort(-log_p, axis=1)[:, :k]
        if self.per_class:
            return top
        onehot = np.zeros((records.size, signals.num_classes))
        onehot[np.arange(records.size), signals.labels[records]] = 1.0
        return np.hstack([top, onehot])

    def _fit(self, x_train: np.ndarray, y_train: np.ndarray):
        """A fitted classifier, or the member frequency (a float) when only one class is present."""
        if y_train.all() or not y_train.any():
            return float(y_train.mean()) if y_train.size else 0.5
        from threadpoolctl import threadpool_limits

        clf = self._make_classifier()  # imports sklearn first: threadpoolctl only limits libraries loaded
        with threadpool_limits(limits=self.n_threads):
            clf.fit(x_train, y_train)
        return clf

    def _predict(self, clf, x: np.ndarray) -> np.ndarray:
        if isinstance(clf, float):
            return np.full(x.shape[0], clf)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.n_threads):
            return clf.predict_proba(x)[:, 1]

    def fit(self, signals: Signals, reference: np.ndarray):
        """The attack classifier(s) trained on the reference models (one, or a dict class -> classifier) and the
        number of (model, record) rows they were trained on.

        The last fit is kept per (signals object, reference set): evaluate() scores a target and its
        calibration shadow against the same references, which then costs one fit instead of two."""
        ref = np.asarray(reference, dtype=np.int64)
        key = ref.tobytes()
        last = getattr(self, "_last_fit", None)
        if last is not None and last.signals() is signals and last.reference == key:
            return last.fitted, last.rows
        n = signals.num_records
        total = ref.size * n
        rng = np.random.default_rng(self.seed)
        rows = np.arange(total) if self.max_train_rows is None or total <= self.max_train_rows \
            else np.sort(rng.choice(total, size=self.max_train_rows, replace=False))
        models, records = ref[rows // n], rows % n
        x_train = self.features(signals, models, records)
        y_train = signals.masks[models, records]
        if self.per_class:                                                 # one classifier per class
            train_labels = signals.labels[records]
            fitted = {c: self._fit(x_train[train_labels == c], y_train[train_labels == c])
                      for c in range(signals.num_classes)}
        else:
            fitted = self._fit(x_train, y_train)
        self._last_fit = _Fit(weakref.ref(signals), key, fitted, int(rows.size))
        return fitted, int(rows.size)

    def score_with_diagnostics(self, signals: Signals, target: int, reference: np.ndarray):
        ref = self.check(signals, target, reference, min_reference=1)
        fitted, rows = self.fit(signals, ref)
        n = signals.num_records
        x_test = self.features(signals, np.full(n, target), np.arange(n))
        if not self.per_class:
            return self._predict(fitted, x_test), {"n_train_rows": rows}
        out = np.empty(n)
        for c, clf in fitted.items():
            te = signals.labels == c
            if te.any():
                out[te] = self._predict(clf, x_test[te])
        return out, {"n_train_rows": rows}

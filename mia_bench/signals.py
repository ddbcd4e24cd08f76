"""The signals file: raw logits of every model on every population record under every query augmentation.

Everything an attack needs is derived from ``logits[K, N, Q, C]`` (query ``q = 0`` is always the
un-augmented record), the labels ``[N]`` and the membership masks ``[K, N]``. The derived per-model,
per-record, per-query quantities are computed once, in float64, *from the logits* (never from stored
probabilities, which saturate at 1 for memorised records and would make ``phi`` and the modified entropy
infinite), and cached on the object.

Numerics. With ``L_i = logsumexp_{j != i} z_j`` (the leave-one-out log-sum-exp of the other logits):

* ``p_i = sigmoid(z_i - L_i)``, so ``log p_i = -log(1 + exp(L_i - z_i))`` and
  ``log(1 - p_i) = -log(1 + exp(z_i - L_i))`` (``np.logaddexp``): both keep full relative precision, from a
  loss of 1e-18 (``p_y`` rounds to 1 in float64) to a probability of ``e^-2000``;
* ``phi = log p_y - log(1 - p_y) = z_y - L_y`` (LiRA's logit-scaled confidence), finite for any finite logits.

``L_i`` is computed without an O(C^2) pass: with ``m1 = max z`` at ``a = argmax z`` and
``S = sum_j exp(z_j - m1) >= 1``, ``L_i = m1 + log(S - exp(z_i - m1))`` for ``i != a`` (the argument is >= 1,
so there is no cancellation to zero), and ``L_a`` is a log-sum-exp over the other C - 1 logits, shifted by
their own maximum.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mia_bench.atomic import atomic_writer

__all__ = ["Signals", "SignalsFileError", "derive", "make_synthetic_signals"]

# Float64 working memory per chunk of (model, record) rows when deriving signals. About nine temporaries of
# shape [rows, Q, C] are alive at once, so the peak is roughly 9x this budget (~150 MB).
_CHUNK_BYTES = 16 * 2**20

DERIVED = ("true_log_prob", "loss", "conf", "entropy", "mentr", "phi", "correct")


class SignalsFileError(ValueError):
    """A signals file that cannot be read back: corrupt, truncated, missing arrays or inconsistent shapes."""


@dataclass(eq=False)
class Signals:
    """Raw logits of K models on N population records under Q queries, with labels and membership masks.

    logits: ``[K, N, Q, C]`` float16 or float32 (float64 accepted). ``q = 0`` is the un-augmented query.
    labels: ``[N]`` int64, values in ``[0, C)``.
    masks:  ``[K, N]`` bool, ``masks[k, i]`` = record i was in model k's training set.
    """

    logits: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        logits = np.asarray(self.logits)
        labels = np.asarray(self.labels)
        masks = np.asarray(self.masks)
        if logits.ndim != 4:
            raise ValueError(f"logits must have shape [K, N, Q, C]; got shape {logits.shape}")
        if logits.dtype not in (np.float16, np.float32, np.float64):
            raise ValueError(f"logits must be float16 or float32; got dtype {logits.dtype} "
                             f"(shape {logits.shape})")
        k, n, q, c = logits.shape
        if min(k, n, q) < 1 or c < 2:
            raise ValueError(f"logits shape {logits.shape}: need K, N, Q >= 1 and C >= 2 classes")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape [N] = ({n},) to match logits {logits.shape}; "
                             f"got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        if labels.min() < 0 or labels.max() >= c:
            raise ValueError(f"labels must lie in [0, {c}) for C={c} classes; "
                             f"got range [{labels.min()}, {labels.max()}]")
        if masks.shape != (k, n):
            raise ValueError(f"masks must have shape [K, N] = ({k}, {n}) to match logits {logits.shape}; "
                             f"got {masks.shape}")
        if masks.dtype != np.bool_:
            if np.issubdtype(masks.dtype, np.integer) and np.isin(masks, (0, 1)).all():
                masks = masks.astype(bool)
            else:
                raise ValueError(f"masks must be bool (or 0/1 integers); got dtype {masks.dtype}")
        bad = ~np.isfinite(logits)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            models = sorted({int(k) for k in np.argwhere(bad)[:, 0]})
            hint = "; float16 overflows above 65504 (signals.dtype=float32)" if logits.dtype == np.float16 else ""
            raise ValueError(f"logits {logits.shape} contain {int(bad.sum())} non-finite values (NaN/inf), "
                             f"e.g. at index {first}, from models {models}{hint}")
        self.logits, self.labels, self.masks = logits, labels, masks

    # ---------------------------------------------------------------- shape
    @property
    def num_models(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_records(self) -> int:
        return int(self.logits.shape[1])

    @property
    def num_queries(self) -> int:
        return int(self.logits.shape[2])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[3])

    # ---------------------------------------------------------------- io
    def save(self, path: str | Path) -> None:
        """Write an uncompressed ``.npz`` atomically (temporary file in the same directory, os.replace)."""
        with atomic_writer(path) as f:
            np.savez(f, logits=self.logits, labels=self.labels, masks=self.masks)

    @classmethod
    def load(cls, path: str | Path) -> Signals:
        """Read a file written by :meth:`save`; errors name the file and what is wrong with it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"signals file {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [key for key in ("logits", "labels", "masks") if key not in f.files]
                if missing:
                    raise SignalsFileError(f"signals file {str(path)!r} lacks array(s) {missing} "
                                           f"(has {sorted(f.files)})")
                logits, labels, masks = f["logits"], f["labels"], f["masks"]
        except SignalsFileError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise SignalsFileError(f"signals file {str(path)!r} is corrupt or not a signals .npz: "
                                   f"{type(e).__name__}: {e}") from e
        try:
            return cls(logits=logits, labels=labels, masks=masks)
        except ValueError as e:
            raise SignalsFileError(f"signals file {str(path)!r} holds inconsistent arrays: {e}") from e

    # ---------------------------------------------------------------- derived signals, float64 [K, N, Q]
    def _derived(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache.update(derive(self.logits, self.labels))
        return self._cache[name]

    @property
    def true_log_prob(self) -> np.ndarray:
        """``log p_y`` (log-softmax of the true label), float64 ``[K, N, Q]``."""
        return self._derived("true_log_prob")

    @property
    def loss(self) -> np.ndarray:
        """Cross-entropy ``-log p_y``, float64 ``[K, N, Q]``."""
        return self._derived("loss")

    @property
    def conf(self) -> np.ndarray:
        """Confidence in the true label ``p_y``, float64 ``[K, N, Q]``."""
        return self._derived("conf")

    @property
    def entropy(self) -> np.ndarray:
        """Prediction entropy ``-sum_i p_i log p_i`` (nats), float64 ``[K, N, Q]``."""
        return self._derived("entropy")

    @property
    def mentr(self) -> np.ndarray:
        """Song & Mittal modified entropy ``-(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i)``, float64 [K, N, Q].

        Computed exactly from the logits; the authors' code clips ``log 0`` to ``log 1e-30`` instead, which
        only matters for saturated probabilities."""
        return self._derived("mentr")

    @property
    def phi(self) -> np.ndarray:
        """LiRA logit-scaled confidence ``log p_y - log(1 - p_y) = z_y - logsumexp_{j!=y} z_j``, float64
        ``[K, N, Q]``."""
        return self._derived("phi")

    @property
    def correct(self) -> np.ndarray:
        """``argmax_j z_j == y`` (first maximum on ties, as ``np.argmax``), bool ``[K, N, Q]``."""
        return self._derived("correct")


def derive(logits: np.ndarray, labels: np.ndarray, chunk_bytes: int = _CHUNK_BYTES) -> dict[str, np.ndarray]:
    """All derived signals of ``logits[K, N, Q, C]`` as float64 ``[K, N, Q]`` arrays (``correct``: bool).

    Works through (model, record) rows in chunks so that no float64 copy of the whole logits array exists.
    """
    k, n, q, c = logits.shape
    rows = logits.reshape(k * n, q, c)
    out = {name: np.empty((k * n, q), dtype=bool if name == "correct" else np.float64) for name in DERIVED}
    step = max(1, chunk_bytes // (q * c * 8))
    for start in range(0, k * n, step):
        stop = min(start + step, k * n)
        y = labels[np.arange(start, stop) % n]
        res = _derive_rows(rows[start:stop].astype(np.float64), y)
        for name in DERIVED:
            out[name][start:stop] = res[name]
    return {name: a.reshape(k, n, q) for name, a in out.items()}


def _derive_rows(z: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Derived signals of float64 logits ``z[R, Q, C]`` with labels ``y[R]``; returns ``[R, Q]`` arrays."""
    r, q, c = z.shape
    am = z.argmax(-1)[..., None]                                  # [R, Q, 1]
    m1 = np.take_along_axis(z, am, -1)                            # max logit
    e = np.exp(z - m1)                                            # in (0, 1], 1 at the argmax
    s = e.sum(-1, keepdims=True)                                  # >= 1
    # leave-one-out logsumexp L_i: for i != argmax, S - e_i >= 1 (the max term stays in the sum); at the
    # argmax S - e_i may round to 0, and that entry is replaced by a log-sum-exp over the other logits
    with np.errstate(divide="ignore"):
        loo = m1 + np.log(s - e)
    z_wo = z.copy()
    np.put_along_axis(z_wo, am, -np.inf, -1)
    m2 = z_wo.max(-1, keepdims=True)
    loo_am = m2 + np.log(np.exp(z_wo - m2).sum(-1, keepdims=True))
    np.put_along_axis(loo, am, loo_am, -1)
    # p_i = sigmoid(z_i - L_i): log p_i and log(1 - p_i) are log-sigmoids of the accurate difference
    # z_i - L_i, so neither a loss of 1e-18 (p_i ~ 1) nor a probability of e^-2000 (p_i ~ 0) is rounded away
    log_p = -np.logaddexp(0.0, loo - z)
    log1m_p = -np.logaddexp(0.0, z - loo)
    p = np.exp(log_p)

    yi = np.broadcast_to(y[:, None, None], (r, q, 1))
    z_y = np.take_along_axis(z, yi, -1)[..., 0]
    log_p_y = np.take_along_axis(log_p, yi, -1)[..., 0]
    log1m_p_y = np.take_along_axis(log1m_p, yi, -1)[..., 0]
    phi = z_y - np.take_along_axis(loo, yi, -1)[..., 0]

    entropy = -(p * log_p).sum(-1)
    others = p * log1m_p                                          # p_i log(1 - p_i); the y term is zeroed
    np.put_along_axis(others, yi, 0.0, -1)                        # drop i == y without cancellation
    mentr = -np.exp(log1m_p_y) * log_p_y - others.sum(-1)
    return {
        "true_log_prob": log_p_y,
        "loss": -log_p_y,
        "conf": np.exp(log_p_y),
        "entropy": entropy,
        "mentr": mentr,
        "phi": phi,
        "correct": am[..., 0] == y[:, None],
    }


def make_synthetic_signals(
    num_models: int = 8,
    num_records: int = 400,
    num_queries: int = 2,
    num_classes: int = 10,
    *,
    leak: float = 1.0,
    target_leak: float | None = None,
    target: int = 0,
    difficulty_scale: float = 2.0,
    model_noise: float = 0.5,
    query_noise: float = 0.2,
    paired: bool = True,
    independent: bool = False,
    seed: int = 0,
    dtype=np.float32,
) -> Signals:
    """Synthetic signals for tests and demos (no training).

    Every record has a hidden difficulty (the typical margin of its true class); each model adds its own
    noise, and adds ``leak`` to the true-class logit of its members (``target_leak`` for model ``target``:
    a memorising target). ``independent=True`` draws the masks after the logits, from a separate stream,
    so membership carries no information at all (the null setting: every attack's AUC must be ~0.5).
    """
    rng = np.random.default_rng(seed)
    k, n, q, c = num_models, num_records, num_queries, num_classes
    labels = rng.integers(0, c, size=n)
    difficulty = rng.normal(0.0, difficulty_scale, size=n)
    z = rng.normal(0.0, 1.0, size=(k, n, q, c))
    z += rng.normal(0.0, model_noise, size=(k, n, 1, 1))
    z += rng.normal(0.0, query_noise, size=(k, n, q, c))
    boost = difficulty[None, :] + rng.normal(0.0, model_noise, size=(k, n))
    mask_rng = np.random.default_rng(seed + 1_000_003) if independent else rng
    if paired:
        masks = np.zeros((k, n), dtype=bool)
        for j in range(0, k, 2):
            half = np.zeros(n, dtype=bool)
            half[mask_rng.permutation(n)[: n // 2]] = True
            masks[j] = half
            if j + 1 < k:
                masks[j + 1] = ~half
    else:
        masks = mask_rng.random((k, n)) < 0.5
    if not independent:
        leaks = np.full(k, float(leak))
        if target_leak is not None:
            leaks[target] = float(target_leak)
        boost = boost + leaks[:, None] * masks
    z[np.arange(k)[:, None], np.arange(n)[None, :], :, labels[None, :]] += boost[:, :, None] + 2.0
    return Signals(logits=z.astype(dtype), labels=labels.astype(np.int64), masks=masks)

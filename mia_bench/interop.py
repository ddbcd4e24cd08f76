"""Signals to and from other tools' on-disk formats, so one set of models can be scored by several tools.

**LiRA reference code** (Carlini et al., ``tensorflow/privacy/research/mi_lira_2021``): a log directory holding
``y_train.npy`` (labels ``[N]``) and one folder per model, ``experiment-<k>_<K>/``, with ``keep.npy`` (bool
``[N]``: the model trained on record i) and ``logits/<epoch as %010d>.npy`` of shape ``[N, 1, A, C]`` (records,
a singleton axis, A augmentations, C classes), as its ``inference.py`` writes them and its ``score.py`` reads
them. mia_bench's ``Signals`` are ``[K, N, Q, C]`` with ``masks [K, N]``: the augmentation axis is the query axis.

**ML Privacy Meter** (``privacytrustlab/ml_privacy_meter``, ``run_mia.py``): ``<log_dir>/models/memberships.npy``
(bool ``[M, N]``, row i = model i's training set; models 2k and 2k+1 complementary halves),
``<log_dir>/models/models_metadata.json`` (keys ``"0"``, ``"1"``, ...), and ``<log_dir>/signals/rmia_signals.npy``
(float32 ``[N, M]``: each model's softmax probability of the true label, the only signal its RMIA and loss attacks
read), with ``rmia_signals_pop.npy`` for its population records z. It keeps no other class's output, so an import
gives Signals that hold the true-label probability exactly (two "classes": the true one, logit ``log p``, and the
rest, ``log(1 - p)``): loss, LiRA and RMIA score them as they score full logits; attacks that read the whole
class distribution (entropy, modified entropy, label-only, the shadow-model classifier) need the full logits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from mia_bench.atomic import atomic_write_text, atomic_writer, make_dir
from mia_bench.signals import Signals

_EXPERIMENT = re.compile(r"^experiment-(\d+)_(\d+)$")


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path) as f:
        np.save(f, array, allow_pickle=False)


def export_lira(signals: Signals, logdir: str | Path, epoch: int = 0) -> Path:
    """Write ``signals`` as a LiRA reference-code log directory (``score.py <logdir>`` then scores it)."""
    root = make_dir(logdir)
    k = signals.num_models
    _save(root / "y_train.npy", signals.labels.astype(np.int64))
    for m in range(k):
        exp = make_dir(root / f"experiment-{m}_{k}")
        _save(exp / "keep.npy", signals.masks[m].astype(bool))
        logits = make_dir(exp / "logits")
        _save(logits / f"{epoch:010d}.npy", np.asarray(signals.logits[m], dtype=np.float32)[:, None, :, :])
        atomic_write_text(exp / "hparams.json", json.dumps({"expid": m, "num_experiments": k, "arch": "mia_bench"}))
    return root


def import_lira(logdir: str | Path, epoch: int | None = None) -> Signals:
    """Read a LiRA reference-code log directory as ``Signals`` (models in ``expid`` order; the given ``epoch``'s
    logits, else each model's latest). Raises ValueError naming what is missing or inconsistent."""
    root = Path(logdir)
    if not (root / "y_train.npy").exists():
        raise ValueError(f"{root}: no y_train.npy: not a LiRA log directory (experiment-<k>_<K>/keep.npy, "
                         "logits/<epoch>.npy, y_train.npy)")
    labels = np.load(root / "y_train.npy", allow_pickle=False)
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _EXPERIMENT.match(p.name)) and p.is_dir())
    if not found:
        raise ValueError(f"{root}: no experiment-<k>_<K> folders")
    logits, masks = [], []
    for _, exp in found:
        files = sorted((exp / "logits").glob("*.npy"))
        if epoch is not None:
            files = [f for f in files if f.stem == f"{epoch:010d}"]
        if not (exp / "keep.npy").exists() or not files:
            raise ValueError(f"{exp}: needs keep.npy and logits/<epoch>.npy"
                             + (f" for epoch {epoch}" if epoch is not None else ""))
        out = np.load(files[-1], allow_pickle=False)
        if out.ndim != 4 or out.shape[1] != 1:
            raise ValueError(f"{files[-1]}: logits of shape {out.shape}; expected [N, 1, augmentations, classes]")
        logits.append(out[:, 0])
        masks.append(np.load(exp / "keep.npy", allow_pickle=False).astype(bool))
    n = labels.shape[0]
    bad = [str(exp) for (_, exp), lg, mk in zip(found, logits, masks, strict=True)
           if lg.shape[0] != n or mk.shape != (n,)]
    if bad:
        raise ValueError(f"{len(bad)} experiment(s) do not cover the {n} records of y_train.npy: {', '.join(bad[:3])}")
    return Signals(logits=np.stack(logits), labels=labels.astype(np.int64), masks=np.stack(masks))


def export_privacy_meter(signals: Signals, log_dir: str | Path, query: int = 0) -> Path:
    """Write ``signals`` as an ML Privacy Meter log directory: memberships, metadata, and the true-label softmax
    probability of query ``query`` (the Privacy Meter queries once) as ``rmia_signals.npy``; the population file
    holds the same records (mia_bench compares x with the scored records themselves)."""
    root = make_dir(log_dir)
    models, sig = make_dir(root / "models"), make_dir(root / "signals")
    _save(models / "memberships.npy", signals.masks.astype(bool))
    meta = {str(k): {"model_name": "mia_bench", "num_train": int(signals.masks[k].sum()), "exported_by": "mia_bench"}
            for k in range(signals.num_models)}
    atomic_write_text(models / "models_metadata.json", json.dumps(meta, indent=1))
    p_true = np.exp(signals.true_log_prob[:, :, query]).T.astype(np.float32)     # [N, M]
    _save(sig / "rmia_signals.npy", p_true)
    _save(sig / "rmia_signals_pop.npy", p_true)
    return root


def import_privacy_meter(log_dir: str | Path) -> Signals:
    """Read an ML Privacy Meter log directory (``models/memberships.npy``, ``signals/rmia_signals.npy``) as
    ``Signals`` holding each model's true-label probability (see the module docstring for what that allows)."""
    root = Path(log_dir)
    mem, sig = root / "models" / "memberships.npy", root / "signals" / "rmia_signals.npy"
    missing = [str(p) for p in (mem, sig) if not p.exists()]
    if missing:
        raise ValueError(f"{root}: not an ML Privacy Meter log directory: missing {', '.join(missing)}")
    masks = np.load(mem, allow_pickle=False).astype(bool)
    p = np.load(sig, allow_pickle=False).astype(np.float64).T                  # [M, N]
    if p.shape != masks.shape:
        raise ValueError(f"{sig}: signals of shape {p.T.shape} do not match memberships {masks.shape} "
                         "(expected [N, M] and [M, N]): the signals were computed for a subset of the records or "
                         "another set of models")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"{sig}: values outside [0, 1]: expected true-label softmax probabilities")
    p = np.clip(p, np.finfo(np.float64).tiny, 1.0)
    rest = np.log1p(-np.minimum(p, 1.0 - 1e-16))                            # finite where p rounds to 1
    logits = np.stack([np.log(p), rest], axis=-1)[:, :, None, :]              # [M, N, 1, 2], true class 0
    return Signals(logits=logits, labels=np.zeros(p.shape[1], dtype=np.int64), masks=masks)

"""Signals to and from other tools' on-disk formats, so one set of models can be scored by several tools.

**LiRA reference code** (Carlini et al., ``tensorflow/privacy/research/mi_lira_2021``): a log directory holding
``y_train.npy`` (labels ``[N]``) and one folder per model, ``experiment-<k>_<K>/``, with ``keep.npy`` (bool
``[N]``: the model trained on record i) and ``logits/<epoch as %010d>.npy`` of shape ``[N, 1, A, C]`` (records,
a singleton axis, A augmentations, C classes), as its ``inference.py`` writes them and its ``score.py`` reads
them. mia_bench's ``Signals`` are ``[K, N, Q, C]`` with ``masks [K, N]``: the augmentation axis is the query axis.
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

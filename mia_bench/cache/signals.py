"""Reading a stored signals entry back for a run: what it holds must fit the run, else it is replaced."""

from __future__ import annotations

import numpy as np

from mia_bench.cache.models import ModelCache
from mia_bench.signals import Signals


def cached_signals(
    cache: ModelCache, key: str, k: int, labels: np.ndarray, audit_masks: np.ndarray, q: int
) -> tuple[Signals, np.ndarray, np.ndarray] | None:
    """``(signals, test accuracies, train accuracies)`` of a stored entry if its contents fit this run (K models, the
    scored records' ``labels`` and masks, Q queries); otherwise the entry is invalidated, with the reason, so that
    the run recomputes and replaces it instead of failing on it on every rerun (checksums catch damage to files, not
    contents that never fit)."""
    hit = cache.load_signals(key)
    if hit is None:
        return None
    try:
        missing = {"logits", "labels", "masks", "test_acc", "train_acc"} - set(hit)
        if missing:
            raise ValueError(f"arrays {sorted(missing)} missing")
        signals = Signals(logits=hit["logits"], labels=hit["labels"], masks=hit["masks"])
        want = (k, len(labels), q)
        if signals.logits.shape[:3] != want:
            raise ValueError(f"logits {signals.logits.shape} for [K, N, Q] = {list(want)}")
        if not np.array_equal(signals.labels, labels) or not np.array_equal(signals.masks, audit_masks):
            raise ValueError("labels or membership masks differ from this run's")
        if hit["test_acc"].shape != (k,) or hit["train_acc"].shape != (k,):
            raise ValueError(f"accuracies of shape {hit['test_acc'].shape} / {hit['train_acc'].shape} for {k} models")
    except ValueError as err:
        cache.store.invalidate("signals", key, f"unusable contents ({err})")
        return None
    return signals, hit["test_acc"], hit["train_acc"]

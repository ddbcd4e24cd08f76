"""Analyses beyond the attack table, selected with ``+analysis=<name>`` (config group ``analysis``).

The pipeline calls two hooks: :func:`training_callbacks` before training (callbacks that record what an
analysis needs while the K models train) and :func:`run_analyses` after the attacks (compute, write files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from omegaconf import DictConfig

from mia_bench.data.base import ArrayData
from mia_bench.signals import Signals


def training_callbacks(
    cfg: DictConfig, audit: ArrayData, queries: list
) -> Callable[[int], list[pl.Callback]] | None:
    """For model k, the callbacks the selected analyses need during training (None when no analysis)."""
    if not cfg.get("analysis"):
        return None
    return lambda k: []


def run_analyses(cfg: DictConfig, trained: list, signals: Signals, masks: np.ndarray, out: Path) -> dict:
    """Run the selected analyses on the trained models; returns summary figures for metrics.json."""
    if not cfg.get("analysis"):
        return {}
    return {}

"""Analyses beyond the attack table, selected with ``+analysis=<name>`` (config group ``analysis``).

The pipeline calls two hooks: :func:`training_callbacks` before training (callbacks that record what an
analysis needs while the K models train) and :func:`run_analyses` after the attacks (compute, write files).
Available: ``dynamics`` (per-record privacy across epochs, :mod:`mia_bench.dynamics`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from omegaconf import DictConfig

from mia_bench.data.base import ArrayData
from mia_bench.signals import Signals

ANALYSES = ("dynamics",)


def _selected(cfg: DictConfig) -> list[str]:
    node = cfg.get("analysis")
    if not node:
        return []
    unknown = sorted(set(node) - set(ANALYSES))
    if unknown:
        raise ValueError(f"analysis: unknown analysis {unknown}; available: {list(ANALYSES)} (e.g. +analysis=dynamics)")
    return [name for name in ANALYSES if name in node]


def training_callbacks(
    cfg: DictConfig, audit: ArrayData, queries: list
) -> Callable[[int], list[pl.Callback]] | None:
    """For model k, the callbacks the selected analyses need during training (None when no analysis).

    Validates each analysis's settings here, before any model trains."""
    selected = _selected(cfg)
    if not selected:
        return None
    factories = []
    if "dynamics" in selected:
        from mia_bench.dynamics.analysis import recorder_factory

        factories.append(recorder_factory(cfg, audit, queries))
    return lambda k: [cb for make in factories for cb in make(k)]


def recording_key(cfg: DictConfig) -> dict | None:
    """The settings of the selected analyses that change what is recorded while a model trains (for the model
    cache's key; None when no analysis records anything). Analysis-only settings are left out, so changing them
    reuses the cached models and their recorded artifacts."""
    selected = _selected(cfg)
    if not selected:
        return None
    from mia_bench.dynamics.config import recording_settings

    return {"dynamics": recording_settings(cfg)} if "dynamics" in selected else None


def run_analyses(cfg: DictConfig, trained: list, signals: Signals, masks: np.ndarray, out: Path) -> dict:
    """Run the selected analyses on the trained models; returns summary figures for metrics.json."""
    summary: dict = {}
    if "dynamics" in _selected(cfg):
        from mia_bench.dynamics.analysis import run_dynamics

        summary.update(run_dynamics(cfg, trained, signals.labels, masks, Path(out)))
    return summary

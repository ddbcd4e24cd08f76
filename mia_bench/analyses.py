"""Analyses beyond the attack table, selected with ``+analysis=<name>``.

An analysis is a class named by ``_target_`` in ``conf/analysis/<name>.yaml`` (its other keys are its settings,
checked when it is built). The pipeline builds the selected ones before any model trains and calls, in order:

1. :meth:`Analysis.setup` with what it may need to know of the run (checks that depend on it fail in seconds,
   not after hours of training);
2. :meth:`Analysis.recorded`: what it records while a model trains, which joins the models' cache keys (None when
   it records nothing, so analysis-only settings reuse the cached models);
3. :meth:`Analysis.callbacks` for each model it trains;
4. :meth:`Analysis.run` after the attacks: its own files, and summary figures for ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mia_bench.data.base import ArrayData
from mia_bench.signals import Signals


@dataclass
class RunInfo:
    """The facts about a run that an analysis may depend on."""

    num_models: int
    epochs: int  # train.epochs
    seed: int
    model: DictConfig  # the architecture node (e.g. its dropout)
    null_test: bool
    audit: ArrayData  # the scored records
    queries: list  # the attacker's query augmentations


class Analysis:
    """Base class; subclasses take their settings as keyword arguments."""

    def setup(self, run: RunInfo) -> None:
        self.run_info = run

    def recorded(self) -> dict | None:
        return None

    def callbacks(self, k: int) -> list[pl.Callback]:
        return []

    def run(self, trained: list, signals: Signals, masks: np.ndarray, out: Path) -> dict[str, Any]:
        raise NotImplementedError


def build_analyses(node: DictConfig | None) -> dict[str, Analysis]:
    """The analyses of the ``analysis`` config node, by name (empty when none is selected)."""
    out = {}
    for name, sub in (node or {}).items():
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            raise ValueError(
                f"analysis.{name}: expected a node with a _target_ naming an Analysis class "
                "(select an analysis with +analysis=<name>, e.g. +analysis=dynamics)"
            )
        settings = OmegaConf.to_container(sub, resolve=True)
        cls = get_class(settings.pop("_target_"))
        if not (isinstance(cls, type) and issubclass(cls, Analysis)):
            raise ValueError(f"analysis.{name}: {cls.__module__}.{cls.__qualname__} is not an Analysis")
        out[name] = cls(**settings)
    return out

"""Paths relative to where the command was started (not to the run's folder, which ``hydra.job.chdir`` enters)."""

from __future__ import annotations

import os
from pathlib import Path


def anchored(path: str) -> str:
    """``path`` made absolute against the directory the command was started in (Hydra's ``runtime.cwd`` inside a
    Hydra app, else the current directory), so ``hydra.job.chdir=true`` does not move the cache or the data into
    each run's folder."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return str(p)
    from hydra.core.hydra_config import HydraConfig

    base = HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()
    return str(Path(base) / p)

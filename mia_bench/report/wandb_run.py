"""The W&B run of one benchmark cell, opened by ``python -m mia_bench`` before training (``logger=wandb``).

Opening it here rather than letting Lightning's ``WandbLogger`` open it on first use lets the run carry what
the logger does not know: the group (the sweep), the tags (the Hydra choices), the name (the job's overrides)
and the whole resolved config. ``WandbLogger`` reuses a run already in progress, so the K models' training
curves still land in this run under ``model<k>/``; ``log_to_wandb`` adds the metrics, table and ROC plot and
finishes it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MAX_TAG = 64  # W&B rejects longer tags


#: Choices that say where or how a run logs, not what it computes: no tag for them.
NOT_TAGS = ("paths", "logger", "trainer", "hydra")


def choice_tags(choices: dict[str, Any], extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``group=option`` for every Hydra choice that concerns what is computed (list choices such as
    ``attack=[loss,rmia]`` joined by commas; not ``paths``, ``logger``, ``trainer``), plus the user's own tags, each
    cut to W&B's 64-character limit."""
    tags = set(extra)
    for k, v in choices.items():
        if v is None or k in NOT_TAGS:
            continue
        value = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        tags.add(f"{k}={value}")
    return sorted(t[:MAX_TAG] for t in tags)


def run_identity(hydra_cfg: DictConfig, choices: dict[str, Any], logger_cfg: DictConfig) -> dict[str, Any]:
    """Group, name and tags of a cell's W&B run. Group: the sweep directory's name for a multirun job (all
    jobs of one sweep together); for a single run its cell, ``<dataset>/<model>/<defense>`` (reruns and seeds of a
    cell together), or the run directory's name without those choices. Name: the job folder for a
    multirun job (``<num>_<overrides>``), the command-line overrides (or the run folder) for a single run.
    Non-null ``logger.group`` / ``logger.name`` win; ``logger.tags`` are added to the choices."""
    from hydra.types import RunMode

    out = Path(str(hydra_cfg.runtime.output_dir))
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    cell = "/".join(str(choices[k]) for k in ("dataset", "model", "defense") if choices.get(k))
    group = logger_cfg.get("group") or (Path(str(hydra_cfg.sweep.dir)).name if multirun else cell or out.name)
    overrides = str(hydra_cfg.job.get("override_dirname") or "")
    name = logger_cfg.get("name") or (out.name if multirun or not overrides else overrides)
    return {"group": str(group), "name": str(name), "tags": choice_tags(choices, list(logger_cfg.get("tags") or []))}


def start_run(cfg: DictConfig, choices: dict[str, Any], hydra_cfg: DictConfig):
    """Open the cell's W&B run (offline when ``logger.offline`` or ``WANDB_MODE=offline``) with group, name, tags
    and the resolved config; returns it. A run still open in this process (a previous job of a reused joblib
    worker that crashed) is finished first, so jobs never log into each other's runs."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1)
    lg = cfg.logger
    ident = run_identity(hydra_cfg, choices, lg)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["choices"] = {k: v for k, v in choices.items() if v is not None}
    run = wandb.init(
        project=lg.get("project") or "mia_bench",
        entity=lg.get("entity"),
        dir=str(lg.get("save_dir") or cfg.paths.output_dir),
        mode="offline" if lg.get("offline") else None,
        config=config,
        **ident,
    )
    # Lightning warns once per model that it reuses this run: that is the intended behaviour here.
    warnings.filterwarnings("ignore", message=".*wandb run already in progress.*")
    log.info("W&B run %s (group %s, %s)", run.name, run.group, "offline" if run.settings._offline else "online")
    return run


def finish_failed() -> None:
    """Close a run left open by a failed job (exit code 1, so W&B marks it failed)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1)

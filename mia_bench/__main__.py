"""Entry point: ``python -m mia_bench [group=option ...] [key=value ...]`` (Hydra)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mia_bench.data.base import DatasetUnavailableError
from mia_bench.gpu_pool import job_device, register_resolvers

register_resolvers()  # ${mia_bench.gpu_count:} in conf/hydra/launcher/gpus.yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
# Groups in conf/config.yaml's defaults list. Hydra accepts `group=x` for them but rejects `+group=x`
# ("Multiple values for ...") while it requires `+group=x` for groups outside the list; users know both
# spellings from other Hydra tools, so `+group=x` is rewritten to `group=x` for these groups.
USER_ERRORS = (ValueError, DatasetUnavailableError, InstantiationException, FileNotFoundError)
DEFAULT_GROUPS = (
    "dataset",
    "model",
    "defense",
    "attack",
    "analysis",
    "train",
    "trainer",
    "logger",
    "paths",
    "experiment",
)


def normalize_overrides(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("+") and not arg.startswith("++"):
            key = arg[1:].split("=", 1)[0]
            if key in DEFAULT_GROUPS:
                arg = arg[1:]
        out.append(arg)
    return out


def _propagate_lightning_logs() -> None:
    """Lightning installs its own stream handler and stops propagation when imported before logging is set up,
    so its messages would miss Hydra's log file; route them through the root logger instead (once)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mia_bench.pipeline import run
    from mia_bench.report.wandb_run import finish_failed, is_wandb, start_run

    _propagate_lightning_logs()
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    if "attack" not in choices and cfg.get("attack"):
        # Hydra records no choice for a list override (attack=[loss,rmia]); name it so that the job directory's
        # metrics.json and the W&B tags still say which attacks ran.
        choices["attack"] = "[" + ",".join(cfg.attack.keys()) + "]"
    try:
        # hydra/launcher=gpus: this job holds one GPU until it returns (or fails).
        with job_device(cfg):
            if is_wandb(cfg):
                start_run(cfg, choices, hydra_cfg)
            try:
                run(cfg, choices)
            finally:
                finish_failed()  # a run the pipeline did not finish (it raised): marked failed, not reused
    except USER_ERRORS as err:
        # A bad option or missing data is the user's to fix, not a crash: print the message that names the
        # bad value and what is accepted, without a stack trace (HYDRA_FULL_ERROR=1 shows it).
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__  # show the loader's / builder's own message, not Hydra's wrapper
        logging.getLogger("mia_bench").error("%s: %s", type(err).__name__, err)
        raise SystemExit(2) from None


def main() -> None:
    if not CONFIG_DIR.is_dir():
        sys.exit(
            f"mia_bench: config directory {CONFIG_DIR} not found; install from a checkout with `pip install -e .`"
        )
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()

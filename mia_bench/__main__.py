"""Entry point: ``python -m mia_bench [group=option | +group=option ...] [key=value ...]`` (Hydra)."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mia_bench.config import CONFIG_DIR, CONFIG_NAME, normalize_overrides
from mia_bench.data.base import DatasetUnavailableError
from mia_bench.gpu_pool import job_device, register_resolvers

register_resolvers()  # ${mia_bench.gpu_count:} in conf/hydra/launcher/gpus.yaml

#: Errors that are the user's to fix (a bad option, missing data): one message, exit status 2, no traceback.
USER_ERRORS = (ValueError, DatasetUnavailableError, InstantiationException, FileNotFoundError)
log = logging.getLogger("mia_bench")


def _propagate_lightning_logs() -> None:
    """Lightning installs its own stream handler and stops propagation when imported before logging is set up,
    so its messages would miss Hydra's log file; route them through the root logger instead (once)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def job_choices(cfg: DictConfig) -> dict[str, str]:
    """The job's Hydra choices (``dataset: digits``, ...) for metrics.json and W&B tags."""
    from hydra.core.hydra_config import HydraConfig

    runtime = HydraConfig.get().runtime.choices
    choices = {k: v for k, v in runtime.items() if not k.startswith("hydra") and v is not None}
    if "attack" not in choices and cfg.get("attack"):
        # Hydra records no choice for a list override (attack=[loss,rmia]); name it so that metrics.json and the
        # W&B tags still say which attacks ran.
        choices["attack"] = "[" + ",".join(cfg.attack.keys()) + "]"
    return choices


def run_job(cfg: DictConfig, choices: dict[str, str], hydra_cfg: DictConfig | None = None) -> int:
    """Run one cell as the command line does; returns the exit status (0, or 2 for a user error, which is logged
    as one line naming the bad value; ``HYDRA_FULL_ERROR=1`` raises it with its traceback instead)."""
    from mia_bench.loggers import logger_kind
    from mia_bench.pipeline import run
    from mia_bench.report.wandb_run import finish_failed, start_run

    try:
        # hydra/launcher=gpus: this job holds one GPU (a place on it) until it returns or fails
        with job_device(cfg.trainer, cfg.get("jobs_per_gpu", 1)):
            if logger_kind(cfg.get("logger")) == "wandb" and hydra_cfg is not None:
                start_run(cfg, choices, hydra_cfg)
            try:
                run(cfg, choices)
            finally:
                finish_failed()  # a run the pipeline did not finish (it raised): marked failed, not reused
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__  # the loader's / builder's own message, not Hydra's wrapper
        log.error("%s: %s", type(err).__name__, err)
        return 2
    return 0


@hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    _propagate_lightning_logs()
    status = run_job(cfg, job_choices(cfg), HydraConfig.get())
    if status:
        raise SystemExit(status)


def main() -> None:
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()

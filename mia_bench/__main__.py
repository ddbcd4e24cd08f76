"""Entry point: ``python -m mia_bench [group=option | +group=option ...] [key=value ...]`` (Hydra)."""

from __future__ import annotations

import os
import signal
import sys


def _exit_while_loading(signum, frame):
    """Ctrl-C or SIGTERM while the libraries load: nothing has started, nothing to keep."""
    sys.stderr.write(f"interrupted by {signal.Signals(signum).name} while starting: nothing was stored\n")
    sys.exit(128 + signum)


if __name__ == "__main__":
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _exit_while_loading)

import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from mia_bench.atomic import WriteError
from mia_bench.cache.store import ShardNotStored
from mia_bench.config import CONFIG_DIR, CONFIG_NAME, normalize_overrides, register
from mia_bench.console import quiet_console
from mia_bench.errors import DatasetUnavailableError
from mia_bench.gpu_pool import job_device

#: Errors that are the user's to fix (a bad option, missing data): one message, exit status 2, no traceback.
USER_ERRORS = (ValueError, DatasetUnavailableError, InstantiationException, FileNotFoundError, WriteError,
               ShardNotStored)
log = logging.getLogger("mia_bench")
#: What this process has done, for a signal that arrives outside a run (while Hydra sets up or tears down).
PROGRESS = {"started": 0, "finished": 0}


class Interrupted(BaseException):
    """A termination signal during a run. A BaseException, so nothing on the way (Lightning's fit included, which
    turns SIGTERM into a silent exit with status 0 and SIGINT into status 1) swallows it before the command line
    says what was kept and exits with 128 + the signal's number, as the shell reports a process killed by it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)


#: Signals received and not yet acted on. Python drops an exception raised while a ``__del__`` or a weakref
#: callback runs (Lightning's profiler has a ``__del__``), so a signal landing there would be lost and the run go
#: on; the run checks this list at each stage (:func:`raise_if_signalled`) and once more at its end.
RECEIVED: list[int] = []


def _raise_interrupted(signum, frame):
    RECEIVED.append(signum)
    raise Interrupted(signum)


def raise_if_signalled() -> None:
    """Raise :class:`Interrupted` for a signal whose exception was swallowed on its way up."""
    if RECEIVED:
        raise Interrupted(RECEIVED[-1])


@contextmanager
def signals_interrupt(signums=(signal.SIGTERM, signal.SIGINT)):
    """SIGTERM and SIGINT raise :class:`Interrupted` inside the block. A signal another handler already owns is
    left to it: under the submitit launcher, SLURM preemption is submitit's (it requeues the job, and the rerun
    resumes from the cache)."""

    if threading.current_thread() is not threading.main_thread():  # signals can only be handled there
        yield
        return
    previous = {}
    for sig in signums:
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None, _exit_while_loading):
            previous[sig] = signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    """Run one cell as the command line does; returns the exit status: 0; 2 for a user error, logged as one line
    naming the bad value (``HYDRA_FULL_ERROR=1`` raises it with its traceback instead); 128 + the signal's number
    for SIGTERM or SIGINT, logged with what the run kept and how to resume."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from mia_bench.loggers import logger_kind
    from mia_bench.pipeline import RunState, run
    from mia_bench.report.wandb_run import finish_failed, start_run
    from mia_bench.validation import check_config

    state = RunState(on_stage=raise_if_signalled)
    PROGRESS["started"] += 1
    try:
        # hydra/launcher=gpus: this job holds one GPU (a place on it) until it returns or fails
        with signals_interrupt(), job_device(cfg.trainer, cfg.get("jobs_per_gpu", 1)):
            check_config(cfg)  # a bad value fails before anything starts (a W&B run included)
            if logger_kind(cfg.get("logger")) == "wandb" and hydra_cfg is not None:
                start_run(cfg, choices, hydra_cfg)
            try:
                run(cfg, choices, state)
                raise_if_signalled()
            finally:
                finish_failed()  # a run the pipeline did not finish (it raised): marked failed, not reused
    except (Interrupted, SIGTERMException, KeyboardInterrupt) as err:
        RECEIVED.clear()
        signum = err.signum if isinstance(err, Interrupted) else (
            signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM)
        command = " ".join(["python -m mia_bench", *sys.argv[1:]])
        log.error("interrupted by %s while %s: %s (%s)", signal.Signals(signum).name, state.stage, state.kept(),
                  command)
        return 128 + int(signum)
    except USER_ERRORS as err:
        if isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__  # the loader's / builder's own message, not Hydra's wrapper
        record_failure(cfg, err, state.stage)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", type(err).__name__, err)
        return 2
    except Exception as err:  # a bug: its traceback follows, and the run folder says it failed
        record_failure(cfg, err, state.stage)
        raise
    PROGRESS["finished"] += 1
    return 0


def record_failure(cfg: DictConfig, err: BaseException, stage: str) -> None:
    """``failed.json`` in the run folder (the report lists failed jobs); best effort: a folder that cannot be
    written is the error being reported."""
    from mia_bench.atomic import write_json

    try:
        out = Path(str(cfg.paths.output_dir))
        if out.is_dir():
            write_json(out / "failed.json", {"error": type(err).__name__, "message": str(err), "stage": stage})
    except Exception:  # noqa: BLE001
        pass


class JobFailed(Exception):
    """A multirun job that failed: an Exception, so Hydra records it and runs the sweep's other jobs."""


@hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    quiet_console(f"job {hydra_cfg.job.num}" if hydra_cfg.mode == RunMode.MULTIRUN else None)
    status = run_job(cfg, job_choices(cfg), hydra_cfg)
    if status == 2 and hydra_cfg.mode == RunMode.MULTIRUN:  # one bad cell must not stop the others
        raise JobFailed(f"job {hydra_cfg.job.num} failed (see {cfg.paths.output_dir}/failed.json)")
    if status:
        raise SystemExit(status)


def preflight(args: list[str]) -> None:
    """Refuse a misspelt option or key, and (one run) a bad value, before Hydra starts a job or torch is imported:
    one line naming it, exit status 2, as for every bad option or value."""
    from hydra.errors import HydraException

    from mia_bench.config import check_overrides, compose
    from mia_bench.validation import check_config

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        check_overrides(overrides)
        flags = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "--cfg", "-c"}
        if not flags & set(args):  # a sweep's jobs check their own values
            check_config(compose(overrides, strict=False))
    except (ValueError, HydraException) as err:
        logging.basicConfig(format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)


def main() -> None:
    register()  # the resolvers and attack bundles the config tree uses (multirun workers get copies from here)
    sys.argv = [sys.argv[0], *normalize_overrides(sys.argv[1:])]
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        preflight(sys.argv[1:])
    try:
        with signals_interrupt():  # outside a job too: Hydra's set-up and tear-down, between multirun jobs
            _hydra_main()
        for sig in (signal.SIGINT, signal.SIGTERM):  # done: a signal while the interpreter exits changes nothing
            signal.signal(sig, signal.SIG_IGN)
    except Interrupted as err:
        RECEIVED.clear()
        name, multirun = signal.Signals(err.signum).name, "-m" in sys.argv or "--multirun" in sys.argv
        if not multirun and PROGRESS["started"] == 0:
            log.error("interrupted by %s before the run started: nothing was stored", name)
        elif not multirun and PROGRESS["finished"] == 1:
            log.error("interrupted by %s after the run finished: its outputs are complete", name)
        else:
            log.error("interrupted by %s: finished jobs keep their outputs and trained models are in the cache; run "
                      "the same command again to resume", name)
        sys.exit(128 + err.signum)


if __name__ == "__main__":
    main()

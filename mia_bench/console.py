"""What the console shows of a run, for the command line and the Python API alike: mia_bench's own progress and
results, while Lightning's informational chatter and third-party deprecations go to the run's ``mia_bench.log``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The line format of the command line's log (Hydra's job logging), which the Python API's log file shares.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def propagate_lightning_logs() -> None:
    """Lightning installs its own stream handler and stops propagation when imported before logging is set up,
    so its messages would miss Hydra's log file; route them through the root logger instead (once)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def console_filter(record: logging.LogRecord) -> bool:
    """What the console leaves to the log file: Lightning's informational lines (accelerator, tips, "fit
    stopped") and third-party warnings a user cannot act on (deprecations inside installed packages)."""
    if record.name.startswith("lightning") and record.levelno < logging.WARNING:
        return False
    return not (record.name == "py.warnings" and "site-packages" in record.getMessage())


def quiet_console(job_label: str | None = None) -> None:
    """The console shows mia_bench's own progress and results; everything still goes to mia_bench.log. In a
    multirun every console line carries its job (``[job 3]``), so parallel jobs' lines can be told apart."""
    import lightning.pytorch  # noqa: F401  (imported here so that the handler its import installs is removed)

    propagate_lightning_logs()
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger: the file always, the console filtered
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if console_filter not in handler.filters:
                handler.addFilter(console_filter)
            if job_label:
                handler.setFormatter(logging.Formatter(
                    f"[%(asctime)s][{job_label}][%(name)s][%(levelname)s] - %(message)s"))


@contextmanager
def python_run_logging(out: Path) -> Iterator[None]:
    """A run started from Python logs as the command line's does: everything into ``<out>/mia_bench.log``, and
    mia_bench's lines (not Lightning's chatter) on the console, through the caller's handlers if it set any up,
    else through one added for the run. Everything is put back afterwards."""
    import lightning.pytorch  # noqa: F401  (its import installs the handler that propagate_lightning_logs removes)

    propagate_lightning_logs()
    root, ours = logging.getLogger(), logging.getLogger("mia_bench")
    file_handler = logging.FileHandler(Path(out) / "mia_bench.log")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = None
    if not [h for h in root.handlers if not isinstance(h, logging.FileHandler)]:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        console.addFilter(console_filter)
        console.setLevel(logging.INFO)
    levels = (root.level, ours.level)
    root.setLevel(logging.INFO)
    root.addHandler(file_handler)
    filtered = [h for h in root.handlers if h is not file_handler and console_filter not in h.filters]
    for h in filtered:
        h.addFilter(console_filter)
    if console is not None:
        root.addHandler(console)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for h in (file_handler, console):
            if h is not None:
                root.removeHandler(h)
                h.close()
        for h in filtered:
            h.removeFilter(console_filter)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])

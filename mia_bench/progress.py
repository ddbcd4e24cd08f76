"""One live progress display over a cell: models trained or loaded of K, the current training epochs, signals,
attacks; it replaces Lightning's per-model bars (whose remnants filled the console) and disappears when the cell is
done, leaving the log lines and the table.

The display is module state, set by the pipeline for the duration of a cell (``with cell_progress(...)``), because
the places that advance it (the training loops, the attack loop) are far below the pipeline and run the same
without it: every function here is a no-op when no display is active (tests, scripts, a console that is not a
terminal). Hand-written on rich's ``Progress`` because Lightning's progress bars are per fit, and a cell is K fits
or one ensemble fit plus querying and attacking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

_ACTIVE: dict = {}  # "progress": rich Progress, "tasks": name -> task id


@contextmanager
def cell_progress(num_models: object, num_attacks: int, enabled: bool = True) -> Iterator[None]:
    """Show the cell's progress while the block runs, if ``enabled`` and the console is a terminal (before the
    config is checked: a ``num_models`` that is not a number shows no total, and the check names it)."""
    num_models = num_models if isinstance(num_models, int) and not isinstance(num_models, bool) else None
    from rich.console import Console

    console = Console(stderr=False)
    if not enabled or not console.is_terminal or _ACTIVE:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    tasks = {"models": progress.add_task("models trained or loaded", total=num_models),
             "epochs": progress.add_task("epochs", total=None, visible=False),
             "signals": progress.add_task("signals (models queried)", total=num_models, visible=False),
             "attacks": progress.add_task("attacks", total=num_attacks, visible=False)}
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    with progress:
        # log lines go through rich's console so that they print above the display instead of through it
        previous = [h.setStream(progress.console.file) for h in handlers]
        _ACTIVE.update(progress=progress, tasks=tasks)
        try:
            yield
        finally:
            _ACTIVE.clear()
            for h, stream in zip(handlers, previous, strict=True):
                if stream is not None:
                    h.setStream(stream)


def advance(name: str, by: int = 1) -> None:
    """Advance the ``models``, ``signals`` or ``attacks`` count (and show it)."""
    if _ACTIVE:
        _ACTIVE["progress"].update(_ACTIVE["tasks"][name], advance=by, visible=True)


def epoch(done: int, total: int | None, label: str) -> None:
    """``done`` of ``total`` epochs of the model(s) in training, described by ``label`` (e.g. ``models 0-15``)."""
    if _ACTIVE:
        _ACTIVE["progress"].update(_ACTIVE["tasks"]["epochs"], completed=done, total=total,
                                   description=f"epochs ({label})", visible=True)

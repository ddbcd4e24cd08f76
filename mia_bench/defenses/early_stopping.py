"""Early stopping as a defense: stop when the validation loss stops improving, and keep the best model.

Lightning's ``EarlyStopping`` decides when to stop but leaves the last epoch's weights (``patience`` epochs past
the best); as a privacy defense the deployed model should be the one at the best validation loss (Keras'
``restore_best_weights``), so this subclass keeps that state in memory and restores it when training ends. It
validates on the public split (``train.val_split: public``), never on the utility test split.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping


class BestModelEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that restores the best-scoring weights at the end of training and reports the epochs
    (``defense_info``: ``epochs_trained`` and ``best_epoch``, 1-based, the epoch whose weights are kept)."""

    def __init__(self, *args, restore_best: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.restore_best = bool(restore_best)
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_epoch = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._best_state, self._best_epoch = None, 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Without validation the parent's check never runs and training would silently go to max_epochs.
        if self.monitor not in trainer.callback_metrics:
            raise ValueError(
                f"early stopping monitors {self.monitor!r}, which no validation produced: set train.validate=true "
                f"(logged: {sorted(trainer.callback_metrics)})"
            )
        super().on_train_epoch_end(trainer, pl_module)

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        previous_best = self.best_score.clone()
        super()._run_early_stopping_check(trainer)
        if self.restore_best and not torch.equal(self.best_score, previous_best):
            module = trainer.lightning_module
            self._best_state = copy.deepcopy({k: v.detach() for k, v in module.state_dict().items()})
            self._best_epoch = trainer.current_epoch + 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best and self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
        info = getattr(pl_module, "defense_info", None)
        if info is not None:
            info["epochs_trained"] = float(trainer.current_epoch)
            info["best_epoch"] = float(self._best_epoch)

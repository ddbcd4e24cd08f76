"""The plain classifier LightningModule every defense builds on.

A defense that changes the loss or the step subclasses it (mixup, advreg, MID, SAM, DP-SGD); one that
acts between steps is a callback that reads and writes the module; one that acts at inference is a *predictor*
(``defense.predict`` in the config) that wraps :meth:`ClassifierModule.clean_logits`. ``predict_logits`` is the
only path signal collection and utility use, so inference-time defenses are part of what the attacker queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia_bench import progress
from mia_bench.augment import random_crop_flip
from mia_bench.data.base import ArrayData
from mia_bench.training.loader import TensorBatchLoader


def resolve_channels_last(setting: bool | str, model: nn.Module) -> bool:
    """``channels_last``: true, false, or ``auto``: true for a model with 2-D convolutions. Measured with one CPU
    thread (training steps, batch 64, 3x32x32): NHWC is faster for every registered CNN (cnn 1.4-1.9x, lenet 1.27x,
    wrn28_2 1.27x, fastnet 1.27x, mobilenet_v2 1.6x, resnet18 1.15x, vgg11 1.12x); on a GPU it is the layout tensor
    cores run convolutions in. Outputs agree with NCHW up to float rounding (tests/test_ensemble.py)."""
    if setting == "auto":
        return any(isinstance(m, nn.Conv2d) for m in model.modules())
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"channels_last={setting!r}: expected true, false or auto")


class TrainingDiverged(ValueError):
    """A model's training loss became NaN or infinite."""


#: ``predictor(clean_logits, x) -> logits``: an inference-time defense wrapping the trained model.
Predictor = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of a ``Classifier`` with batched augmentation.

    ``optimizer`` and ``scheduler`` are partials from the config (``_partial_: true``), so the same module
    serves any recipe; ``scheduler`` receives the optimizer (and the number of epochs, see :meth:`make_scheduler`).
    Subclasses take their own arguments as keywords and pass these on unchanged (``**base``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        label_smoothing: float = 0.0,
        crop_padding: int = 0,
        hflip: bool = False,
        schedule_per: str = "epoch",
        channels_last: bool | str = "auto",
        compile_model: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}: expected a value in [0, 1)")
        if schedule_per not in ("epoch", "step"):
            raise ValueError(f"schedule_per={schedule_per!r}: expected 'epoch' or 'step' (when the schedule steps)")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.schedule_per = schedule_per
        # Speed options; neither changes what is computed beyond float rounding. channels_last: NHWC layout for the
        # model's weights and its image inputs; compile_model: torch.compile the forward pass.
        self.channels_last = resolve_channels_last(channels_last, model)
        self.compile_model = bool(compile_model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.label_smoothing = float(label_smoothing)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        # Set by train_models before fit (attach_data) and after it (predictor); plain attributes, not state.
        self.train_data: ArrayData | None = None
        self.public_data: ArrayData | None = None
        self.predictor: Predictor | None = None
        # Figures a defense reports per model (epsilon, sparsity, ...); averaged into metrics.json as defense/<key>.
        self.defense_info: dict[str, float] = {}
        # Arrays recorded during training that outlive it (e.g. per-epoch signals for +analysis=dynamics);
        # stored with the model in the cache, so a cached model brings them back.
        self.artifacts: dict[str, np.ndarray] = {}
        # The training curves as logged, one row per epoch ({"epoch", "step", metric: value}); stored with the model
        # in the cache, so a cached model's curves can be replayed into the run's logger.
        self.history: list[dict[str, float]] = []
        self._epoch_record: dict[str, float] = {}
        self._epoch_sums: dict[str, tuple[torch.Tensor, int]] = {}

    def attach_data(self, train: ArrayData, public: ArrayData | None) -> None:
        """The model's own training records and the public split (disjoint from population and test), for
        defenses that need them: advreg's reference set, AdaMixup's closed-loop leak probe, DP-SGD's N."""
        self.train_data = train
        self.public_data = public

    def release_training(self, public: ArrayData | None, predictor: Predictor | None) -> None:
        """What a trained (or restored) model keeps: the public split and its inference-time defense, not its own
        records or its trainer, which holds the loader and with it the model's copy of its training tensors (about
        300 MB per CIFAR-10 model, which K models would otherwise keep alive)."""
        self.trainer = None
        self.attach_data(None, public)
        self.predictor = predictor

    def stored_state(self) -> dict:
        """What training leaves on the module besides its weights and artifacts, as the cache stores it."""
        return {"defense_info": dict(self.defense_info), "train_mode": self.training,
                "train_loss": self.final_train_loss, "history": self.history}

    def restore(self, state_dict: dict[str, torch.Tensor], artifacts: dict[str, np.ndarray], stored: dict) -> None:
        """The module as its training left it, from a cache entry: weights (strictly: a structure that changed
        under the same key raises), then :meth:`stored_state`'s figures, curves and train/eval mode."""
        self.load_state_dict(state_dict, strict=True)
        self.defense_info = {name: float(v) for name, v in (stored.get("defense_info") or {}).items()}
        self.final_train_loss = float(stored.get("train_loss", math.nan))
        self.artifacts = dict(artifacts)
        self.history = list(stored.get("history") or [])
        self.train(bool(stored.get("train_mode", False)))

    def init_from_data(self) -> None:
        """Data-dependent initialisation of the model from its own training records, where the architecture has one
        (fastnet's whitening layer); called before training by both training paths."""
        init = getattr(self.model, "init_from_data", None)
        if init is not None and self.train_data is not None:
            init(self.train_data.x)

    def make_train_loader(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, drop_last: bool, seed: int
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The batches this module trains on (DP-SGD overrides it with Poisson sampling)."""
        return TensorBatchLoader(x, y, batch_size, shuffle=True, drop_last=drop_last, seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.layout(x))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(x, self.crop_padding, self.hflip)

    #: Which model of the cell this is (set by the training loop), for messages; the last epoch's training loss.
    index: int = -1
    final_train_loss: float = math.nan

    #: Why this module cannot train in the ensemble path (:mod:`mia_bench.training.ensemble`), or None when it
    #: can: its step must be ``prepare_batch`` -> ``model`` -> ``training_loss`` with one automatic optimizer step.
    ensemble_unsupported: str | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, target = self.prepare_batch(batch)
        return self.training_loss(self.model(self.layout(inputs)), target)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout the model runs fastest on (``channels_last`` for images when set)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def on_fit_start(self) -> None:
        if self.compile_model:
            self.model.compile()  # in place: the state_dict keys (and so cached models) stay the same

    def prepare_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The forward pass's input and what the loss needs besides the logits. Every random draw of a step
        outside the model happens here, so the ensemble path can replay each model's own draws."""
        x, y = batch
        return self.augment(x), {"y": y}

    def training_loss(self, logits: torch.Tensor, target: dict) -> torch.Tensor:
        """The loss of a step from the logits and :meth:`prepare_batch`'s targets (and the epoch's metrics)."""
        y = target["y"]
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_epoch_mean({"train/loss": loss, "train/acc": acc}, len(y))
        return loss

    #: In the ensemble path, what this member's callbacks logged this epoch (its own logger gets it at the epoch's
    #: end, see :class:`~mia_bench.training.ensemble.EnsembleModule`); None when the module trains alone.
    logged: dict[str, float] | None = None

    def log_dict(self, dictionary, *args, **kwargs) -> None:
        if self.logged is not None:
            self.logged.update({k: float(v) for k, v in dictionary.items()})
            return
        if self._trainer is not None and self._trainer.training:  # the epoch's row of the history (not validation)
            self._epoch_record.update({k: float(v) for k, v in dictionary.items()})
        super().log_dict(dictionary, *args, **kwargs)

    def log_epoch_mean(self, metrics: dict[str, torch.Tensor], n: int) -> None:
        """Accumulate per-step training metrics, logged once per epoch as record-weighted means.

        Hand-written because ``self.log(..., on_epoch=True)`` at every step costs about 1.5 ms per metric in
        Lightning's result collection: 30% of a small model's training time on the offline default (measured).
        Sums stay on the device (no host sync per step)."""
        for key, value in metrics.items():
            total, count = self._epoch_sums.get(key, (0.0, 0))
            self._epoch_sums[key] = (total + value.detach() * n, count + n)

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = {}
        self._epoch_record = {}

    def epoch_means(self) -> dict[str, torch.Tensor]:
        """This epoch's record-weighted means of the logged training metrics."""
        return {k: total / max(count, 1) for k, (total, count) in self._epoch_sums.items()}

    def check_epoch(self, means: dict[str, torch.Tensor], epoch: int) -> None:
        """Stop a model whose training loss is no longer finite, naming it, the epoch and the likely cause; it is
        never cached (the error comes before the model is stored). Keeps the epoch's loss as ``final_train_loss``."""
        loss = means.get("train/loss")
        if loss is None:
            return
        self.final_train_loss = float(loss)  # one host sync per epoch
        if not math.isfinite(self.final_train_loss):
            lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
            raise TrainingDiverged(
                f"model {self.index}: the training loss became {self.final_train_loss} in epoch {epoch + 1}; the "
                f"learning rate (train.module.optimizer.lr={lr}) is the likely cause: lower it, or clip gradients"
            )

    def on_train_epoch_end(self) -> None:
        means = self.epoch_means()
        self.check_epoch(means, self.current_epoch)
        if means:
            self.log_dict(means, prog_bar=True)
        # Lightning writes epoch-end metrics at the last batch's step (global_step - 1): the history keeps that step
        self.history.append({"epoch": self.current_epoch, "step": max(self.global_step - 1, 0), **self._epoch_record})
        progress.epoch(self.current_epoch + 1, self.trainer.max_epochs, f"model {getattr(self, 'index', '?')}")
        if not self.automatic_optimization:
            # Lightning steps schedulers only under automatic optimisation (SAM and advreg optimise by hand).
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.predict_logits(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_dict({"val/loss": loss, "val/acc": acc}, prog_bar=True, on_step=False, on_epoch=True)

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """What the attacker observes for a batch of queries: logits (or log-probabilities) of the deployed
        predictor, i.e. the model behind its inference-time defense when there is one."""
        if self.predictor is not None:
            return self.predictor(self.clean_logits, x)
        return self.clean_logits(x)

    @torch.no_grad()
    def clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The trained model's own logits in eval mode (subclasses with a stochastic head override this)."""
        was_training = self.model.training
        self.model.eval()
        out = self.model(self.layout(x))
        self.model.train(was_training)
        return out

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, trainer: pl.Trainer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The config's LR schedule on ``optimizer`` (stepped once per epoch, or per step with
        ``schedule_per: step``), or None without one.

        The schedule spans the whole run of ``trainer`` (default: this module's): a ``CosineAnnealingLR`` partial
        without ``T_max`` gets its number of epochs (or of steps), a ``OneCycleLR`` partial without ``total_steps``
        its number of steps (1 when there is no trainer or no bound)."""
        factory = self.scheduler_factory
        if factory is None:
            return None
        trainer = trainer or self._trainer
        func, given = getattr(factory, "func", factory), getattr(factory, "keywords", {})

        def steps() -> int:  # asking the trainer iterates the loader's length: only when needed
            return int(trainer.estimated_stepping_batches) if trainer is not None else 1

        if func is torch.optim.lr_scheduler.CosineAnnealingLR and "T_max" not in given:
            epochs = (trainer.max_epochs if trainer is not None else None) or 1
            return factory(optimizer, T_max=steps() if self.schedule_per == "step" else epochs)
        if func is torch.optim.lr_scheduler.OneCycleLR and "total_steps" not in given:
            return factory(optimizer, total_steps=steps())
        return factory(optimizer)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.make_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        if self.schedule_per == "step" and not self.automatic_optimization:
            raise ValueError(
                f"schedule_per=step: {type(self).__name__} optimises by hand and steps its schedule once per epoch"
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.schedule_per}}

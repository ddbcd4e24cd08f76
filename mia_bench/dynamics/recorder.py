"""The Lightning callback that snapshots a model's logits on the audit records at chosen epochs while it trains.

Snapshots go to ``module.artifacts`` as numpy arrays (saved with the model in the model cache), so the analysis
needs neither retraining nor a checkpoint per epoch on disk:

* ``dynamics/logits``: ``[E, N, A, C]`` (``A`` = 1 clean query, or the run's query augmentations);
* ``dynamics/epochs``: ``[E]`` the epochs recorded (1-based; 0 = before training);
* ``dynamics/grad_norm``: ``[N]`` per-record gradient norm of the final model (when enabled);
* ``dynamics/mc_mi``, ``dynamics/mc_std``: ``[N]`` MC-dropout disagreement (when enabled);
* ``dynamics/stop_epoch``: epochs actually trained (early stopping); ``dynamics/record_seconds``: ``[2]`` seconds
  spent snapshotting and measuring hardness (the analysis's cost to training).

The model is queried through ``module.clean_logits`` (eval mode, restored afterwards), the trained network
itself: during training no inference-time defense is attached yet (``predictor`` is set after fit), and the
trajectory should describe what training does to the model, comparable from the first epoch to the last. For a
defense with a predict wrapper (Mixup Inference) the attack table scores the wrapped model, the dynamics the
clean one.

Recording must not change training: every query runs under ``torch.random.fork_rng`` (a stochastic head such as
MID's sampled codes would otherwise consume the global RNG and shift every later dropout mask and augmentation),
in eval mode (BatchNorm statistics untouched) and without gradients. The final epoch is recorded in
``on_fit_end``, after callbacks such as early stopping have restored the deployed weights, on the device the
model trained on (Lightning's teardown has moved it to the CPU by then; the trainer loop moves it back anyway).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch

from mia_bench.dynamics.hardness import mc_dropout_uncertainty, per_sample_grad_norms
from mia_bench.training.query import collect_logits

log = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block without consuming the global torch RNG (CPU, and the CUDA device in use)."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


class DynamicsRecorder(pl.Callback):
    """Snapshot ``clean_logits`` of the audit records at ``epochs`` (the last one is the final, deployed model)."""

    ensemble_safe = True  # reads its own module at epoch boundaries only

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: list[int],
        queries: list[tuple[int, int, bool]] | None = None,
        dtype: str = "float16",
        batch_size: int = 1024,
        grad_norm: bool = True,
        grad_batch_size: int = 128,
        mc_dropout: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not epochs:
            raise ValueError("DynamicsRecorder: no epoch to record")
        self.x, self.y = x, y
        self.epochs = sorted(int(e) for e in epochs)
        self.final_epoch = self.epochs[-1]
        self.queries = list(queries) if queries else [(0, 0, False)]
        self.dtype = np.dtype(dtype)
        self.batch_size = int(batch_size)
        self.grad_norm = bool(grad_norm)
        self.grad_batch_size = int(grad_batch_size)
        self.mc_dropout = int(mc_dropout)
        self.seed = int(seed)
        self._snapshots: dict[int, np.ndarray] = {}
        self._device = torch.device("cpu")
        self._seconds = np.zeros(2)  # time spent snapshotting, measuring hardness (the analysis's training cost)

    # ------------------------------------------------------------------ querying
    @torch.no_grad()
    def snapshot(self, module: pl.LightningModule) -> np.ndarray:
        """``[N, A, C]`` clean logits of the audit records under the recorder's queries."""
        t0 = time.perf_counter()
        with preserved_rng(module.device):
            out = collect_logits(module.clean_logits, self.x, self.queries, self.batch_size, self.dtype, module.device)
        self._seconds[0] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshots = {}
        self._seconds = np.zeros(2)
        if trainer.max_epochs is not None and trainer.max_epochs != self.final_epoch:
            raise ValueError(
                f"dynamics recorder: final recorded epoch {self.final_epoch} != trainer max_epochs "
                f"{trainer.max_epochs} (train.epochs); record epochs within the run's training"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._device = pl_module.device
        if 0 in self.epochs:
            self._snapshots[0] = self.snapshot(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs and epoch != self.final_epoch:  # the final state is taken in on_fit_end
            self._snapshots[epoch] = self.snapshot(pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.to(self._device)
        self._snapshots[self.final_epoch] = self.snapshot(pl_module)
        epochs = sorted(self._snapshots)
        if epochs != self.epochs:
            log.warning(
                "dynamics: recorded epochs %s of %s (training stopped at epoch %d)",
                epochs, self.epochs, trainer.current_epoch,
            )
        artifacts = pl_module.artifacts
        artifacts["dynamics/logits"] = np.stack([self._snapshots[e] for e in epochs])
        artifacts["dynamics/epochs"] = np.asarray(epochs, dtype=np.int64)
        artifacts["dynamics/stop_epoch"] = np.asarray(trainer.current_epoch, dtype=np.int64)
        model = pl_module.model
        t0 = time.perf_counter()
        if self.grad_norm:
            artifacts["dynamics/grad_norm"] = per_sample_grad_norms(model, self.x, self.y, self.grad_batch_size)
        if self.mc_dropout > 0:
            with preserved_rng(self._device):
                torch.manual_seed(self.seed)
                mi, std = mc_dropout_uncertainty(model, self.x, self.y, self.mc_dropout, self.batch_size)
            artifacts["dynamics/mc_mi"], artifacts["dynamics/mc_std"] = mi, std
        self._seconds[1] += time.perf_counter() - t0
        artifacts["dynamics/record_seconds"] = self._seconds.copy()  # [snapshots, hardness]
        self._snapshots = {}

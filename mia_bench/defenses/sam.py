"""SAM: sharpness-aware minimisation (Foret et al., ICLR 2021); ASAM (Kwon et al. 2021) with ``adaptive``.

Each step: gradient ``g`` at ``w``; ascend to ``w + e`` with ``e = rho g / ||g||`` (ASAM: ``rho T^2 g / ||T g||``,
``T = |w|``); gradient at ``w + e``; the recipe's optimizer steps from ``w`` with that gradient. The maintained
``pytorch_optimizer.SAM`` does the perturbation, restore and base step; this module supplies the two
forward/backward passes under Lightning's manual optimization:

- the first pass runs in ``training_step``; the second in the closure given to ``opt.step(closure)``, stepped
  through Lightning's optimizer wrapper so ``trainer.global_step`` advances exactly once per SAM step;
- BatchNorm running statistics are updated on the first pass only (momentum 0 on the second:
  ``pytorch_optimizer``'s ``disable_running_stats``), so the perturbed weights never leak into them;
- both passes see the same augmented batch; the LR schedule is stepped once per epoch by ``ClassifierModule``
  (Lightning does not step schedules under manual optimization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_optimizer import SAM, disable_running_stats, enable_running_stats

from mia_bench.training.module import ClassifierModule


class SAMModule(ClassifierModule):
    """The classifier trained with SAM around the config's optimizer. ``rho``: neighbourhood radius (default
    0.05, the paper's CIFAR value); ``adaptive``: ASAM (default false; ASAM papers use a larger rho, e.g. 0.5-2).
    :class:`ClassifierModule`'s arguments (``model``, ``optimizer``, ...) are accepted as keywords through ``**base``.
    """

    ensemble_unsupported = "SAM takes two passes per step, perturbing each model by its own gradient norm"

    def __init__(self, *, rho: float = 0.05, adaptive: bool = False, **base) -> None:
        if not rho > 0:
            raise ValueError(f"rho={rho}: expected > 0 (radius of the SAM neighbourhood; e.g. 0.05)")
        super().__init__(**base)
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.automatic_optimization = False

    def configure_optimizers(self):
        trainer = self._trainer
        if trainer is not None:
            if str(trainer.precision) not in ("32-true", "32", "64-true", "64"):
                # Mixed-precision plugins run the closure before optimizer.step, which breaks SAM's two passes.
                raise ValueError(f"trainer.precision={trainer.precision!r}: SAM runs in full precision; use 32-true")
            if trainer.accumulate_grad_batches != 1:
                raise ValueError(
                    f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: SAM steps every batch; "
                    "expected 1"
                )
        base = self.optimizer_factory
        # The config's optimizer is a partial (class + keywords); SAM builds the base optimizer itself.
        base_cls, base_kwargs = getattr(base, "func", base), dict(getattr(base, "keywords", {}) or {})

        def sam_factory(params) -> SAM:
            return SAM(params, base_optimizer=base_cls, rho=self.rho, adaptive=self.adaptive, **base_kwargs)

        self.optimizer_factory = sam_factory
        try:
            return super().configure_optimizers()
        finally:
            self.optimizer_factory = base

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = self.augment(x)  # one augmented batch for both passes
        opt = self.optimizers()
        opt.zero_grad()
        loss, logits = self._loss(x, y)  # pass 1 at w: BatchNorm statistics update here only
        self.manual_backward(loss)

        def closure() -> torch.Tensor:  # pass 2 at w + e (SAM.step has perturbed the weights and zeroed grads)
            disable_running_stats(self.model)
            try:
                perturbed, _ = self._loss(x, y)
                self.manual_backward(perturbed)
            finally:
                enable_running_stats(self.model)
            return perturbed

        opt.step(closure=closure)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_epoch_mean({"train/loss": loss, "train/acc": acc}, len(y))
        return loss.detach()

"""MIA-Pruning (Wang et al., "Against Membership Inference Attack: Pruning is All You Need", IJCAI 2021, arXiv
2008.13578): ADMM weight pruning as a membership defense, as a Lightning callback over the trainer's epochs.

Phases: **pretrain** (plain training) -> **ADMM** (the W-step is the optimizer step on
``loss + sum_l rho/2 ||W_l - Z_l + U_l||_F^2``; once per epoch ``Z_l = top-k-by-magnitude(W_l + U_l)`` at the layer's
target sparsity and ``U_l += W_l - Z_l``) -> **hard prune** (keep the largest ``|W_l|``) -> **masked fine-tune**
(the mask is re-applied after every optimizer step: momentum buffers and weight decay would revive pruned weights
otherwise).

Written by hand rather than with Lightning's ``ModelPruning``: that callback has no ADMM phase and defaults to the
lottery-ticket reset (``use_lottery_ticket_hypothesis=True``), which rewinds the surviving weights to their
initialisation, discarding what pretraining and ADMM learned. ``torch.nn.utils.prune`` would reparametrise the
modules (``weight_orig`` + ``weight_mask`` + a forward pre-hook); plain masks held by the callback keep the trained
model an ordinary module whose ``state_dict`` is what it was before.

Works under automatic and manual optimization (e.g. the adversarial-regularisation module, which has two optimizers):
the ADMM gradient is added in ``on_before_optimizer_step`` (Lightning calls it once per optimizer step, after the
backward pass, before gradient clipping and the step) and only to the pruned parameters that the stepping optimizer
holds; the mask is re-applied by a ``torch.optim.Optimizer`` step post-hook on the optimizers holding pruned
parameters, i.e. right after each of *their* steps.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Modules whose ``weight`` is pruned; biases and normalisation layers (BatchNorm, GroupNorm, LayerNorm) never are.
PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def num_pruned(numel: int, sparsity: float) -> int:
    """Number of entries a layer of ``numel`` weights loses at ``sparsity`` (rounded; at least one weight is kept)."""
    return min(int(round(sparsity * numel)), numel - 1)


def topk_mask(t: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the ``numel - num_pruned(numel, sparsity)`` entries of ``t`` largest in magnitude."""
    keep = t.numel() - num_pruned(t.numel(), sparsity)
    idx = torch.topk(t.detach().abs().flatten(), keep, sorted=False).indices
    mask = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
    mask[idx] = True
    return mask.view_as(t)


def project_topk(t: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Euclidean projection onto {at most k nonzeros}: ``t`` with all but its top-k magnitudes set to zero."""
    return t * topk_mask(t, sparsity)


def _resolve_epochs(value: float | int, max_epochs: int, key: str) -> int:
    """An epoch count (a whole number >= 1, or 0) or a fraction of ``max_epochs`` (a value in (0, 1))."""
    v = float(value)
    if v < 0:
        raise ValueError(f"ADMM pruning {key}={value}: expected an epoch count >= 0 or a fraction in (0, 1)")
    if v < 1:
        return int(round(v * max_epochs))
    if v != int(v):
        raise ValueError(f"ADMM pruning {key}={value}: a value >= 1 is an epoch count and must be a whole number")
    return int(v)


def _overrides(value) -> dict[str, float]:
    """``layer_sparsity`` as ``{pattern: sparsity}``, from a mapping or (the config's form, since parameter names
    contain dots that OmegaConf keys cannot carry on the command line) a list of ``{pattern, sparsity}`` entries."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    out = {}
    for entry in value:
        if not isinstance(entry, Mapping) or set(entry) != {"pattern", "sparsity"}:
            raise ValueError(
                f"ADMM pruning layer_sparsity entry {entry!r}: expected {{pattern: <fnmatch>, sparsity: <rate>}}"
            )
        out[str(entry["pattern"])] = entry["sparsity"]
    return out


class ADMMPruning(pl.Callback):
    """ADMM weight pruning of the classifier's Linear/Conv weights over the trainer's epochs.

    Args:
        sparsity: default fraction of each prunable layer's weights set to zero (0.95 = 20x fewer weights).
        layer_sparsity: overrides, ``{pattern: sparsity}`` or ``[{pattern: ..., sparsity: ...}, ...]``; a pattern
            (``fnmatch``, e.g. ``head.weight``, ``features.*``) is matched against the parameter names of the
            classifier (``pl_module.model``); the first matching pattern wins; 0 leaves a layer dense. A pattern
            that matches nothing is an error.
        rho: ADMM penalty coefficient of ``rho/2 ||W - Z + U||^2``.
        pretrain_epochs: epochs of plain training before ADMM (count, or fraction of ``max_epochs`` if < 1).
        admm_epochs: epochs of the ADMM phase (count, or fraction); 0 = one-shot magnitude pruning after pretraining.
            The masked fine-tune takes the remaining epochs (it may be empty: the model is then pruned when training
            ends, as it is whenever training stops early).
    """

    def __init__(
        self,
        sparsity: float = 0.95,
        layer_sparsity: Mapping[str, float] | Sequence[Mapping] | None = None,
        rho: float = 1e-2,
        pretrain_epochs: float = 0.3,
        admm_epochs: float = 0.4,
    ) -> None:
        super().__init__()
        self.sparsity = self._check_sparsity(sparsity, "sparsity")
        self.layer_sparsity = {
            k: self._check_sparsity(v, f"layer_sparsity[{k!r}]") for k, v in _overrides(layer_sparsity).items()
        }
        if not float(rho) > 0:
            raise ValueError(f"ADMM pruning rho={rho}: expected > 0")
        self.rho = float(rho)
        self.pretrain_epochs_cfg = pretrain_epochs
        self.admm_epochs_cfg = admm_epochs
        for key, v in (("pretrain_epochs", pretrain_epochs), ("admm_epochs", admm_epochs)):
            _resolve_epochs(v, 1, key)  # sign / whole-number checks now; fit against max_epochs at fit start
        # Per-fit state: pruned parameters with their sparsity, ADMM variables, masks (plain tensors, by name).
        self.targets: dict[str, tuple[nn.Parameter, float]] = {}
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] | None = None
        self.pretrain_epochs = 0
        self.admm_epochs = 0
        self._hooks: list = []

    @staticmethod
    def _check_sparsity(value: float, key: str) -> float:
        v = float(value)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"ADMM pruning {key}={value}: expected a fraction in [0, 1)")
        return v

    # ------------------------------------------------------------------ setup
    def resolve_targets(self, model: nn.Module) -> dict[str, tuple[nn.Parameter, float]]:
        """The prunable weights of ``model`` (Linear/Conv ``.weight``) with their target sparsity (> 0 only)."""
        names = [
            (f"{name}.weight" if name else "weight", m.weight)
            for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), nn.Parameter)
        ]
        unused = [p for p in self.layer_sparsity if not any(fnmatch.fnmatchcase(n, p) for n, _ in names)]
        if unused:
            raise ValueError(
                f"ADMM pruning layer_sparsity patterns {unused} match no prunable weight; "
                f"prunable: {[n for n, _ in names]}"
            )
        targets = {}
        for name, param in names:
            rate = next((r for p, r in self.layer_sparsity.items() if fnmatch.fnmatchcase(name, p)), self.sparsity)
            if rate > 0 and param.requires_grad:
                targets[name] = (param, rate)
        if not targets:
            raise ValueError("ADMM pruning has nothing to prune: every prunable layer has sparsity 0")
        return targets

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise ValueError(f"ADMM pruning needs trainer.max_epochs >= 1 to lay out its phases, got {max_epochs}")
        self.pretrain_epochs = _resolve_epochs(self.pretrain_epochs_cfg, max_epochs, "pretrain_epochs")
        self.admm_epochs = _resolve_epochs(self.admm_epochs_cfg, max_epochs, "admm_epochs")
        if self.pretrain_epochs + self.admm_epochs > max_epochs:
            raise ValueError(
                f"ADMM pruning pretrain_epochs={self.pretrain_epochs_cfg} ({self.pretrain_epochs} epochs) + "
                f"admm_epochs={self.admm_epochs_cfg} ({self.admm_epochs} epochs) exceed max_epochs={max_epochs}"
            )
        self.targets = self.resolve_targets(getattr(pl_module, "model", pl_module))
        self.Z, self.U, self.masks = {}, {}, None
        log.info(
            "ADMM pruning: %d layers, epochs: pretrain %d, ADMM %d, fine-tune %d (rho=%g)",
            len(self.targets),
            self.pretrain_epochs,
            self.admm_epochs,
            max_epochs - self.pretrain_epochs - self.admm_epochs,
            self.rho,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Optimizers exist now: hook the mask onto the steps of those that hold pruned weights.
        for opt in trainer.optimizers:
            if self._held(opt):
                self._hooks.append(opt.register_step_post_hook(self._after_step))

    # ------------------------------------------------------------------ phases
    def phase(self, epoch: int) -> str:
        if epoch < self.pretrain_epochs:
            return "pretrain"
        if epoch < self.pretrain_epochs + self.admm_epochs:
            return "admm"
        return "finetune"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.admm_epochs > 0 and epoch == self.pretrain_epochs:
            self.admm_init()
        if epoch == self.pretrain_epochs + self.admm_epochs and self.masks is None:
            self.hard_prune()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.phase(trainer.current_epoch) == "admm":
            self.admm_update()

    def admm_init(self) -> None:
        """Start of the ADMM phase: ``Z = proj(W)``, ``U = 0``."""
        with torch.no_grad():
            for name, (w, rate) in self.targets.items():
                self.Z[name] = project_topk(w.detach(), rate)
                self.U[name] = torch.zeros_like(w)

    def admm_update(self) -> None:
        """Once per ADMM epoch: ``Z = proj_topk(W + U)`` (the layer's target sparsity), then ``U += W - Z``."""
        with torch.no_grad():
            for name, (w, rate) in self.targets.items():
                self.Z[name] = project_topk(w.detach() + self.U[name], rate)
                self.U[name] += w.detach() - self.Z[name]

    def hard_prune(self) -> None:
        """Fix the masks (largest ``|W|`` per layer) and zero the pruned weights; the ADMM variables are dropped."""
        with torch.no_grad():
            self.masks = {name: topk_mask(w, rate) for name, (w, rate) in self.targets.items()}
            self._apply_masks()
        self.Z, self.U = {}, {}

    def _apply_masks(self, params: set[int] | None = None) -> None:
        with torch.no_grad():
            for name, (w, _) in self.targets.items():
                if params is None or id(w) in params:
                    w.mul_(self.masks[name])

    # ------------------------------------------------------------------ per step
    def _held(self, optimizer) -> set[int]:
        """ids of the pruned parameters that ``optimizer`` updates."""
        opt = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> torch optimizer
        ids = {id(p) for group in opt.param_groups for p in group["params"]}
        return {id(w) for w, _ in self.targets.values() if id(w) in ids}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        phase = self.phase(trainer.current_epoch)
        if phase == "pretrain" and self.masks is None:
            return
        held = self._held(optimizer)
        with torch.no_grad():
            for name, (w, _) in self.targets.items():
                if id(w) not in held:
                    continue
                if self.masks is not None:  # fine-tune: pruned weights get no gradient
                    if w.grad is not None:
                        w.grad.mul_(self.masks[name])
                elif phase == "admm":  # W-step: gradient of rho/2 ||W - Z + U||^2
                    term = self.rho * (w.detach() - self.Z[name] + self.U[name])
                    if w.grad is None:
                        w.grad = term
                    else:
                        w.grad.add_(term)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.masks is not None:
            self._apply_masks(self._held(optimizer))

    # ------------------------------------------------------------------ end
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.masks is None:  # phases ended with training, or training stopped early: deploy a pruned model
            self.hard_prune()
        info = getattr(pl_module, "defense_info", None)
        if info is not None:
            info.update(self.summary(getattr(pl_module, "model", pl_module)))

    def summary(self, model: nn.Module) -> dict[str, float]:
        """Achieved sparsity over the pruned layers; nonzero and total parameters of the whole classifier (biases
        and norms included); compression = total / nonzero."""
        with torch.no_grad():
            pruned_total = sum(w.numel() for w, _ in self.targets.values())
            pruned_zero = sum(int((w == 0).sum()) for w, _ in self.targets.values())
            total = sum(p.numel() for p in model.parameters())
            nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        return {
            "sparsity": pruned_zero / pruned_total,
            "nonzero_params": float(nonzero),
            "total_params": float(total),
            "compression": total / max(nonzero, 1),
        }


__all__ = ["ADMMPruning", "num_pruned", "project_topk", "topk_mask"]

"""Mixup (Zhang et al. 2018) and AdaMixup (seed arXiv 2501.02182): training on convex combinations of records.

Mixup blurs the decision on any single training record, which is why it is studied as a membership defense.
``MixupModule`` is the loss; ``AdaMixupScheduler`` is AdaMixup's *dynamic mixing ratio*, a Lightning callback that
writes the module's ``ratio`` at the start of every epoch, either from a fixed schedule (``linear | cosine |
step``) or in closed loop from a cheap leak signal measured at the end of each epoch (the paper's exact schedule
is not public, so both are the benchmark's choices and are exposed as config keys).

Conventions (one definition everywhere): a mixed record is ``lam * x_i + (1 - lam) * x_j`` where ``x_i`` is the
batch's own record and ``x_j`` its partner under a random permutation of the batch. ``lam`` is drawn from
``Beta(alpha, alpha)`` once per batch (as in Zhang et al.'s reference implementation; ``per_sample=true`` draws
one per record, as Mixup Inference's training code does) unless the module's ``ratio`` is set, in which case every
pair uses ``lam = ratio`` exactly. ``ratio`` is the weight of the dominant record, in ``[0.5, 1]``: 0.5 = strongly
mixed, 1 = no mixing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from mia_bench.data.base import ArrayData
from mia_bench.training.module import ClassifierModule

LABEL_MODES = ("soft", "dominant")
SCHEDULES = ("linear", "cosine", "step")
SIGNALS = ("advantage", "loss_gap")


@dataclass
class MixedBatch:
    """One mixed batch: inputs, the two label sets, the per-row weight of ``y_a`` and the partner permutation."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor  # [B], weight of x_i / y_a in each row
    perm: torch.Tensor  # [B], row j = perm[i] is row i's partner


def _check_ratio(ratio: float | None, key: str = "ratio") -> float | None:
    if ratio is None:
        return None
    ratio = float(ratio)
    if not 0.5 <= ratio <= 1.0:
        raise ValueError(f"mixup {key}={ratio}: expected a value in [0.5, 1] (0.5 = strongly mixed, 1 = no mixing)")
    return ratio


class MixupModule(ClassifierModule):
    """Classifier trained on mixed pairs: loss ``lam CE(y_i) + (1 - lam) CE(y_j)`` (soft) or ``CE(y_dominant)``.

    ``alpha`` is the Beta parameter (default 1.0, i.e. ``lam`` uniform on [0, 1]); ``alpha=0`` turns mixing off and
    the step is exactly the plain classifier's (the reference code's convention), which is how Mixup Inference is
    run over an undefended model. ``per_sample`` draws one weight per record instead of one per batch. ``ratio``
    (None by default) fixes ``lam`` for every pair; AdaMixup's scheduler writes it each epoch.
    ``label_mode='dominant'`` trains on the label of the record with the larger weight (AdaMixup's "adaptive label
    allocation"; ties go to ``y_i``). Augmentation runs before mixing. :class:`ClassifierModule`'s arguments
    (``model``, ``optimizer``, ...) are accepted as keywords through ``**base``.
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        ratio: float | None = None,
        label_mode: str = "soft",
        per_sample: bool = False,
        **base,
    ) -> None:
        super().__init__(**base)
        alpha = float(alpha)
        if not (alpha >= 0.0 and math.isfinite(alpha)):
            raise ValueError(f"mixup alpha={alpha}: expected a finite value >= 0 (0 = no mixing)")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"mixup label_mode={label_mode!r}: expected one of {list(LABEL_MODES)}")
        self.alpha = alpha
        self.ratio = _check_ratio(ratio)
        self.label_mode = label_mode
        self.per_sample = bool(per_sample)

    @property
    def mixing(self) -> bool:
        return self.ratio is not None or self.alpha > 0

    def draw_lam(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """``[B]`` weights of each row's own record: the scheduled ratio, or ``Beta(alpha, alpha)`` draws, one per
        batch (or per record with ``per_sample``) from the global torch RNG, seeded per model by the training loop."""
        if self.ratio is not None:
            return torch.full((batch_size,), self.ratio, device=device)
        beta = torch.distributions.Beta(self.alpha, self.alpha)
        lam = beta.sample((batch_size,)) if self.per_sample else beta.sample().expand(batch_size)
        return lam.float().to(device)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        """Pair each record with a random permutation partner and mix inputs with the drawn weight."""
        perm = torch.randperm(len(x)).to(x.device)
        lam = self.draw_lam(len(x), x.device)
        w = lam.view(-1, *([1] * (x.dim() - 1)))
        return MixedBatch(w * x + (1 - w) * x[perm], y, y[perm], lam, perm)

    def mixup_loss(self, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Soft: ``mean(lam CE(y_a) + (1 - lam) CE(y_b))`` (= CE on the mixed one-hot targets, as CE is linear in
        the target); dominant: ``mean(CE(y_a if lam >= 0.5 else y_b))``. Both honour ``label_smoothing``."""
        if self.label_mode == "dominant":
            return F.cross_entropy(logits, self.dominant_labels(y_a, y_b, lam), label_smoothing=self.label_smoothing)
        ce_a = F.cross_entropy(logits, y_a, label_smoothing=self.label_smoothing, reduction="none")
        ce_b = F.cross_entropy(logits, y_b, label_smoothing=self.label_smoothing, reduction="none")
        return (lam * ce_a + (1 - lam) * ce_b).mean()

    @staticmethod
    def dominant_labels(y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return torch.where(lam >= 0.5, y_a, y_b)

    def prepare_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if not self.mixing:
            return super().prepare_batch(batch)
        x, y = batch
        mixed = self.mix(self.augment(x), y)
        return mixed.x, {"y_a": mixed.y_a, "y_b": mixed.y_b, "lam": mixed.lam}

    def training_loss(self, logits: torch.Tensor, target: dict) -> torch.Tensor:
        if "lam" not in target:
            return super().training_loss(logits, target)
        y_a, y_b, lam = target["y_a"], target["y_b"], target["lam"]
        loss = self.mixup_loss(logits, y_a, y_b, lam)
        acc = (logits.argmax(-1) == self.dominant_labels(y_a, y_b, lam)).float().mean()
        self.log_epoch_mean({"train/loss": loss, "train/acc": acc, "train/lam": lam.mean()}, len(y_a))
        return loss


class AdaMixupScheduler(pl.Callback):
    """AdaMixup's dynamic mixing ratio: writes ``module.ratio`` (weight of the dominant record, in [0.5, 1]) at
    the start of every epoch.

    Open loop (``closed_loop=false``): ``schedule`` goes from ``start`` (first epoch) to ``end`` (last epoch of
    ``trainer.max_epochs``): ``linear``; ``cosine`` (half cosine); ``step`` (piecewise constant: ``steps`` equal
    phases, or explicit ``milestones`` epochs, levels evenly spaced from ``start`` to ``end``).

    Closed loop (``closed_loop=true``): the ratio starts at ``start``; after every epoch a leak signal is measured
    on a fixed probe of up to ``probe_size`` of the model's own training records (``module.train_data``) and as
    many public records (``module.public_data``), and the ratio moves ``step_size`` toward more mixing (down) when
    the signal is above ``target`` and toward less mixing (up) otherwise, clipped to ``[min_ratio, max_ratio]``.
    ``signal='advantage'``: the loss attack's max(TPR - FPR) between the two probes; ``'loss_gap'``: mean public
    loss minus mean training loss. The test split is never touched. Written by hand: no library schedules a
    per-epoch, data-dependent scalar of a LightningModule. ``conf/defense/adamixup.yaml`` runs the closed loop by
    default (it reduced LiRA the most on the offline default; the class default is the open-loop schedule).

    Logs ``adamixup/ratio`` (and ``adamixup/signal``) each epoch; ``module.defense_info`` gets ``ratio_final``
    (the ratio of the last epoch, which trained the deployed model), ``ratio_mean`` and, in closed loop,
    ``signal_final`` (measured on the deployed model).
    """

    ensemble_safe = True  # acts on its own module at epoch boundaries only (one controller per model)

    def __init__(
        self,
        schedule: str = "linear",
        start: float = 0.5,
        end: float = 0.6,
        steps: int = 4,
        milestones: Sequence[int] | None = None,
        closed_loop: bool = False,
        signal: str = "advantage",
        target: float = 0.07,
        step_size: float = 0.05,
        min_ratio: float = 0.5,
        max_ratio: float = 1.0,
        probe_size: int = 500,
        probe_seed: int = 0,
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"adamixup schedule={schedule!r}: expected one of {list(SCHEDULES)}")
        if signal not in SIGNALS:
            raise ValueError(f"adamixup signal={signal!r}: expected one of {list(SIGNALS)}")
        self.start = _check_ratio(start, "start")
        self.end = _check_ratio(end, "end")
        self.min_ratio = _check_ratio(min_ratio, "min_ratio")
        self.max_ratio = _check_ratio(max_ratio, "max_ratio")
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"adamixup min_ratio={min_ratio} > max_ratio={max_ratio}: expected min <= max")
        if int(steps) < 2:
            raise ValueError(f"adamixup steps={steps}: expected an integer >= 2 (phases of the step schedule)")
        if milestones is not None:
            milestones = [int(m) for m in milestones]
            if not milestones or milestones != sorted(set(milestones)) or milestones[0] < 1:
                raise ValueError(
                    f"adamixup milestones={milestones}: expected a non-empty increasing list of epochs >= 1"
                )
        if not float(step_size) > 0:
            raise ValueError(f"adamixup step_size={step_size}: expected > 0")
        if int(probe_size) < 1:
            raise ValueError(f"adamixup probe_size={probe_size}: expected >= 1")
        self.schedule = schedule
        self.steps = int(steps)
        self.milestones = milestones
        self.closed_loop = bool(closed_loop)
        self.signal = signal
        self.target = float(target)
        self.step_size = float(step_size)
        self.probe_size = int(probe_size)
        self.probe_seed = int(probe_seed)
        self.batch_size = int(batch_size)
        self.ratio = self.start
        self.history: list[float] = []  # ratio of every epoch
        self.signals: list[float] = []  # closed loop: signal measured after every epoch
        self._probe: tuple[ArrayData, ArrayData] | None = None

    # ---- open loop ------------------------------------------------------------------------------------------
    def scheduled_ratio(self, epoch: int, max_epochs: int) -> float:
        """The ratio of ``epoch`` (0-based) when training lasts ``max_epochs``: ``start`` at the first epoch,
        ``end`` at the last."""
        t = epoch / max(max_epochs - 1, 1)
        if self.schedule == "linear":
            frac = t
        elif self.schedule == "cosine":
            frac = (1 - math.cos(math.pi * t)) / 2
        elif self.milestones is not None:
            frac = sum(epoch >= m for m in self.milestones) / len(self.milestones)
        else:
            frac = min(epoch * self.steps // max(max_epochs, 1), self.steps - 1) / (self.steps - 1)
        return self.start + (self.end - self.start) * frac

    # ---- closed loop ----------------------------------------------------------------------------------------
    def probe(self, module: ClassifierModule) -> tuple[ArrayData, ArrayData]:
        """Fixed subsets (seeded, chosen once per fit) of the model's training records and of the public split."""
        train, public = module.train_data, module.public_data
        if public is None or len(public) == 0:
            raise ValueError(
                "adamixup closed_loop needs public records for its leak probe but the public split is empty: set "
                "dataset.public_size to a positive count or fraction (e.g. dataset.public_size=200)"
            )
        if train is None or len(train) == 0:
            raise ValueError("adamixup closed_loop needs the module's training records (module.attach_data)")
        m = min(self.probe_size, len(train), len(public))
        g = torch.Generator().manual_seed(self.probe_seed)
        return (
            train.subset(torch.randperm(len(train), generator=g)[:m]),
            public.subset(torch.randperm(len(public), generator=g)[:m]),
        )

    @torch.no_grad()
    def _losses(self, module: ClassifierModule, data: ArrayData) -> np.ndarray:
        out = []
        for s in range(0, len(data), self.batch_size):
            x = data.x[s : s + self.batch_size].to(module.device)
            y = data.y[s : s + self.batch_size].to(module.device)
            out.append(F.cross_entropy(module.clean_logits(x).float(), y, reduction="none").cpu())
        return torch.cat(out).double().numpy()

    def measure(self, module: ClassifierModule, probe: tuple[ArrayData, ArrayData] | None = None) -> float:
        """The leak signal of the module's current weights on the probe (higher = more leakage)."""
        train, public = probe if probe is not None else self.probe(module)
        loss_in, loss_out = self._losses(module, train), self._losses(module, public)
        if self.signal == "loss_gap":
            return float(loss_out.mean() - loss_in.mean())
        labels = np.r_[np.ones(len(loss_in)), np.zeros(len(loss_out))]
        fpr, tpr, _ = roc_curve(labels, -np.r_[loss_in, loss_out])  # loss attack: score = -loss
        return float(max(0.0, (tpr - fpr).max()))

    def update(self, signal: float) -> float:
        """One closed-loop step: more mixing (lower ratio) when the signal is above target, less otherwise."""
        step = -self.step_size if signal > self.target else self.step_size
        self.ratio = float(min(max(self.ratio + step, self.min_ratio), self.max_ratio))
        return self.ratio

    # ---- Lightning hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "ratio"):
            raise ValueError(
                "AdaMixupScheduler writes the mixing ratio of a MixupModule: set "
                "train.module._target_=mia_bench.defenses.mixup.MixupModule"
            )
        self.ratio = float(min(max(self.start, self.min_ratio), self.max_ratio)) if self.closed_loop else self.start
        self.history, self.signals = [], []
        self._probe = self.probe(pl_module) if self.closed_loop else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.closed_loop:
            self.ratio = self.scheduled_ratio(trainer.current_epoch, int(trainer.max_epochs or 1))
        pl_module.ratio = self.ratio
        self.history.append(self.ratio)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        used = pl_module.ratio
        metrics = {"adamixup/ratio": float(used)}
        if self.closed_loop:
            signal = self.measure(pl_module, self._probe)
            self.signals.append(signal)
            metrics["adamixup/signal"] = signal
            self.update(signal)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        info = getattr(pl_module, "defense_info", None)
        if info is None or not self.history:
            return
        info["ratio_final"] = float(self.history[-1])
        info["ratio_mean"] = float(np.mean(self.history))
        if self.signals:
            info["signal_final"] = float(self.signals[-1])

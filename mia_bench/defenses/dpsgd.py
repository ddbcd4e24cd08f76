"""DP-SGD (Abadi et al. 2016) with Opacus: per-sample clipping, Gaussian noise, Poisson sampling, accounting.

Opacus' Lightning helpers fail under ``lightning.pytorch`` and ``PrivacyEngine.make_private`` needs a
``DataLoader``, so this module wires Opacus' building blocks the way ``make_private`` does
(``opacus/privacy_engine.py``): per-sample gradient hooks on the model (``GradSampleHooks``, Opacus 1.6's
non-wrapping form of ``GradSampleModule``: the ``Classifier`` stays as it is, so prediction needs no unwrapping),
a ``DPOptimizer`` around the recipe's optimizer (clip each record's gradient to ``max_grad_norm``, sum, add
``N(0, (noise_multiplier * max_grad_norm)^2)``, divide by the *expected* batch size ``q * N``), and an accountant
stepped by the optimizer's step hook with the sampling rate ``q``. Lightning's automatic optimization drives it
unchanged: ``DPOptimizer.step(closure)`` runs the closure (forward, backward), then clips, noises and steps.

The accountant's guarantee assumes Poisson sampling, so the module trains on its own loader
(:class:`PoissonBatchLoader`): every record joins each batch independently with probability
``q = batch_size / N``, ``round(1 / q)`` batches per epoch; an empty batch is still a step (noise only), as in
Opacus' ``DPDataLoader``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from mia_bench.metrics import default_delta  # noqa: F401  (re-exported: DP-SGD's default delta)
from mia_bench.training.module import ClassifierModule

log = logging.getLogger(__name__)

#: Accountants offered (Opacus names): PRV (Gopi et al. 2021, tightest) and RDP (Mironov 2017).
ACCOUNTANTS = ("prv", "rdp")


class PoissonBatchLoader:
    """``steps`` batches per epoch, each holding every record independently with probability ``sample_rate``.

    Batches are drawn from the loader's own seeded generator (so a model's batches depend on its seed alone) and
    gathered by one tensor index per batch. Batch sizes vary (Binomial(N, q)); a batch may be empty.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sample_rate: float, steps: int, seed: int = 0) -> None:
        if len(x) == 0:
            raise ValueError("cannot sample batches from an empty set of records")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate}: expected a value in (0, 1]")
        if steps < 1:
            raise ValueError(f"steps={steps}: expected a positive number of batches per epoch")
        self.x, self.y = x, y
        self.sample_rate = float(sample_rate)
        self.steps = int(steps)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        for _ in range(self.steps):
            keep = torch.rand(n, generator=self.generator) < self.sample_rate
            idx = keep.nonzero().squeeze(1).to(self.x.device)
            yield self.x[idx], self.y[idx]


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Opacus' fixes (BatchNorm -> GroupNorm with gcd(32, C) groups), then strict validation.

    BatchNorm normalises each record with its batch-mates' statistics, so one record's gradient is not its own
    and clipping would not bound its influence; GroupNorm normalises within the record.
    """
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        model = ModuleValidator.fix(model)
        log.warning(
            "DP-SGD: replaced %d BatchNorm layer(s) (%s) by GroupNorm: BatchNorm mixes the records of a batch, so "
            "per-sample gradients and their clipping would not bound one record's influence",
            len(norms),
            ", ".join(norms),
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(
            "DP-SGD: the model has layers Opacus cannot train privately after its fixes: "
            + "; ".join(str(e) for e in errors)
        )
    return model


@functools.lru_cache(maxsize=64)
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus' binary search for the noise multiplier reaching ``target_epsilon`` after ``steps`` steps. Cached:
    the K models of a cell share N, q and the step count, and the PRV search takes seconds."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )


@functools.lru_cache(maxsize=256)
def spent_epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of an accountant history ``((noise_multiplier, sample_rate, steps), ...)`` (cached:
    the K models of a cell usually share it)."""
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf  # a noiseless step releases an exact gradient: no finite guarantee
    acc = create_accountant(mechanism=accountant)
    acc.history = [tuple(h) for h in history]
    try:
        return float(acc.get_epsilon(delta=delta))
    except (OverflowError, ValueError, FloatingPointError) as err:
        if accountant == "rdp":
            raise
        # PRV's discretisation domain can overflow at very low noise; RDP still gives a valid (looser) bound.
        log.warning("DP-SGD: the PRV accountant failed (%s); reporting the RDP bound instead", err)
        return spent_epsilon(history, delta, "rdp")


class DPSGDModule(ClassifierModule):
    """The classifier trained with DP-SGD; reports ``defense_info``: ``epsilon`` (spent, at ``delta``),
    ``delta``, ``noise_multiplier`` (and ``sample_rate``, ``steps``).

    Configure exactly one of ``noise_multiplier`` (sigma, noise std / ``max_grad_norm``) and ``target_epsilon``
    (sigma is then found for the planned steps, ``trainer.max_epochs * round(1/q)``, at ``q`` and ``delta``).
    ``delta`` defaults to :func:`default_delta` of the model's training-set size. :class:`ClassifierModule`'s
    other arguments (``optimizer``, ...) are accepted as keywords through ``**base``; ``model`` is first made
    Opacus-compatible (:func:`make_dp_compatible`).
    """

    ensemble_unsupported = "DP-SGD clips per-sample gradients of one model (Opacus hooks) on Poisson-sampled batches"

    def __init__(
        self,
        model: nn.Module,
        *,
        max_grad_norm: float = 1.0,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        delta: float | None = None,
        accountant: str = "prv",
        **base,
    ) -> None:
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm}: expected > 0 (the per-sample clipping norm C)")
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ValueError(
                f"noise_multiplier={noise_multiplier}, target_epsilon={target_epsilon}: set exactly one of them "
                "(the other to null)"
            )
        if noise_multiplier is not None and not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier={noise_multiplier}: expected >= 0")
        if target_epsilon is not None and not target_epsilon > 0:
            raise ValueError(f"target_epsilon={target_epsilon}: expected > 0")
        if delta is not None and not 0 < delta < 1:
            raise ValueError(f"delta={delta}: expected a value in (0, 1) or null (1/N rounded down to a power of 10)")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant={accountant!r}: expected one of {list(ACCOUNTANTS)}")
        super().__init__(model=make_dp_compatible(model), **base)
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = None if noise_multiplier is None else float(noise_multiplier)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.delta = None if delta is None else float(delta)
        self.accountant_name = accountant
        # Set by make_train_loader (the privacy analysis depends on N and the sampling) and configure_optimizers.
        self.loader: PoissonBatchLoader | None = None
        self.accountant = None
        self.grad_hooks: GradSampleHooks | None = None
        self.dp_optimizer: DPOptimizer | None = None
        self.sigma: float | None = None

    # ------------------------------------------------------------------------------------------------ data
    def make_train_loader(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, drop_last: bool, seed: int
    ) -> PoissonBatchLoader:
        """Poisson sampling with ``q = batch_size / N`` and ``round(1 / q)`` steps per epoch (``drop_last`` does
        not apply: batch sizes are random)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be a positive integer")
        n = len(x)
        q = min(1.0, batch_size / n) if n else 1.0
        self.loader = PoissonBatchLoader(x, y, q, max(1, round(1 / q)), seed)
        return self.loader

    @property
    def sample_rate(self) -> float:
        return self._require_loader().sample_rate

    @property
    def resolved_delta(self) -> float:
        return self.delta if self.delta is not None else default_delta(len(self._require_loader().x))

    def _require_loader(self) -> PoissonBatchLoader:
        if self.loader is None:
            raise ValueError(
                "DPSGDModule trains on its own Poisson-sampling loader: build the training batches with "
                "module.make_train_loader(...) before fit (the privacy accounting assumes Poisson sampling)"
            )
        return self.loader

    # ------------------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        loader = self._require_loader()
        trainer = self.trainer
        if trainer.gradient_clip_val:
            raise ValueError(
                f"trainer.gradient_clip_val={trainer.gradient_clip_val}: DP-SGD clips each record's gradient itself "
                "(max_grad_norm); set trainer.gradient_clip_val=null"
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: DP-SGD with Poisson sampling "
                "takes one optimizer step per batch; expected 1"
            )
        if str(trainer.precision) not in ("32-true", "32", "64-true", "64"):
            raise ValueError(f"trainer.precision={trainer.precision!r}: DP-SGD runs in full precision; use 32-true")
        q, delta = loader.sample_rate, self.resolved_delta
        sigma = self.noise_multiplier
        if sigma is None:
            epochs = trainer.max_epochs
            if epochs is None or epochs < 1:
                raise ValueError(
                    f"target_epsilon={self.target_epsilon} needs a bounded number of epochs (trainer.max_epochs="
                    f"{epochs}): the noise is chosen for the planned number of steps"
                )
            steps = epochs * len(loader)
            sigma = noise_for_target(self.target_epsilon, delta, q, steps, self.accountant_name)
            log.info(
                "DP-SGD: noise multiplier %.4f reaches epsilon %.3g at delta %.0e after %d steps (q=%.4f)",
                sigma,
                self.target_epsilon,
                delta,
                steps,
                q,
            )
        self.sigma = float(sigma)

        # Per-sample gradients by hooks on the model itself; "mean": the loss is the batch mean, the hooks scale
        # the backprops by the batch size to recover per-record gradients (as make_private does).
        if self.grad_hooks is not None:
            self.grad_hooks.cleanup()
        self.grad_hooks = GradSampleHooks(self.model, batch_first=True, loss_reduction="mean", strict=True)
        self.grad_hooks.forbid_grad_accumulation()
        base = self.optimizer_factory(self.parameters())
        self.dp_optimizer = DPOptimizer(
            base,
            noise_multiplier=self.sigma,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=q * len(loader.x),  # the mean divides by the expected, not the drawn, batch size
            loss_reduction="mean",
        )
        self.accountant = create_accountant(mechanism=self.accountant_name)
        self.dp_optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=q))
        if self.scheduler_factory is None:
            return self.dp_optimizer
        # The parent builds the schedule on whatever optimizer factory it is given.
        factory, self.optimizer_factory = self.optimizer_factory, lambda _params: self.dp_optimizer
        try:
            return super().configure_optimizers()
        finally:
            self.optimizer_factory = factory

    def on_train_start(self) -> None:
        if self.trainer.train_dataloader is not self.loader:
            raise ValueError(
                "DPSGDModule must train on the loader returned by its make_train_loader (Poisson sampling): the "
                "privacy accounting assumes it"
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(self.augment(x))
        if len(y) == 0:
            # An empty Poisson batch: still a (noise-only) step; a sum keeps the loss finite (0) and the graph alive.
            return F.cross_entropy(logits, y, reduction="sum")
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_epoch_mean({"train/loss": loss, "train/acc": acc}, len(y))
        return loss

    def on_train_end(self) -> None:
        """Report the privacy spent and take the hooks off, so the trained model is a plain ``Classifier``."""
        history = tuple(tuple(h) for h in self.accountant.history) if self.accountant is not None else ()
        delta = self.resolved_delta
        self.defense_info.update(
            epsilon=spent_epsilon(history, delta, self.accountant_name),
            delta=delta,
            noise_multiplier=self.sigma,
            sample_rate=self.sample_rate,
            steps=float(sum(h[2] for h in history)),
        )
        if self.grad_hooks is not None:
            self.grad_hooks.cleanup()
            self.grad_hooks = None
        for p in self.model.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad

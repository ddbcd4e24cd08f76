"""Adversarial regularisation (Nasr, Shokri, Houmansadr, "Machine Learning with Membership Privacy using Adversarial
Regularization", CCS 2018): a min-max game between the classifier f and an inference model h.

h(f(x), y) -> P(member) is trained to tell the classifier's training records (label 1) from a reference set
(label 0) -- here the **public split**, which is disjoint from the membership population and from the utility test
split (the authors' public code uses the test loader as reference set, so training sees the records utility is
measured on). After ``warmup_epochs`` of plain training, every classifier step is preceded by ``k`` steps of h, each
on a fresh member batch (sampled from the model's own training records) and a fresh reference batch; the classifier
then minimises

    CE(f(x), y) + lam * mean_batch log h(f(x), y)            (gain: log; the paper's Algorithm 1)
    CE(f(x), y) + lam * mean_batch h(f(x), y)                (gain: linear; the authors' public code, which writes
                                                              alpha * (mean(h) - 0.5): the constant changes nothing)

h maximises the paper's gain ``mean log h(members) + mean log(1 - h(reference))``, i.e. minimises the sum of the two
binary cross-entropies (the public code uses an MSE on the sigmoid output instead).

h has Nasr et al.'s shape: a prediction branch on the softmax vector and a label branch on the one-hot label, each a
ReLU MLP, concatenated and merged by a third MLP into one logit. Their code uses widths [1024, 512, 64] (prediction),
[128, 64] (label) and [512, 256, 128, 64] (merge), with weights drawn from N(0, 0.01); the defaults here are smaller
(10-class tasks on CPU) and use PyTorch's default initialisation; every width is a config key.

Manual optimisation with two optimizers (classifier: the recipe's optimizer partial; h: its own, Adam by default);
the classifier's lr scheduler is stepped once per epoch by ``ClassifierModule``, since Lightning does not step
schedulers under manual optimisation. Augmentation and label smoothing apply to the classifier's step as in the base
module; h sees the classifier's eval-mode outputs on clean records, as the attacker would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mia_bench.training.module import ClassifierModule

GAINS = ("log", "linear")


def _mlp(in_dim: int, widths: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(in_dim, int(w)), nn.ReLU()]
        in_dim = int(w)
    return nn.Sequential(*layers), in_dim


class InferenceModel(nn.Module):
    """Nasr et al.'s membership inference model: ``h(probs, onehot) -> logit of P(member)``."""

    def __init__(
        self,
        num_classes: int,
        probs_hidden: Sequence[int] = (256, 64),
        label_hidden: Sequence[int] = (64,),
        combine_hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__()
        for key, widths in (
            ("probs_hidden", probs_hidden),
            ("label_hidden", label_hidden),
            ("combine_hidden", combine_hidden),
        ):
            if not widths or any(int(w) < 1 for w in widths):
                raise ValueError(f"advreg {key}={list(widths)}: expected a non-empty list of positive widths")
        self.num_classes = int(num_classes)
        self.probs_branch, d_p = _mlp(num_classes, probs_hidden)
        self.label_branch, d_l = _mlp(num_classes, label_hidden)
        combine, d_c = _mlp(d_p + d_l, combine_hidden)
        self.combine = nn.Sequential(*combine, nn.Linear(d_c, 1))

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.probs_branch(probs), self.label_branch(onehot)], dim=1)
        return self.combine(z).squeeze(1)


class AdvRegModule(ClassifierModule):
    """The classifier module trained in Nasr et al.'s min-max game (see the module docstring).

    Args (:class:`ClassifierModule`'s, e.g. ``model`` and ``optimizer``, are accepted as keywords through
    ``**base``):
        lam: weight of the privacy gain in the classifier's loss (default 1, the paper's; the public code uses 3).
        k: steps of h per classifier step after the warm-up.
        warmup_epochs: epochs of plain training (no h, no gain) first.
        gain: ``log`` (paper) or ``linear`` (public code), see the module docstring.
        attack_optimizer: partial called with h's parameters (default Adam, lr 1e-3).
        attack_batch_size: records per member and per reference batch of an h step (default: the classifier's
            batch size; capped at the reference set's size).
        probs_hidden, label_hidden, combine_hidden: h's widths.
    """

    ensemble_unsupported = "the min-max game steps an inference model and the classifier by hand, on its own batches"

    def __init__(
        self,
        *,
        lam: float = 1.0,
        k: int = 1,
        warmup_epochs: int = 3,
        gain: str = "log",
        attack_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        attack_batch_size: int | None = None,
        probs_hidden: Sequence[int] = (256, 64),
        label_hidden: Sequence[int] = (64,),
        combine_hidden: Sequence[int] = (64,),
        **base,
    ) -> None:
        super().__init__(**base)
        if not float(lam) >= 0:
            raise ValueError(f"advreg lam={lam}: expected >= 0")
        if int(k) != k or k < 1:
            raise ValueError(f"advreg k={k}: expected a whole number of h steps >= 1")
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"advreg warmup_epochs={warmup_epochs}: expected a whole number of epochs >= 0")
        if gain not in GAINS:
            raise ValueError(f"advreg gain={gain!r}: expected one of {list(GAINS)}")
        if attack_batch_size is not None and int(attack_batch_size) < 1:
            raise ValueError(f"advreg attack_batch_size={attack_batch_size}: expected a positive integer or null")
        self.automatic_optimization = False
        self.lam = float(lam)
        self.k = int(k)
        self.warmup_epochs = int(warmup_epochs)
        self.gain = gain
        self.attack_optimizer_factory = attack_optimizer or (lambda p: torch.optim.Adam(p, lr=1e-3))
        self.attack_batch_size = None if attack_batch_size is None else int(attack_batch_size)
        num_classes = int(getattr(self.model, "num_classes", 0) or self.model.head.out_features)
        self.num_classes = num_classes
        self.inference_model = InferenceModel(num_classes, probs_hidden, label_hidden, combine_hidden)
        # Step counters (for logs and tests): optimizer steps of h and of the classifier since construction.
        self.h_steps = 0
        self.f_steps = 0
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ data
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.public_data is None or len(self.public_data) == 0:
            raise ValueError(
                "advreg needs a reference set of non-members and uses the public split, which is empty: set "
                "dataset.public_size to a positive count or fraction (e.g. dataset.public_size=200)"
            )
        if self.train_data is None or len(self.train_data) == 0:
            raise ValueError("advreg needs the model's training records (attach_data) to draw member batches for h")
        max_epochs = self.trainer.max_epochs if self.trainer is not None else None
        if max_epochs is not None and max_epochs > 0 and self.warmup_epochs >= max_epochs:
            raise ValueError(
                f"advreg warmup_epochs={self.warmup_epochs} >= max_epochs={max_epochs}: the adversarial phase would "
                "never run"
            )
        self._cache = {}

    def _data(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The member (own training records) or reference (public split) tensors, on the module's device."""
        if which not in self._cache:
            data = self.train_data if which == "member" else self.public_data
            self._cache[which] = (data.x.to(self.device), data.y.to(self.device))
        return self._cache[which]

    def sample(self, which: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of ``n`` distinct records (fewer if the set is smaller) from ``member`` or ``reference``."""
        x, y = self._data(which)
        idx = torch.randperm(len(x), device=x.device)[: min(n, len(x))]
        return x[idx], y[idx]

    # ------------------------------------------------------------------ the two players
    def inference_logits(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inference_model(probs, F.one_hot(y, self.num_classes).to(probs.dtype))

    def privacy_gain(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The classifier's regulariser on its members: ``mean log h`` (log) or ``mean h`` (linear)."""
        h = self.inference_logits(logits.softmax(-1), y)
        return F.logsigmoid(h).mean() if self.gain == "log" else torch.sigmoid(h).mean()

    def h_loss(
        self, xm: torch.Tensor, ym: torch.Tensor, xr: torch.Tensor, yr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h's loss (BCE on members -> 1 plus BCE on references -> 0) and its accuracy, on the classifier's eval-mode
        outputs (no gradient to the classifier, no BatchNorm statistics from the reference set)."""
        probs = self.clean_logits(torch.cat([xm, xr])).softmax(-1)
        out = self.inference_logits(probs, torch.cat([ym, yr]))
        out_m, out_r = out[: len(xm)], out[len(xm) :]
        loss = F.binary_cross_entropy_with_logits(out_m, torch.ones_like(out_m)) + F.binary_cross_entropy_with_logits(
            out_r, torch.zeros_like(out_r)
        )
        acc = torch.cat([(out_m > 0).float(), (out_r <= 0).float()]).mean()
        return loss, acc

    def h_step(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of h on a fresh member batch and a fresh reference batch."""
        _, opt_h = self.optimizers()
        xm, ym = self.sample("member", n)
        xr, yr = self.sample("reference", n)
        loss, acc = self.h_loss(xm, ym, xr, yr)
        opt_h.zero_grad()
        self.manual_backward(loss)
        opt_h.step()
        self.h_steps += 1
        return loss.detach(), acc

    def adversarial(self) -> bool:
        return self.current_epoch >= self.warmup_epochs

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt_f, _ = self.optimizers()
        x, y = batch
        adversarial = self.adversarial()
        logs: dict[str, torch.Tensor] = {}
        if adversarial:
            n = self.attack_batch_size or len(x)
            results = [self.h_step(n) for _ in range(self.k)]
            logs["train/h_loss"] = torch.stack([r[0] for r in results]).mean()
            logs["train/h_acc"] = torch.stack([r[1] for r in results]).mean()
        logits = self(self.augment(x))
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        loss = ce
        if adversarial:
            self.inference_model.requires_grad_(False)  # h is fixed during the classifier's step
            gain = self.privacy_gain(logits, y)
            self.inference_model.requires_grad_(True)
            loss = ce + self.lam * gain
            logs["train/gain"] = gain.detach()
        opt_f.zero_grad()
        self.manual_backward(loss)
        opt_f.step()
        self.f_steps += 1
        logs.update({"train/loss": loss.detach(), "train/ce": ce.detach()})
        logs["train/acc"] = (logits.argmax(-1) == y).float().mean()
        self.log_epoch_mean(logs, len(x))
        return loss.detach()

    def configure_optimizers(self):
        # The classifier's optimizer sees only the classifier's parameters (self.parameters() would include h's).
        opt_f = self.optimizer_factory(self.model.parameters())
        opt_h = self.attack_optimizer_factory(self.inference_model.parameters())
        scheduler = self.make_scheduler(opt_f)
        if scheduler is None:
            return [opt_f, opt_h]
        return [opt_f, opt_h], [{"scheduler": scheduler, "interval": "epoch"}]


__all__ = ["AdvRegModule", "InferenceModel"]

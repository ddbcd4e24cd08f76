"""MID: Mutual Information regularization based Defense (Wang, Zhang, Jia, AAAI 2021, arXiv 2009.05241).

A variational information bottleneck between the features and the prediction: features ``h`` (dim ``d``) ->
``Linear(d, 2k)``; ``mu`` is the first half, ``sigma = softplus(second half - 5)``; ``z = mu + sigma * eps``;
logits ``= Linear(k, C)(z)``. Training minimises ``CE + beta * KL(N(mu, sigma^2) || N(0, I))`` with
``KL = -1/2 sum_j (1 + 2 log sigma_j - mu_j^2 - sigma_j^2)`` averaged over the batch (the authors' code; the
``- 5`` starts sigma near ``softplus(-5) = 0.0067``). Designed against model inversion; here evaluated as a
membership defense: the KL term limits how much the prediction can depend on the input beyond the label.

The bottleneck *replaces* the model's ``head`` (``model.head = VIBHead(...)``): the original
``Linear(d, C)`` would be unused, and with the replacement ``model(x)`` is the deployed predictor (``mu`` in eval
mode), so anything that calls the model directly sees what the attacker sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mia_bench.training.module import ClassifierModule

#: The authors' offset: sigma = softplus(raw - SIGMA_OFFSET).
SIGMA_OFFSET = 5.0


class VIBHead(nn.Module):
    """``Linear(d, 2k)`` -> (``mu``, ``sigma``) -> ``z`` -> ``Linear(k, C)``.

    ``forward`` samples ``z`` in training mode and uses ``z = mu`` in eval mode (deterministic prediction).
    """

    def __init__(self, feature_dim: int, bottleneck_dim: int, num_classes: int) -> None:
        super().__init__()
        self.k = int(bottleneck_dim)
        self.encoder = nn.Linear(int(feature_dim), 2 * self.k)
        self.classifier = nn.Linear(self.k, int(num_classes))

    def stats(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu``, ``sigma`` of the Gaussian code of features ``h``."""
        out = self.encoder(h)
        return out[:, : self.k], F.softplus(out[:, self.k :] - SIGMA_OFFSET)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.stats(h)
        z = mu + sigma * torch.randn_like(sigma) if self.training else mu
        return self.classifier(z)


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` summed over code dimensions, averaged over the batch (nats)."""
    return (-0.5 * (1 + 2 * sigma.log() - mu.pow(2) - sigma.pow(2)).sum(dim=1)).mean()


class MIDModule(ClassifierModule):
    """The classifier with its head replaced by a variational information bottleneck (see module docstring).

    ``beta``: weight of the KL term (default 0.01, the authors' CIFAR-10 value). ``bottleneck_dim``: ``k``, or
    null for ``feature_dim // 2`` (the authors' choice). ``predict_samples``: 0 (default) predicts with ``mu``;
    n > 0 returns the log of the softmax averaged over n sampled codes (stochastic; an attacker can average the
    noise away by repeating queries, so the default is the deterministic ``mu``). :class:`ClassifierModule`'s other
    arguments (``optimizer``, ...) are accepted as keywords through ``**base``; ``model``'s head is replaced first.
    """

    ensemble_unsupported = "the information bottleneck samples its noise inside the model's forward pass"

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 0.01,
        bottleneck_dim: int | None = None,
        predict_samples: int = 0,
        **base,
    ) -> None:
        if not beta >= 0:
            raise ValueError(f"beta={beta}: expected >= 0 (weight of the KL term; 0 = no bottleneck pressure)")
        if not hasattr(model, "forward_features") or not hasattr(model, "feature_dim"):
            raise ValueError(f"MID needs a Classifier with forward_features/feature_dim, got {type(model).__name__}")
        d = int(model.feature_dim)
        k = d // 2 if bottleneck_dim is None else int(bottleneck_dim)
        if k < 1:
            raise ValueError(f"bottleneck_dim={bottleneck_dim}: expected a positive int or null (feature_dim // 2)")
        if predict_samples < 0:
            raise ValueError(f"predict_samples={predict_samples}: expected 0 (predict with mu) or a positive count")
        model.head = VIBHead(d, k, model.num_classes)
        super().__init__(model=model, **base)
        self.beta = float(beta)
        self.bottleneck_dim = k
        self.predict_samples = int(predict_samples)

    @property
    def vib(self) -> VIBHead:
        return self.model.head

    def mid_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, kl)`` on a batch: ``CE(logits of a sampled code) + beta * KL``."""
        h = self.model.dropout(self.model.forward_features(x))
        mu, sigma = self.vib.stats(h)
        z = mu + sigma * torch.randn_like(sigma)
        logits = self.vib.classifier(z)
        kl = kl_to_standard_normal(mu, sigma)
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return ce + self.beta * kl, logits, kl

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits, kl = self.mid_loss(self.augment(x), y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_epoch_mean({"train/loss": loss, "train/acc": acc, "train/kl": kl}, len(y))
        return loss

    @torch.no_grad()
    def clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits from ``mu`` (deterministic), or log mean softmax over ``predict_samples`` codes."""
        if self.predict_samples == 0:
            return super().clean_logits(x)
        was_training = self.model.training
        self.model.eval()
        mu, sigma = self.vib.stats(self.model.forward_features(x))
        eps = torch.randn((self.predict_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
        probs = self.vib.classifier(mu + sigma * eps).softmax(-1).mean(0)
        self.model.train(was_training)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

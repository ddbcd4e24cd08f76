"""MID: Mutual Information regularization based Defense (Wang, Zhang, Jia, AAAI 2021, arXiv 2009.05241).

A variational information bottleneck between the features and the prediction: features ``h`` (dim ``d``) ->
``Linear(d, 2k)``; ``mu`` is the first half, ``sigma = softplus(second half - 5)``; ``z = mu + sigma * eps``;
logits ``= Linear(k, C)(z)``. Training minimises ``CE + beta * KL(N(mu, sigma^2) || N(0, I))`` with
``KL = -1/2 sum_j (1 + 2 log sigma_j - mu_j^2 - sigma_j^2)`` averaged over the batch (the authors' code; the
``- 5`` starts sigma near ``softplus(-5) = 0.0067``). Designed against model inversion; here evaluated as a
membership defense: the KL term limits how much the prediction can depend on the input beyond the label.

``log sigma`` is computed from the pre-activation ``t`` (:func:`log_softplus`), not as ``sigma.log()``: where
``softplus(t)`` underflows to 0 the authors' ``std.log()`` is ``-inf`` and the loss is no longer finite (their
FaceScrub script adds 1e-7 inside the log instead; their CIFAR-10 script adds nothing). For ``t >= -20`` the value
is ``sigma.log()`` itself, taken at the same point of the loss, so models are bit-identical to the plain log.

The bottleneck *replaces* the model's ``head`` (``model.head = VIBHead(...)``): the original
``Linear(d, C)`` would be unused, and with the replacement ``model(x)`` in eval mode is the deployed predictor
(``mu``, or sampled codes with ``predictor: sample``), so anything that calls the model directly sees what the
attacker sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mia_bench.training.module import ClassifierModule

#: The authors' offset: sigma = softplus(raw - SIGMA_OFFSET).
SIGMA_OFFSET = 5.0
#: Below this pre-activation, ``log(softplus(t))`` is taken as ``t``: the two differ by ``e^t / 2`` (< 1e-9 here,
#: under float32's resolution at that magnitude), while ``softplus(t)`` itself underflows to 0 from about -104.
LOG_SOFTPLUS_CUTOFF = -20.0
#: What the deployed model predicts with: the mean code, or sampled codes (the authors' predictor).
PREDICTORS = ("mu", "sample")


def log_softplus(t: torch.Tensor, softplus_t: torch.Tensor | None = None) -> torch.Tensor:
    """``log(softplus(t))``, finite for every finite ``t`` and with a finite gradient (``softplus_t``: the already
    computed ``softplus(t)``, reused so that where it is representable the value is exactly its log)."""
    sp = F.softplus(t) if softplus_t is None else softplus_t
    # The clamp keeps the branch torch.where discards finite: log(0) there would turn its zero gradient into NaN.
    return torch.where(t < LOG_SOFTPLUS_CUTOFF, t, sp.clamp_min(torch.finfo(sp.dtype).tiny).log())


class VIBHead(nn.Module):
    """``Linear(d, 2k)`` -> (``mu``, ``sigma``) -> ``z`` -> ``Linear(k, C)``.

    ``forward`` samples ``z`` in training mode. In eval mode it is the deployed predictor: ``predictor="mu"`` uses
    ``z = mu`` (deterministic); ``"sample"`` draws fresh codes for every query, ``samples`` of them: with 1 (the
    authors' predictor) the logits of that one code, with n > 1 the log of the softmax averaged over the n codes.
    """

    def __init__(
        self, feature_dim: int, bottleneck_dim: int, num_classes: int, predictor: str = "mu", samples: int = 1
    ) -> None:
        super().__init__()
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor={predictor!r}: expected one of {list(PREDICTORS)}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples={samples!r}: expected a positive int (codes drawn per query when sampling)")
        self.k = int(bottleneck_dim)
        self.predictor = predictor
        self.samples = int(samples)
        self.encoder = nn.Linear(int(feature_dim), 2 * self.k)
        self.classifier = nn.Linear(self.k, int(num_classes))

    def code(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mu``, ``sigma`` and its pre-activation ``t`` (``sigma = softplus(t)``; ``log sigma`` is
        ``log_softplus(t, sigma)``) of the Gaussian code of features ``h``."""
        out = self.encoder(h)
        t = out[:, self.k :] - SIGMA_OFFSET
        return out[:, : self.k], F.softplus(t), t

    def stats(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu``, ``sigma`` of the Gaussian code of features ``h``."""
        mu, sigma, _ = self.code(h)
        return mu, sigma

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.stats(h)
        if self.training:
            return self.classifier(mu + sigma * torch.randn_like(sigma))
        if self.predictor == "mu":
            return self.classifier(mu)
        if self.samples == 1:
            return self.classifier(mu + sigma * torch.randn_like(sigma))
        eps = torch.randn((self.samples, *mu.shape), device=mu.device, dtype=mu.dtype)
        probs = self.classifier(mu + sigma * eps).softmax(-1).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` summed over code dimensions, averaged over the batch (nats)."""
    return (-0.5 * (1 + 2 * log_sigma - mu.pow(2) - sigma.pow(2)).sum(dim=1)).mean()


class MIDModule(ClassifierModule):
    """The classifier with its head replaced by a variational information bottleneck (see module docstring).

    ``beta``: weight of the KL term (default 0.01, the authors' CIFAR-10 value). ``bottleneck_dim``: ``k``, or
    null for ``feature_dim // 2`` (the authors' choice). ``predictor``: ``mu`` (default, deterministic) or
    ``sample`` (fresh codes at every query, as the authors' model predicts; an attacker can average the noise away
    by repeating queries). ``predict_samples``: codes per query with ``sample``: 1 (the authors') returns that
    code's logits, n > 1 the log of the softmax averaged over n codes. :class:`ClassifierModule`'s other arguments
    (``optimizer``, ...) are accepted as keywords through ``**base``; ``model``'s head is replaced first.
    """

    ensemble_unsupported = "the information bottleneck samples its noise inside the model's forward pass"

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 0.01,
        bottleneck_dim: int | None = None,
        predictor: str = "mu",
        predict_samples: int = 1,
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
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor={predictor!r}: expected one of {list(PREDICTORS)} (mean code or sampled)")
        if isinstance(predict_samples, bool) or not isinstance(predict_samples, int) or predict_samples < 1:
            raise ValueError(
                f"predict_samples={predict_samples!r}: expected a positive int, the codes per query with "
                "predictor=sample (predictor=mu predicts with the mean code)"
            )
        if predictor == "mu" and predict_samples != 1:
            # Refused rather than ignored: the count only means something for sampled codes.
            raise ValueError(
                f"predict_samples={predict_samples} with predictor=mu: the mean code is one deterministic "
                "prediction; set predictor=sample to average sampled codes, or leave predict_samples at 1"
            )
        model.head = VIBHead(d, k, model.num_classes, predictor=predictor, samples=predict_samples)
        super().__init__(model=model, **base)
        self.beta = float(beta)
        self.bottleneck_dim = k
        self.predictor_mode = predictor
        self.predict_samples = int(predict_samples)

    @property
    def vib(self) -> VIBHead:
        return self.model.head

    def mid_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, kl)`` on a batch: ``CE(logits of a sampled code) + beta * KL``."""
        h = self.model.dropout(self.model.forward_features(self.layout(x)))
        mu, sigma, t = self.vib.code(h)
        z = mu + sigma * torch.randn_like(sigma)
        logits = self.vib.classifier(z)
        # log sigma after the logits, where the authors take std.log(): the same order of autograd's operations, so
        # the gradients are summed in the same order and the models are the same to the bit
        kl = kl_to_standard_normal(mu, sigma, log_softplus(t, sigma))
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return ce + self.beta * kl, logits, kl

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits, kl = self.mid_loss(self.augment(x), y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_epoch_mean({"train/loss": loss, "train/acc": acc, "train/kl": kl}, len(y))
        return loss

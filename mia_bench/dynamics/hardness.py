"""How hard each record is, and how that relates to its final vulnerability (docs/dynamics.md).

Measured per model at the end of training (in the recorder, on the model's device) and aggregated over models
here:

* ``loss``: cross-entropy of the final models (mean over the selected models); ``loss_trajectory``: the same
  averaged over every recorded epoch too (how hard the record was throughout training);
* epistemic uncertainty as disagreement across models: ``uncertainty_std`` (std of the true-class probability)
  and ``uncertainty_mi`` (mutual information of the ensemble, ``H(mean p) - mean H(p)``, nats); optionally
  ``mc_dropout_mi`` (the same over T stochastic dropout passes of each model, averaged over models);
* ``grad_norm``: L2 norm of the per-sample loss gradient w.r.t. all trainable parameters (``torch.func``:
  ``vmap(grad)``), eval mode, clean input.

Which models count for a record (``hardness.models``): ``all`` (default; with paired masks every record is IN
for exactly half, so no record is favoured), ``out`` (only models that did not train on it: hardness as seen by
a model that must generalise to it) or ``in``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.func import functional_call, grad, vmap

MODEL_SELECTIONS = ("all", "out", "in")


def select_models(masks: np.ndarray, which: str) -> np.ndarray:
    """``[K, N]`` weights (bool) of the models that count for each record."""
    if which == "all":
        return np.ones_like(masks, dtype=bool)
    if which == "out":
        return ~masks
    if which == "in":
        return masks.copy()
    raise ValueError(f"analysis.dynamics.hardness.models={which!r}: expected one of {list(MODEL_SELECTIONS)}")


def weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    n = w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (x * w).sum(0) / n, np.nan)


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ensemble_hardness(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """From the final clean logits ``[K, N, C]``: mean loss, std of ``p_y`` and ensemble mutual information
    (nats) over the models selected per record by ``weights[K, N]``; each ``[N]`` float64."""
    logp = log_softmax_np(logits)                                             # [K, N, C]
    logp_y = np.take_along_axis(logp, labels[None, :, None], -1)[..., 0]      # [K, N]
    p = np.exp(logp)
    w = weights.astype(np.float64)
    loss = weighted_mean(-logp_y, w)
    py = np.exp(logp_y)
    mean_py = weighted_mean(py, w)
    var = weighted_mean((py - np.nan_to_num(mean_py)[None]) ** 2, w)
    pbar = weighted_mean(p, w[..., None])                                    # [N, C]
    h_mean = -(pbar * np.log(np.clip(pbar, 1e-300, None))).sum(-1)
    h_each = -(p * logp).sum(-1)                                              # [K, N]
    mi = np.maximum(h_mean - weighted_mean(h_each, w), 0.0)                  # >= 0 up to rounding
    return {"loss": loss, "uncertainty_std": np.sqrt(var), "uncertainty_mi": mi}


def trajectory_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over every recorded epoch and the selected models; ``logits`` ``[E, K, N, C]`` (one epoch
    at a time in float64: the whole array would be GBs on CIFAR-10)."""
    total = np.zeros(logits.shape[1:3])
    for snapshot in logits:
        logp = log_softmax_np(snapshot)
        total -= np.take_along_axis(logp, labels[None, :, None], -1)[..., 0]  # [K, N]
    return weighted_mean(total / len(logits), weights.astype(np.float64))


def per_sample_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """``[N]`` L2 norms of the per-record gradients of the cross-entropy w.r.t. every trainable parameter.

    ``torch.func`` (``vmap(grad(functional_call))``) computes all per-record gradients of a batch in one
    vectorised pass instead of N backward passes. The model runs in eval mode (BatchNorm uses its running
    statistics, dropout is off), so each record's gradient does not depend on the rest of its batch; the
    model's ``.grad`` fields are untouched."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_fn(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, frozen, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_record = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    norms = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            grads = per_record(params, xb, yb)
            sq = sum(g.reshape(len(xb), -1).pow(2).sum(1) for g in grads.values())
            norms.append(sq.sqrt().float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(norms).numpy()


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@torch.no_grad()
def mc_dropout_uncertainty(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """``(mutual information [N], std of p_y [N])`` over ``passes`` stochastic forward passes with only the
    dropout layers in train mode (BatchNorm stays in eval mode). Draws from the global torch RNG: the caller
    forks and seeds it."""
    if not has_dropout(model):
        raise ValueError(
            "analysis.dynamics.hardness.mc_dropout > 0 needs a model with dropout > 0 (e.g. model.dropout=0.2 "
            "or defense=dropout); this model has none"
        )
    if passes < 2:
        raise ValueError(f"analysis.dynamics.hardness.mc_dropout={passes}: expected 0 (off) or at least 2 passes")
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    mi, std = [], []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logp = torch.stack([model(xb).double().log_softmax(-1) for _ in range(passes)])  # [T, B, C]
            p = logp.exp()
            pbar = p.mean(0)
            h_mean = -(pbar * pbar.clamp_min(1e-300).log()).sum(-1)
            h_each = -(p * logp).sum(-1).mean(0)
            mi.append((h_mean - h_each).clamp_min(0).cpu())
            py = p.gather(-1, yb[None, :, None].expand(passes, -1, 1))[..., 0]
            std.append(py.std(0, unbiased=False).cpu())
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return torch.cat(mi).numpy(), torch.cat(std).numpy()


def correlations(measures: dict[str, np.ndarray], target: np.ndarray, subset: np.ndarray | None = None) -> dict:
    """Pearson and Spearman correlation (with two-sided p-values) of each hardness measure with ``target`` over
    the records in ``subset`` (default all) where both are finite. ``None`` entries where fewer than 3 records
    remain or either side is constant (a correlation is undefined there)."""
    out = {}
    for name, values in measures.items():
        ok = np.isfinite(values) & np.isfinite(target)
        if subset is not None:
            ok &= subset
        a, b = values[ok], target[ok]
        entry = {"n": int(ok.sum()), "pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
        if ok.sum() >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
            pr = stats.pearsonr(a, b)
            sr = stats.spearmanr(a, b)
            entry.update(
                pearson=float(pr.statistic),
                pearson_p=float(pr.pvalue),
                spearman=float(sr.statistic),
                spearman_p=float(sr.pvalue),
            )
        out[name] = entry
    return out

"""Querying trained models: the attacker's view (logits under query augmentations) and utility accuracy."""

from __future__ import annotations

import numpy as np
import torch

from mia_bench.augment import apply_query
from mia_bench.training.module import ClassifierModule


@torch.no_grad()
def collect_logits(
    module: ClassifierModule,
    x: torch.Tensor,
    queries: list[tuple[int, int, bool]],
    batch_size: int = 1024,
    dtype: np.dtype = np.float32,
) -> np.ndarray:
    """``[N, Q, C]`` outputs of the module's predict path on every record under every query augmentation."""
    device = module.device
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        per_query = [module.predict_logits(apply_query(xb, dy, dx, flip)) for dy, dx, flip in queries]
        out.append(torch.stack(per_query, dim=1).float().cpu().numpy().astype(dtype, copy=False))
    return np.concatenate(out, axis=0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")

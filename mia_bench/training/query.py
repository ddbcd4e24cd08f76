"""Querying models: logits of every record under every query augmentation, and accuracy.

One path for everything that reads a model's outputs: the attacker's signals (through the deployed predictor),
utility, and the dynamics recorder's snapshots (through the clean network while it trains).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mia_bench.augment import apply_query

Query = tuple[int, int, bool]  # (dy, dx, flip), see mia_bench.augment.query_offsets


@torch.no_grad()
def collect_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    queries: Sequence[Query] = ((0, 0, False),),
    batch_size: int = 1024,
    dtype: np.dtype | str = np.float32,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """``[N, Q, C]`` outputs of ``forward`` (e.g. ``module.predict_logits``) on every record of ``x`` under every
    query augmentation, in batches on ``device`` (default: the device of ``forward``'s module, else ``x``'s)."""
    if device is None:
        device = getattr(getattr(forward, "__self__", None), "device", x.device)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        per_query = [forward(apply_query(xb, dy, dx, flip)) for dy, dx, flip in queries]
        out.append(torch.stack(per_query, dim=1).float().cpu().numpy().astype(dtype, copy=False))
    return np.concatenate(out, axis=0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")

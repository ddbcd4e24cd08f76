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


def query_batch_size(batch_size: int | None, device: torch.device | str) -> int:
    """Records per forward pass: ``batch_size``, or when it is None 256 on a CPU and 4096 elsewhere. Measured on a
    CPU with one thread: LeNet on MNIST ran 1.5x faster per record in passes of 256 than of 1024 and the cnn on
    CIFAR-shaped data 1.2-1.5x (a pass that fits the caches), with bit-identical outputs; a GPU wants large passes."""
    if batch_size is not None:
        return int(batch_size)
    return 256 if torch.device(device).type == "cpu" else 4096


@torch.no_grad()
def collect_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    queries: Sequence[Query] = ((0, 0, False),),
    batch_size: int | None = None,
    dtype: np.dtype | str = np.float32,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """``[N, Q, C]`` outputs of ``forward`` (e.g. ``module.predict_logits``) on every record of ``x`` under every
    query augmentation, in batches (:func:`query_batch_size`) on ``device`` (default: the device of ``forward``'s
    module, else ``x``'s)."""
    if device is None:
        device = getattr(getattr(forward, "__self__", None), "device", x.device)
    batch_size = query_batch_size(batch_size, device)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        per_query = [forward(apply_query(xb, dy, dx, flip)) for dy, dx, flip in queries]
        out.append(torch.stack(per_query, dim=1).float().cpu().numpy().astype(dtype, copy=False))
    return np.concatenate(out, axis=0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")

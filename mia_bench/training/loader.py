"""Pre-batched tensor iteration: on small models Lightning fed by a DataLoader over a TensorDataset ran at 0.4x the
speed of a plain tensor loop, fed by indexing the whole tensor once per batch at 0.68x (measured on 2 CPU cores).
Lightning accepts any sized iterable as a dataloader, so this is all the data path needs."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class TensorBatchLoader:
    """Yields ``(x[idx], y[idx])`` batches from in-memory tensors, reshuffled every epoch from its own seeded
    generator (so a model's batch order depends on its seed alone, not on what ran before it)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be a positive integer")
        if len(x) == 0:
            raise ValueError("cannot batch an empty set of records")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        # Dropping a last partial batch is only sensible when there is more than one batch.
        self.drop_last = drop_last and len(x) > batch_size
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]

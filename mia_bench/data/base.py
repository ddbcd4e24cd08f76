"""Shared data types and helpers: every dataset loader returns arrays, the pipeline turns them into splits.

Records stay as in-memory tensors end to end (no per-record Python in the hot loop): a loader returns
``ArrayData`` (inputs already scaled to floats with the dataset's fixed normalisation, labels as int64),
and ``make_splits`` carves the membership population, the utility test split and an optional public
split (for defenses that need data the attacker never scores) out of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mia_bench.errors import DatasetUnavailableError  # noqa: F401  (where loaders and tests import it from)


@dataclass
class ArrayData:
    """Inputs ``x`` (float32, ``[N, C, H, W]`` for images or ``[N, D]`` for tabular) and labels ``y`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} records but y has {self.y.shape[0]}")
        if self.x.dtype != torch.float32:
            self.x = self.x.float()
        if self.y.dtype != torch.int64:
            self.y = self.y.long()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> ArrayData:
        return ArrayData(self.x[index], self.y[index])


@dataclass
class RawDataset:
    """What a registered loader returns.

    ``train``/``test`` are the dataset's own splits. Datasets without an official test split return
    ``test=None`` and the pipeline carves one out of ``train`` with a seeded split.
    """

    name: str
    train: ArrayData
    test: ArrayData | None
    num_classes: int
    # Per-dataset hints the pipeline uses (e.g. training augmentation that makes sense for the modality).
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4


def dataset_meta(
    modality: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **extra
) -> dict:
    """``RawDataset.meta``: the modality, the fixed normalisation (if any) and loader-specific extras."""
    meta: dict = {"modality": modality}
    if mean is not None:
        meta["normalization"] = {"mean": list(mean), "std": list(std)}  # x = (pixel/255 - mean) / std
    meta.update(extra)
    return meta


def as_labels(y) -> torch.Tensor:
    """Labels (list, array or tensor) as an int64 tensor."""
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


def check_finite(raw: RawDataset) -> None:
    """Raise naming the dataset (and its file, for user data) when any input is NaN or infinite: such records would
    make every model's loss NaN, found only after hours of training."""

    where = raw.meta.get("file") or ", ".join(map(str, raw.meta.get("files", []))) or raw.name
    for split, data in (("train", raw.train), ("test", raw.test)):
        if data is None:
            continue
        bad = ~torch.isfinite(data.x)
        if bad.any():
            records = bad.reshape(len(bad), -1).any(1).nonzero().flatten()
            raise ValueError(f"dataset {raw.name} ({where}): {int(bad.sum())} NaN or infinite input values in "
                             f"{len(records)} records of its {split} split, e.g. record {int(records[0])}; clean "
                             "the data (or drop those records) before a run")

"""Datasets that need no download: scikit-learn's 8x8 digits (shipped with scikit-learn) and seeded synthetic
Gaussian classes. Both have no official test split, so the pipeline carves one; they are what the tests and
smoke runs use offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mia_bench.data.base import ArrayData, RawDataset, as_labels, dataset_meta
from mia_bench.data.registry import register_dataset


@register_dataset("digits")
def digits() -> RawDataset:
    """scikit-learn's 8x8 digits (1797 records, ships with sklearn): ``[N, 1, 8, 8]``, pixels/16 then
    (x-0.5)/0.5. No official test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1).div_(16.0).sub_(0.5).div_(0.5)
    return RawDataset(
        name="digits",
        train=ArrayData(x, as_labels(bunch.target)),
        test=None,
        num_classes=10,
        meta=dataset_meta("image", (0.5,), (0.5,), pixel_max=16, classes=[str(i) for i in range(10)]),
    )


@register_dataset("synthetic")
def synthetic(
    num_records: int = 2000,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32,),
    class_sep: float = 1.0,
    label_noise: float = 0.0,
    seed: int = 0,
) -> RawDataset:
    """Seeded Gaussian classes: ``x = prototype[y] + N(0, I)``.

    Prototypes are random directions of norm ``3 * class_sep`` (pairwise distance ~ 4.2 noise std at
    ``class_sep=1``: ~90 % Bayes accuracy with 10 classes; lower ``class_sep`` = harder, more overfitting).
    For image shapes ``[C, H, W]`` the prototypes are smooth spatial patterns (random at 1/4 resolution,
    bilinearly upsampled), so the data is image-shaped in structure too, not only in tensor shape.
    ``label_noise`` is the probability that a record's label is replaced by a different random class.
    Classes are balanced. No official test split.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"input_shape must be [D] or [C, H, W] with positive sizes, got {list(shape)}")
    if num_classes < 2 or num_records < num_classes:
        raise ValueError(
            f"need num_classes >= 2 and num_records >= num_classes, got {num_records=}, {num_classes=}"
        )
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    g = torch.Generator().manual_seed(int(seed))
    dim = math.prod(shape)
    if len(shape) == 3:
        c, h, w = shape
        low = torch.randn(num_classes, c, max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4)), generator=g)
        protos = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).reshape(
            num_classes, dim
        )
    else:
        protos = torch.randn(num_classes, dim, generator=g)
    protos = protos / protos.norm(dim=1, keepdim=True).clamp_min(1e-12) * (3.0 * float(class_sep))
    y = torch.arange(num_records) % num_classes
    y = y[torch.randperm(num_records, generator=g)]
    x = protos[y] + torch.randn(num_records, dim, generator=g)
    flip = torch.rand(num_records, generator=g) < label_noise
    offset = torch.randint(1, num_classes, (num_records,), generator=g)
    y = torch.where(flip, (y + offset) % num_classes, y)
    return RawDataset(
        name="synthetic",
        train=ArrayData(x.reshape(num_records, *shape), y),
        test=None,
        num_classes=num_classes,
        meta=dataset_meta(
            "image" if len(shape) == 3 else "tabular",
            class_sep=float(class_sep),
            label_noise=float(label_noise),
            num_flipped=int(flip.sum()),
            seed=int(seed),
        ),
    )

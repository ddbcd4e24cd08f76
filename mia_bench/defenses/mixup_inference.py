"""Mixup Inference (Pang, Xu, Zhu, ICLR 2020) as an inference-time membership defense.

For a query x with predicted label y_hat (argmax of the model's clean logits), MI predicts N times on
``lam * x + (1 - lam) * x_s`` with ``x_s`` a clean record drawn from a pool, and returns the mean softmax (here its
log, a valid logit vector for every signal). MI-PL draws ``x_s`` of class y_hat, MI-OL of a random class other than
y_hat. MI-Combined (the authors' ``attack_resnet_mixuptest_Combined.py``, P2333/Mixup-Inference) runs both and
uses the PL output when ``max softmax(clean) - max mean-PL-softmax < threshold`` (the input looks clean), the OL
output otherwise; its script's defaults are 5 PL draws, 15 OL draws, threshold 0.2 and (README command) lambda 0.5
(PL) and 0.4 (OL).

The pool is the public split: the authors' code draws it from the CIFAR test split, which here would leak into the
utility figures; the public split is disjoint from the population under attack and from the test split.
Pool records are drawn as the authors' code does: a class uniformly among the eligible ones (OL: every pool class
but y_hat), then a record uniformly within that class. A predicted class with no pool record is an error (MI-PL
would otherwise silently change meaning); every class is present in any reasonably sized random public split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mia_bench.data.base import ArrayData
from mia_bench.training.query import query_batch_size

MODES = ("pl", "ol", "combined")
Logits = Callable[[torch.Tensor], torch.Tensor]


class MixupInference:
    """``predictor(clean_logits, x) -> log mean softmax`` over mixed copies of ``x``.

    Built by the training loop from the config partial with ``pool`` (the public split) and ``seed``; draws come
    from its own seeded generator, so a run is reproducible. Batched: all N pool indices of a batch are drawn at
    once from per-class index tables, and the mixed copies go through the model in chunks of ``chunk_size``
    records (None: as many as a query pass, :func:`~mia_bench.training.query.query_batch_size`).
    """

    def __init__(
        self,
        pool: ArrayData | None,
        seed: int = 0,
        mode: str = "pl",
        n_samples: int = 30,
        lam_pl: float = 0.5,
        lam_ol: float = 0.4,
        combined_n_pl: int = 5,
        combined_n_ol: int = 15,
        threshold: float = 0.2,
        chunk_size: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mixup_inference mode={mode!r}: expected one of {list(MODES)}")
        for key, value in (("n_samples", n_samples), ("combined_n_pl", combined_n_pl),
                           ("combined_n_ol", combined_n_ol), ("chunk_size", chunk_size)):  # fmt: skip
            if key == "chunk_size" and value is None:
                continue  # chosen by device
            if int(value) != value or int(value) < 1:
                raise ValueError(f"mixup_inference {key}={value}: expected an integer >= 1")
        for key, value in (("lam_pl", lam_pl), ("lam_ol", lam_ol)):
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"mixup_inference {key}={value}: expected a value in (0, 1] (weight of the query)")
        if pool is None or len(pool) == 0:
            raise ValueError(
                "mixup_inference draws its clean records from the public split, which is empty: set "
                "dataset.public_size to a positive count or fraction (e.g. dataset.public_size=200)"
            )
        self.pool = pool
        self.mode = mode
        self.n_samples = int(n_samples)
        self.lam_pl, self.lam_ol = float(lam_pl), float(lam_ol)
        self.combined_n_pl, self.combined_n_ol = int(combined_n_pl), int(combined_n_ol)
        self.threshold = float(threshold)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        # Per-class index tables: pool indices sorted by class, and each class' start and count in that order.
        labels = pool.y.cpu()
        self._order = torch.argsort(labels, stable=True)
        self._counts = torch.bincount(labels)
        self._starts = torch.cumsum(self._counts, 0) - self._counts
        self._device_x: dict[torch.device, torch.Tensor] = {}

    # ---- drawing pool records -------------------------------------------------------------------------------
    def _tables(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self._counts) > num_classes:
            raise ValueError(
                f"mixup_inference pool has labels up to {len(self._counts) - 1} but the model has {num_classes} classes"
            )
        pad = num_classes - len(self._counts)
        zeros = torch.zeros(pad, dtype=torch.long)
        return torch.cat([self._counts, zeros]), torch.cat([self._starts, zeros])

    def _uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def _record_of_class(self, cls: torch.Tensor, counts: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """A uniformly drawn pool index of class ``cls[b, n]`` for every entry (all classes non-empty)."""
        c = counts[cls]
        offset = torch.minimum((self._uniform(tuple(cls.shape)) * c).long(), c - 1)
        return self._order[starts[cls] + offset]

    def draw_pl(self, y_hat: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
        """``[B, n]`` pool indices, each of the query's predicted class."""
        counts, starts = self._tables(num_classes)
        missing = sorted(set(y_hat[counts[y_hat] == 0].tolist()))
        if missing:
            raise ValueError(
                f"mixup_inference (MI-PL) needs pool records of every predicted class, but the public split has "
                f"none of class {missing}: enlarge dataset.public_size"
            )
        return self._record_of_class(y_hat[:, None].expand(-1, n), counts, starts)

    def draw_ol(self, y_hat: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
        """``[B, n]`` pool indices, each of a class drawn uniformly among the pool's classes other than y_hat."""
        counts, starts = self._tables(num_classes)
        present = counts > 0
        classes = torch.nonzero(present).flatten()  # the pool's classes, increasing
        rank = torch.cumsum(present.long(), 0) - 1  # position of a present class in `classes`
        has = present[y_hat]  # [B]
        eligible = len(classes) - has.long()  # classes other than y_hat
        if bool((eligible == 0).any()):
            raise ValueError(
                "mixup_inference (MI-OL) needs pool records of a class other than the predicted one, but the public "
                "split holds a single class: enlarge dataset.public_size"
            )
        r = torch.minimum((self._uniform((len(y_hat), n)) * eligible[:, None]).long(), eligible[:, None] - 1)
        r = r + (has[:, None] & (r >= rank[y_hat][:, None])).long()  # skip y_hat's own position
        return self._record_of_class(classes[r], counts, starts)

    # ---- prediction -----------------------------------------------------------------------------------------
    def _pool_x(self, device: torch.device) -> torch.Tensor:
        if device not in self._device_x:
            self._device_x[device] = self.pool.x.to(device)
        return self._device_x[device]

    def mixed_log_probs(self, clean_logits: Logits, x: torch.Tensor, idx: torch.Tensor, lam: float) -> torch.Tensor:
        """``log mean_n softmax(model(lam x + (1 - lam) pool[idx[:, n]]))`` for every query, ``[B, C]``."""
        b, n = idx.shape
        pool_x = self._pool_x(x.device)
        flat = idx.to(x.device).flatten()  # row r mixes query r // n with pool record flat[r]
        step = query_batch_size(self.chunk_size, x.device)  # passes of 8192 ran LeNet 2x slower on a CPU
        out = []
        for s in range(0, len(flat), step):  # chunks of mixed records, each one batched forward pass
            rows = torch.arange(s, min(s + step, len(flat)), device=x.device)
            mixed = (1 - lam) * pool_x[flat[rows]] + lam * x[rows // n]
            out.append(clean_logits(mixed).float().log_softmax(-1))
        return torch.logsumexp(torch.cat(out).view(b, n, -1), dim=1) - math.log(n)

    @torch.no_grad()
    def __call__(self, clean_logits: Logits, x: torch.Tensor) -> torch.Tensor:
        clean = clean_logits(x).float()
        if len(x) == 0:  # no query, nothing to mix: an empty [0, C] answer
            return clean.log_softmax(-1)
        y_hat, num_classes = clean.argmax(-1).cpu(), clean.shape[-1]
        if self.mode == "pl":
            return self.mixed_log_probs(clean_logits, x, self.draw_pl(y_hat, self.n_samples, num_classes), self.lam_pl)
        if self.mode == "ol":
            return self.mixed_log_probs(clean_logits, x, self.draw_ol(y_hat, self.n_samples, num_classes), self.lam_ol)
        pl = self.mixed_log_probs(clean_logits, x, self.draw_pl(y_hat, self.combined_n_pl, num_classes), self.lam_pl)
        ol = self.mixed_log_probs(clean_logits, x, self.draw_ol(y_hat, self.combined_n_ol, num_classes), self.lam_ol)
        gap = clean.softmax(-1).max(-1).values - pl.exp().max(-1).values
        return torch.where((gap < self.threshold)[:, None], pl, ol)

    def __repr__(self) -> str:
        return (
            f"MixupInference(mode={self.mode!r}, n_samples={self.n_samples}, lam_pl={self.lam_pl}, "
            f"lam_ol={self.lam_ol}, pool={len(self.pool)})"
        )

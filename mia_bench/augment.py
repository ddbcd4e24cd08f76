"""Batched tensor augmentation for training and the attacker's deterministic query augmentations.

Both work on a whole batch with one gather, never a Python loop over records, so augmentation stays on the
device that holds the data (the GPU when there is one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    x: torch.Tensor, padding: int = 0, hflip: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero-padding by ``padding`` pixels and random horizontal flips, per record.

    Tabular inputs (``x.dim() != 4``) are returned unchanged.
    """
    if x.dim() != 4 or (padding <= 0 and not hflip):
        return x
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        span = 2 * padding + 1
        oy = torch.randint(span, (b,), generator=generator, device="cpu").to(dev)
        ox = torch.randint(span, (b,), generator=generator, device="cpu").to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [B,1,H,1]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [B,1,1,W]
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=generator, device="cpu") < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def query_offsets(shift: int = 0, hflip: bool = False) -> list[tuple[int, int, bool]]:
    """The attacker's query set as (dy, dx, flip) triples; the first is always the clean query.

    With ``shift=s`` the record is also queried moved by s pixels up, down, left and right; with ``hflip``
    each of those is also queried mirrored. (LiRA queries flips and shifts; label-only uses the same set.)
    """
    moves = [(0, 0)]
    if shift > 0:
        moves += [(-shift, 0), (shift, 0), (0, -shift), (0, shift)]
    flips = [False, True] if hflip else [False]
    return [(dy, dx, f) for f in flips for dy, dx in moves]


def apply_query(x: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Shift a batch of images by (dy, dx) with reflect padding (as the LiRA code does), then mirror."""
    if x.dim() != 4:
        if dy or dx or flip:
            raise ValueError("query augmentations (shift/hflip) need image inputs [N, C, H, W]")
        return x
    if dy or dx:
        p = max(abs(dy), abs(dx))
        h, w = x.shape[-2:]
        mode = "reflect" if p < min(h, w) else "replicate"
        xp = F.pad(x, (p, p, p, p), mode=mode)
        x = xp[..., p - dy : p - dy + h, p - dx : p - dx + w]
    if flip:
        x = x.flip(-1)
    return x

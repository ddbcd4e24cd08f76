"""A fast CIFAR network: the architecture of airbench94 (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
GPU", arXiv 2404.00498), written for the registry's ``Classifier`` shape.

* a 2x2 convolution initialised as a patch-whitening layer from the model's own training images (eigenvectors of
  the patch covariance, scaled by the inverse square root of their eigenvalues, with their negatives) and frozen;
  its bias trains;
* three groups ``conv3x3 -> maxpool2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU`` of widths
  ``w, 4w, 4w`` (``w = 64``), convolutions without bias and identity-initialised on their first input channels
  (``dirac``), BatchNorm without a trained scale (momentum 0.4, eps 1e-12);
* global max pooling and a bias-free linear head on features scaled by 1/9.

About 1.97M parameters. Departures: the whitening statistics come from (up to 5000 of) each model's own training
records, as they must for a membership benchmark (airbench uses the first 5000 training images, which may not be the
model's); the final 3x3 max pool is a global max pool, so other input sizes work. The training tricks of airbench
that are not the network (lookahead, progressive freezing, alternating flips, test-time augmentation, the 64x
learning rate of BatchNorm biases) are not reproduced; ``conf/train/fast.yaml`` holds the recipe used here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, image_shape, register_model

#: Records whose patches estimate the whitening statistics (airbench's choice).
WHITEN_RECORDS = 5000


class _Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, identity-initialised on its first input channels (an implicit
    residual at initialisation)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[: self.weight.size(1)])


class _Norm(nn.BatchNorm2d):
    """BatchNorm with a fixed unit scale (only the bias trains), fast statistics (momentum 0.4)."""

    def __init__(self, c: int) -> None:
        super().__init__(c, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class _Group(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, pool: bool = True) -> None:
        super().__init__(
            _Conv(c_in, c_out), nn.MaxPool2d(2) if pool else nn.Identity(), _Norm(c_out), nn.GELU(),
            _Conv(c_out, c_out), _Norm(c_out), nn.GELU(),
        )


class FastNet(Classifier):
    """See the module docstring. ``width``: the first group's width (64 in airbench94)."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, width: int = 64, whiten_kernel: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, dropout)
        c, h, w = image_shape(input_shape, "fastnet")
        if int(width) < 1 or int(whiten_kernel) < 1 or int(whiten_kernel) > min(h, w):
            raise ValueError(f"fastnet width={width}, whiten_kernel={whiten_kernel}: expected positive ints, the "
                             f"kernel at most the input's {h}x{w}")
        width, k = int(width), int(whiten_kernel)
        self.whiten = nn.Conv2d(c, 2 * c * k * k, kernel_size=k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        groups, size, c_in = [], min(h, w) - k + 1, 2 * c * k * k
        for c_out in (width, 4 * width, 4 * width):
            groups.append(_Group(c_in, c_out, pool=size >= 2))  # small inputs (8x8 digits) skip a pool at 1x1
            size, c_in = (size // 2 if size >= 2 else size), c_out
        self.body = nn.Sequential(nn.GELU(), *groups, nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
        self._build_head(4 * width, nn.Linear(4 * width, num_classes, bias=False))
        self.scale = 1 / 9

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.whiten(x)) * self.scale

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Patch-whitening weights from (up to :data:`WHITEN_RECORDS` of) ``x`` ``[N, C, H, W]``: filters are the
        covariance eigenvectors of the ``k x k`` patches, divided by ``sqrt(eigenvalue + eps)``, and their
        negatives (so the GELU after the layer keeps both signs)."""
        w = self.whiten.weight
        k = w.shape[-1]
        x = x[:WHITEN_RECORDS].to(device=w.device, dtype=torch.float32)
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, x.shape[1] * k * k).double()
        cov = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(cov)
        values, vectors = values.flip(0), vectors.T.flip(0)  # largest first
        filters = (vectors / torch.sqrt(values.clamp_min(0) + eps)[:, None]).reshape(-1, x.shape[1], k, k)
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))


@register_model("fastnet")
def fastnet(
    input_shape: Sequence[int], num_classes: int, width: int = 64, whiten_kernel: int = 2, dropout: float = 0.0
) -> FastNet:
    """airbench94's network (~1.97M parameters at width 64); whitening initialised from the training records."""
    return FastNet(input_shape, num_classes, width=width, whiten_kernel=whiten_kernel, dropout=dropout)

"""The CNN of MID's CIFAR-10 experiment (Wang, Zhang, Jia, AAAI 2021, arXiv 2009.05241): ``SimpleCNN`` in the
authors' ``update_leaks/models.py`` (github.com/Jiachen-T-Wang/mi-defense), whose ``SimpleCNN_VIB`` puts the
bottleneck on its flattened 2,048-d features (with ``defense=mid``, ``k = 1024``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, image_shape, register_model

#: Channels of the two stride-2 convolutions.
WIDTHS = (64, 128)


class MIDSimpleCNN(Classifier):
    """``conv3x3(C->64, stride 2, pad 1) -> LeakyReLU(0.2) -> conv3x3(64->128, stride 2, pad 1) -> LeakyReLU(0.2)
    -> maxpool2 -> flatten`` (features: ``128 * 4 * 4 = 2048`` on 32x32 inputs) ``-> head``.

    As the authors': no normalisation, no dropout by default, and PyTorch's default initialisation (their
    ``utils.weights_init`` is never applied by ``train_vib.py``). The pool uses ``ceil_mode`` so that inputs whose
    map is odd or 1x1 after the convolutions (8x8 digits) keep a non-empty map; on 32x32 inputs the map is 8x8 and
    ``ceil_mode`` changes nothing.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout)
        channels, height, width = image_shape(input_shape, "mid_cnn")
        self.features = nn.Sequential(
            nn.Conv2d(channels, WIDTHS[0], kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(WIDTHS[0], WIDTHS[1], kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Flatten(1),
        )

        def side(n: int) -> int:  # each stride-2 conv (k 3, pad 1) and the ceil-mode pool halve a side, rounding up
            for _ in range(3):
                n = math.ceil(n / 2)
            return n

        self._build_head(WIDTHS[1] * side(height) * side(width))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("mid_cnn")
def mid_cnn(input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> MIDSimpleCNN:
    """MID's CIFAR-10 CNN (two stride-2 convs, LeakyReLU, max pool; 2,048-d features on 32x32 inputs)."""
    return MIDSimpleCNN(input_shape, num_classes, dropout=dropout)

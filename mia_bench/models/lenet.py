"""LeNet-5 style CNN that also runs on tiny inputs (sklearn digits, 1x8x8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, image_shape, init_weights, register_model


class LeNet(Classifier):
    """LeNet-5 with ReLU and max pooling.

    ``conv5x5(C->6, pad 2) -> ReLU -> maxpool2 -> conv5x5(6->16, pad 2) -> ReLU -> maxpool2
    -> adaptive avg pool 5x5 -> fc 400->120 -> ReLU -> fc 120->84 -> ReLU`` (features, 84-d) ``-> head``.

    Both convs are padded and the pools use ``ceil_mode`` so any input from 1x1 up keeps a non-empty map;
    the adaptive pool restores the classic 16x5x5 = 400 inputs of the first fully connected layer.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout)
        in_channels = image_shape(input_shape, "lenet")[0]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(6, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d((5, 5)),
            nn.Flatten(1),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self._build_head(84)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("lenet")
def lenet(input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> LeNet:
    """LeNet-5 style CNN (84-d features)."""
    return LeNet(input_shape, num_classes, dropout=dropout)

"""A small plain CNN: ``[conv3x3 -> norm -> ReLU -> maxpool2] * len(channels) -> adaptive avg pool``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, check_norm, image_shape, init_weights, make_norm2d, register_model


class SmallCNN(Classifier):
    """One block per entry of ``channels``: 3x3 conv (pad 1), norm, ReLU, 2x2 max pool (``ceil_mode`` so
    tiny inputs never shrink to an empty map); global average pooling gives ``channels[-1]`` features."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, dropout)
        check_norm(norm)
        channels = [int(c) for c in channels]
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"cnn channels must be a non-empty list of positive ints, got {channels}")
        in_ch = image_shape(input_shape, "cnn")[0]
        layers: list[nn.Module] = []
        for out_ch in channels:
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=norm == "none"),
                make_norm2d(norm, out_ch),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.features = nn.Sequential(*layers)
        self._build_head(in_ch)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("cnn")
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (32, 64, 128),
    norm: str = "batch",
    dropout: float = 0.0,
) -> SmallCNN:
    """Small CNN with ``channels`` (default ``[32, 64, 128]``) and ``norm`` in batch | group | none."""
    return SmallCNN(input_shape, num_classes, channels=channels, norm=norm, dropout=dropout)

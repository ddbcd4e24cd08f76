"""CIFAR-style VGG (Simonyan & Zisserman, with normalisation after every conv; 512-d features)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, check_norm, image_shape, init_weights, make_norm2d, register_model

# "M" is a 2x2 max pool. Five pools take 32x32 to 1x1, as in the usual CIFAR VGG (one Linear head).
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(Classifier):
    """``[conv3x3 -> norm -> ReLU]`` stacks separated by max pools, then global average pooling.

    The pools use ``ceil_mode`` so inputs smaller than 32x32 (down to 1x1) still run; on 32x32 the map is
    already 1x1 before the adaptive pool, so the model is exactly the CIFAR VGG (without conv biases,
    which the following normalisation makes redundant).
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        input_shape: Sequence[int],
        num_classes: int,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, dropout)
        check_norm(norm)
        in_ch = image_shape(input_shape, "vgg")[0]
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out_ch = int(v)
                layers += [
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=norm == "none"),
                    make_norm2d(norm, out_ch),
                    nn.ReLU(),
                ]
                in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.features = nn.Sequential(*layers)
        self._build_head(in_ch)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("vgg11")
def vgg11(input_shape: Sequence[int], num_classes: int, norm: str = "batch", dropout: float = 0.0) -> VGG:
    """VGG-11 (CIFAR variant, 8 convs)."""
    return VGG(VGG_CFGS["vgg11"], input_shape, num_classes, norm=norm, dropout=dropout)


@register_model("vgg16")
def vgg16(input_shape: Sequence[int], num_classes: int, norm: str = "batch", dropout: float = 0.0) -> VGG:
    """VGG-16 (CIFAR variant, 13 convs)."""
    return VGG(VGG_CFGS["vgg16"], input_shape, num_classes, norm=norm, dropout=dropout)

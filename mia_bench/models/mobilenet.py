"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs, reusing torchvision's implementation.

The common CIFAR adaptation (e.g. kuangliu/pytorch-cifar): the first conv has stride 1 instead of 2, and so
has the second bottleneck stage (t=6, c=24, n=2), so 32x32 inputs reach the last stage at 4x4 instead of
1x1. The input conv takes ``input_shape[0]`` channels. torchvision's classifier is replaced by this
package's ``dropout -> head`` (its Linear layer, with torchvision's init, becomes ``head``); features are
the ``last_channel`` (1280 for ``width_mult <= 1``) globally pooled activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.ops.misc import Conv2dNormActivation

from .registry import Classifier, check_norm, image_shape, init_weights, make_norm2d, register_model

# torchvision's default setting (t, c, n, s) with the 24-channel stage at stride 1 (CIFAR adaptation).
CIFAR_INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # stride 2 in the ImageNet model
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


class MobileNetV2(Classifier):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width_mult: float = 1.0,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, dropout)
        check_norm(norm)
        in_channels = image_shape(input_shape, "mobilenet_v2")[0]
        norm_layer = partial(make_norm2d, norm)
        tv = tv_mobilenet_v2(
            weights=None,
            num_classes=self.num_classes,
            width_mult=float(width_mult),
            inverted_residual_setting=[list(s) for s in CIFAR_INVERTED_RESIDUAL_SETTING],
            norm_layer=norm_layer,
        )
        # Replace the stride-2 input conv (hard-wired to 3 channels) by a stride-1 one on in_channels.
        stem = Conv2dNormActivation(
            in_channels,
            tv.features[0].out_channels,
            stride=1,
            norm_layer=norm_layer,
            activation_layer=nn.ReLU6,
        )
        init_weights(stem)
        tv.features[0] = stem
        for m in tv.features.modules():  # in-place activations break per-sample-gradient hooks (Opacus)
            if isinstance(m, (nn.ReLU, nn.ReLU6)):
                m.inplace = False
        self.features = tv.features
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self._build_head(tv.last_channel, head=tv.classifier[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


@register_model("mobilenet_v2")
def mobilenet_v2(
    input_shape: Sequence[int],
    num_classes: int,
    width_mult: float = 1.0,
    norm: str = "batch",
    dropout: float = 0.0,
) -> MobileNetV2:
    """MobileNetV2 adapted to 32x32 (stride-1 stem and 24-channel stage), torchvision blocks."""
    return MobileNetV2(input_shape, num_classes, width_mult=width_mult, norm=norm, dropout=dropout)

"""ResNet-18, CIFAR variant (He et al. 2016 as adapted by e.g. kuangliu/pytorch-cifar).

3x3 stem with stride 1 and no max pool, four stages of two BasicBlocks with widths 64-128-256-512
(strides 1-2-2-2), global average pooling -> 512-d features. About 11.17M parameters for 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, check_norm, image_shape, init_weights, make_norm2d, register_model


def _conv3x3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = _conv3x3(in_ch, out_ch, stride, bias)
        self.bn1 = make_norm2d(norm, out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, 1, bias)
        self.bn2 = make_norm2d(norm, out_ch)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=bias),
                make_norm2d(norm, out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(Classifier):
    """CIFAR ResNet with BasicBlocks; ``blocks`` per stage, widths 64 * 2**i."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        blocks: Sequence[int] = (2, 2, 2, 2),
        norm: str = "batch",
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(num_classes, dropout)
        check_norm(norm)
        in_channels = image_shape(input_shape, "resnet")[0]
        self.stem = nn.Sequential(
            _conv3x3(in_channels, 64, 1, bias=norm == "none"),
            make_norm2d(norm, 64),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        in_ch = 64
        for i, n in enumerate(blocks):
            out_ch = 64 * 2**i
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n):
                layer.append(BasicBlock(in_ch, out_ch, stride if j == 0 else 1, norm=norm))
                in_ch = out_ch
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self._build_head(in_ch)
        init_weights(self)
        if zero_init_residual:  # start each residual branch as identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, BasicBlock) and isinstance(m.bn2, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x)


@register_model("resnet18")
def resnet18(
    input_shape: Sequence[int],
    num_classes: int,
    norm: str = "batch",
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> ResNet:
    """CIFAR ResNet-18 ([2, 2, 2, 2] BasicBlocks, widths 64-512, 3x3 stride-1 stem, no max pool)."""
    return ResNet(
        input_shape,
        num_classes,
        blocks=(2, 2, 2, 2),
        norm=norm,
        dropout=dropout,
        zero_init_residual=zero_init_residual,
    )

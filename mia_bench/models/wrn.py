"""Wide-ResNet (Zagoruyko & Komodakis 2016), the WRN-28-2 used as target model by LiRA (Carlini et al. 2022).

Pre-activation blocks ``norm -> ReLU -> conv3x3 -> norm -> ReLU -> conv3x3`` plus a 1x1 projection
shortcut (fed the pre-activated input) where the shape changes; a 3x3 stem of 16 channels, three groups of
``(depth - 4) / 6`` blocks with widths 16k-32k-64k and strides 1-2-2, a final norm -> ReLU, global average
pooling -> ``64 * widen_factor`` features. WRN-28-2: about 1.47M parameters for 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, check_norm, image_shape, init_weights, make_norm2d, register_model


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.bn1 = make_norm2d(norm, in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)
        self.bn2 = make_norm2d(norm, out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=bias)
        self.equal_in_out = in_ch == out_ch and stride == 1
        self.shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu2(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(Classifier):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, dropout)
        check_norm(norm)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        in_channels = image_shape(input_shape, "wrn")[0]
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=norm == "none")
        groups: list[nn.Module] = []
        in_ch = widths[0]
        for out_ch, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_ch, out_ch, stride if j == 0 else 1, norm=norm))
                in_ch = out_ch
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = make_norm2d(norm, in_ch)
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self._build_head(in_ch)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.pool(self.relu(self.bn(x)))


@register_model("wrn28_2")
def wrn28_2(
    input_shape: Sequence[int], num_classes: int, norm: str = "batch", dropout: float = 0.0
) -> WideResNet:
    """WRN-28-2 (depth 28, widen factor 2; 128-d features)."""
    return WideResNet(input_shape, num_classes, depth=28, widen_factor=2, norm=norm, dropout=dropout)

"""Multi-layer perceptron on the flattened input (tabular ``[D]`` or images ``[C, H, W]``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .registry import Classifier, init_weights, register_model


class MLP(Classifier):
    """``Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> (Dropout) -> head``.

    The same ``dropout`` rate is applied after every hidden layer and before the head; with
    ``hidden=[]`` the model is a linear (softmax-regression) classifier.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes, dropout)
        in_dim = math.prod(int(s) for s in input_shape)
        if in_dim < 1:
            raise ValueError(f"mlp needs a non-empty input shape, got {list(input_shape)}")
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ValueError(f"mlp hidden sizes must be >= 1, got {hidden}")
        layers: list[nn.Module] = [nn.Flatten(1)]
        # The last hidden layer's dropout is the base class' ``self.dropout`` (applied before the head).
        for i, h in enumerate(hidden):
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if i < len(hidden) - 1:
                layers.append(nn.Dropout(p=dropout))
            in_dim = h
        self.body = nn.Sequential(*layers)
        self._build_head(in_dim)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def set_dropout(self, p: float) -> None:
        super().set_dropout(p)
        for m in self.body.modules():
            if isinstance(m, nn.Dropout):
                m.p = self.dropout.p


@register_model("mlp")
def mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.0
) -> MLP:
    """MLP with ReLU hidden layers ``hidden`` (default ``[256, 256]``) on the flattened input."""
    return MLP(input_shape, num_classes, hidden=hidden, dropout=dropout)

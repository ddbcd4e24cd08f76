"""The ``Classifier`` base every model derives from, and the model registry (in the manner of timm).

A model is its builder, ``fn(input_shape, num_classes, **options) -> nn.Module``: a config selects it by naming it
(``_target_: mia_bench.models.cnn.cnn`` in ``conf/model/cnn.yaml``), and
:func:`~mia_bench.models.adapter.build_model` calls it. The registry is sugar over the same functions for the Python
API: ``@register_model("name")`` on a builder (a plain decorator, which stores the function and returns it
unchanged) lets :func:`create_model` find it by a short name, and tables use that name for a registered builder.

Every model has the same outer shape so that defenses and attacks can work on the penultimate layer::

    logits = model.head(model.dropout(model.forward_features(x)))

``forward_features`` returns ``[B, feature_dim]`` (after the final pooling / flatten), ``head`` is an
``nn.Linear(feature_dim, num_classes)`` and ``dropout`` an ``nn.Dropout`` whose rate the dropout defense
raises through the ``dropout`` argument every builder accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mia_bench.registry import Registry

__all__ = [
    "MODELS",
    "NORMS",
    "Classifier",
    "create_model",
    "get_model_builder",
    "list_models",
    "make_norm2d",
    "register_model",
    "registered_name",
]

Builder = Callable[..., "Classifier"]

#: Accepted values of the ``norm`` argument of the conv families that use normalisation.
NORMS = ("batch", "group", "none")


class Classifier(nn.Module):
    """Base class: a feature extractor (``forward_features``), a dropout and a linear ``head``.

    Subclasses call ``super().__init__(num_classes, dropout)``, build their body, then
    ``self._build_head(feature_dim)``, and implement :meth:`forward_features`.
    """

    feature_dim: int
    head: nn.Linear

    def __init__(self, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.dropout = nn.Dropout(p=_check_dropout(dropout))

    def _build_head(self, feature_dim: int, head: nn.Linear | None = None) -> None:
        """Create (or adopt) the ``nn.Linear(feature_dim, num_classes)`` head."""
        self.feature_dim = int(feature_dim)
        if head is None:
            head = nn.Linear(self.feature_dim, self.num_classes)
        if head.in_features != self.feature_dim or head.out_features != self.num_classes:
            raise ValueError(
                f"head is Linear({head.in_features}, {head.out_features}), "
                f"expected Linear({self.feature_dim}, {self.num_classes})"
            )
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Penultimate representation ``[B, feature_dim]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))

    @property
    def dropout_rate(self) -> float:
        return float(self.dropout.p)

    def set_dropout(self, p: float) -> None:
        """Change the rate of the dropout before the head (the MLP overrides it to also set hidden layers)."""
        self.dropout.p = _check_dropout(p)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _check_dropout(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return p


# --------------------------------------------------------------------------------------------- helpers
def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    return norm


def group_count(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor of it that is <= ``max_groups``."""
    return math.gcd(int(channels), max_groups)


def make_norm2d(norm: str, channels: int) -> nn.Module:
    """``batch`` -> BatchNorm2d, ``group`` -> GroupNorm (<= 32 groups), ``none`` -> Identity."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.Identity()


def init_weights(module: nn.Module) -> None:
    """Standard init: kaiming-normal (fan_out, ReLU) convs, unit/zero norms, zero linear biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))  # PyTorch's default Linear init, made explicit
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """Validate a ``[C, H, W]`` input shape for a conv model."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"model {model!r} needs an image input shape [C, H, W], got {list(shape)}")
    return shape  # type: ignore[return-value]


# -------------------------------------------------------------------------------------------- registry
MODELS: Registry[Builder] = Registry("model")
#: Decorator registering ``fn(input_shape, num_classes, **kwargs) -> Classifier`` under a name.
register_model = MODELS.register


def list_models() -> list[str]:
    """Sorted registered model names."""
    return MODELS.names()


def get_model_builder(name: str) -> Builder:
    return MODELS.get(name)


def registered_name(builder: object) -> str | None:
    """The name ``builder`` is registered under, or None (the reverse of :func:`get_model_builder`)."""
    return next((name for name in MODELS.names() if MODELS.get(name) is builder), None)


def create_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> Classifier:
    """Build the registered model ``name`` for inputs of shape ``input_shape`` (without the batch dim): its builder
    called with ``input_shape``, ``num_classes`` and ``kwargs``, as ``build_model`` calls it for a config.

    Raises ``ValueError`` for an unknown name and ``TypeError`` for a keyword argument the builder does
    not accept (both messages list what is accepted).
    """
    MODELS.check_kwargs(name, kwargs, skip=2)  # input_shape, num_classes
    shape = tuple(int(s) for s in input_shape)
    model = MODELS.get(name)(shape, int(num_classes), **kwargs)
    if not isinstance(model, Classifier):
        raise TypeError(f"builder of model {name!r} returned {type(model).__name__}, not a Classifier")
    model.model_name = name
    model.input_shape = shape
    return model

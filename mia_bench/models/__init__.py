"""Model zoo: every family module registers its builders on import.

>>> from mia_bench.models import create_model, list_models
>>> model = create_model("resnet18", input_shape=(3, 32, 32), num_classes=10, norm="group")
"""

from . import cnn, fastnet, lenet, mlp, mobilenet, resnet, vgg, wrn  # noqa: F401  (registers the models)
from .registry import (
    NORMS,
    Classifier,
    create_model,
    get_model_builder,
    list_models,
    make_norm2d,
    register_model,
)

__all__ = [
    "NORMS",
    "Classifier",
    "create_model",
    "get_model_builder",
    "list_models",
    "make_norm2d",
    "register_model",
]

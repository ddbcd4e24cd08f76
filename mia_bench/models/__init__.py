"""Model zoo: builders selected by ``_target_`` (``conf/model/*.yaml``), with a registry of short names as sugar.

>>> from mia_bench.models import create_model, list_models
>>> model = create_model("resnet18", input_shape=(3, 32, 32), num_classes=10, norm="group")

A config names the builder itself (``_target_: mia_bench.models.resnet.resnet18``) and
:func:`~mia_bench.models.adapter.build_model` calls it; :func:`create_model` finds the same function by its name.
"""

# The built-in families. Importing them runs their @register_model decorators, the only thing done at import: the
# names create_model and list_models know. The config files do not depend on it (their _target_ names the builder).
from . import cnn, fastnet, lenet, mid_cnn, mlp, mobilenet, resnet, vgg, wrn  # noqa: F401
from .adapter import build_model, model_name
from .registry import (
    NORMS,
    Classifier,
    create_model,
    get_model_builder,
    list_models,
    make_norm2d,
    register_model,
    registered_name,
)

__all__ = [
    "NORMS",
    "Classifier",
    "build_model",
    "create_model",
    "get_model_builder",
    "list_models",
    "make_norm2d",
    "model_name",
    "register_model",
    "registered_name",
]

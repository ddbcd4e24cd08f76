"""Any ``nn.Module`` as a benchmark model: a torchvision or timm constructor, or your own class.

``model._target_`` may name any callable that returns an ``nn.Module`` mapping inputs to ``[B, num_classes]``
logits. The pipeline passes ``input_shape`` and ``num_classes`` only to a constructor that takes them, drops the
model group's default keys the constructor does not take (with one warning naming them), and wraps a module that is
not a :class:`~mia_bench.models.registry.Classifier` in :class:`WrappedClassifier`: its last ``nn.Linear`` becomes
the ``head`` and the rest the feature extractor, which is what the defenses that work on features (MID's
information bottleneck replaces the head) and the dropout defense need.
"""

from __future__ import annotations

import inspect
import logging
import re

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mia_bench.models.registry import Classifier

log = logging.getLogger(__name__)
BUILDER = "mia_bench.models.create_model"
_WARNED: set[tuple[str, tuple[str, ...]]] = set()  # one warning per constructor and dropped keys, not per model


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear] | None:
    """(parent, attribute, layer) of the module's last registered ``nn.Linear`` (its output layer in torchvision's
    and timm's classifiers: ``fc``, ``head``, ``classifier[-1]``), or None."""
    last = None
    for path, module in model.named_modules():  # depth-first in registration order: the output layer comes last
        if isinstance(module, nn.Linear) and path:
            last = path
    if last is None:
        return None
    parent_path, _, name = last.rpartition(".")
    return model.get_submodule(parent_path), name, model.get_submodule(last)


class WrappedClassifier(Classifier):
    """A plain module split into a feature extractor (the module with its last Linear replaced by identity) and
    that Linear as the ``head``, so it is a :class:`Classifier` like the built-in models."""

    def __init__(self, module: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(num_classes, dropout)
        found = _last_linear(module)
        if found is None:
            raise ValueError(
                f"model {type(module).__name__}: no nn.Linear output layer found; mia_bench needs a module whose last "
                "nn.Linear maps features to the classes (torchvision's fc/classifier, timm's head), or a "
                "mia_bench.models.Classifier subclass with forward_features and head")
        parent, name, linear = found
        if linear.out_features != self.num_classes:
            raise ValueError(f"model {type(module).__name__}: its last nn.Linear ({name}) has {linear.out_features} "
                             f"outputs but the dataset has {self.num_classes} classes; pass num_classes to its "
                             "constructor (model.num_classes=...) or give it the right output layer")
        setattr(parent, name, nn.Identity())
        self.body = module
        self.wrapped = type(module).__name__
        self._build_head(linear.in_features, linear)

    def forward_features(self, x):
        return self.body(x).flatten(1)


def _warn(target: str, dropped: list[str]) -> None:
    if dropped and (target, tuple(dropped)) not in _WARNED:
        _WARNED.add((target, tuple(dropped)))
        log.warning("model: %s does not take %s; left out (defaults of the model group)", target, ", ".join(dropped))


def model_name(node: DictConfig) -> str:
    """What tables call the model: the registry name for the built-in builder, else the constructor's name."""
    target = str(node.get("_target_", ""))
    if target == BUILDER:
        return str(node.get("name", ""))
    return target.rsplit(".", 1)[-1]


def build_model(node: DictConfig, input_shape, num_classes: int) -> Classifier:
    """The model of a ``model`` config node for data of ``input_shape`` with ``num_classes`` classes."""
    target = get_object(str(node._target_))
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C extension: pass everything and let it say what it lacks
        params = {}
    open_kwargs = not params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = [k for k in node if k != "_target_"]
    dropped = [k for k in given if not open_kwargs and k not in params]
    _warn(str(node._target_), dropped)
    extra = {k: v for k, v in (("input_shape", list(input_shape)), ("num_classes", int(num_classes)))
             if open_kwargs or k in params}
    while True:  # a constructor with **kwargs (torchvision's) names what it does not take only when called
        kept = OmegaConf.create({k: node[k] for k in ("_target_", *given) if k not in dropped})
        try:
            model = instantiate(kept, **{k: v for k, v in extra.items() if k not in kept})
            break
        except Exception as e:  # hydra wraps the TypeError
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if not open_kwargs or bad is None or bad.group(1) in dropped or bad.group(1) not in (*given, *extra):
                raise
            name = bad.group(1)
            if name in extra:
                extra.pop(name)
            else:
                dropped.append(name)
                _warn(str(node._target_), [name])
    if not isinstance(model, nn.Module):
        raise ValueError(f"model._target_={node._target_} returned a {type(model).__name__}, not an nn.Module")
    return model if isinstance(model, Classifier) else WrappedClassifier(model, num_classes)

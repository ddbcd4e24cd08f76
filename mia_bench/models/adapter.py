"""How a ``model`` config node becomes a model: ``_target_`` names a constructor, :func:`build_model` calls it.

``model._target_`` names a callable returning an ``nn.Module`` that maps inputs to ``[B, num_classes]`` logits: the
builders of ``mia_bench.models`` (``conf/model/*.yaml``), a torchvision or timm constructor, or your own class or
function. :func:`build_model` decides from the callable's signature (:func:`accepted_keys`) which keys of the node it
passes, and wraps a module that is not a :class:`~mia_bench.models.registry.Classifier` in :class:`WrappedClassifier`:
its last ``nn.Linear`` becomes the ``head`` and the rest the feature extractor, which is what the defenses that work
on features (MID's information bottleneck replaces the head) and the dropout defense need.

The rule (nothing is tried and retried: the keys are decided before the one call):

* a key the callable names as a parameter is passed, and so are ``input_shape`` and ``num_classes`` when it names
  them (the dataset's values; a key of the node of the same name wins);
* behind ``**kwargs`` the adapter follows what can be inspected: the builder named by ``name`` for
  :func:`~mia_bench.models.create_model`, else the ``nn.Module`` class of the return annotation (torchvision's
  builders: ``resnet18(**kwargs) -> ResNet`` forwards them to ``ResNet``), whose parameters count as named (a base
  class, ``nn.Module`` or ``Classifier``, says nothing and is not followed);
* behind ``**kwargs`` that cannot be followed (``timm.create_model``, a class whose ``__init__`` takes ``**kwargs``, a
  callable without a signature): ``num_classes`` and every key that is not the model file's own (:func:`file_keys`)
  are passed; ``input_shape`` is not (torchvision's and timm's classes do not take it);
* Hydra's own keys (``_partial_``, ``_convert_``, ...) are passed to ``hydra.utils.instantiate`` as they are;
* every other key is left out, with one warning naming them, except ``name``, which only names the model.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mia_bench.models.registry import Classifier, create_model, get_model_builder, list_models, registered_name

log = logging.getLogger(__name__)
BUILDER = "mia_bench.models.create_model"  # the registry by name (``_target_`` with ``name``): kept for old files
_WARNED: set[tuple[str, tuple[str, ...]]] = set()  # one warning per constructor and dropped keys, not per model
_FOLLOW = 4  # forwards followed at most (a builder -> its class; create_model -> a builder)


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


def _signature(fn: Callable) -> inspect.Signature | None:
    """The signature, string annotations evaluated where they can be (``from __future__ import annotations``); None
    for a callable without one (a builtin or C extension)."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # no signature, or an annotation that does not evaluate: the parameters may still be there
        pass
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _forwarded_to(fn: Callable, sig: inspect.Signature, node: DictConfig) -> Callable | None:
    """Where ``fn`` sends its ``**kwargs``, when that can be known before calling it."""
    if fn is create_model:
        name = node.get("name")
        return get_model_builder(str(name)) if name in list_models() else None
    ret = sig.return_annotation
    if (inspect.isfunction(fn) and isinstance(ret, type) and issubclass(ret, nn.Module)
            and ret not in (nn.Module, Classifier)):
        return ret
    return None


def accepted_keys(target: Callable, node: DictConfig | None = None) -> tuple[frozenset[str], bool]:
    """(the keyword parameters ``target`` takes, followed through its ``**kwargs`` where they can be; whether it
    also takes ``**kwargs`` that could not be followed). ``node``: the model node (its ``name`` for create_model)."""
    named: set[str] = set()
    fn: Callable | None = target
    for _ in range(_FOLLOW):
        sig = _signature(fn)
        if sig is None:
            return frozenset(named), True
        params = sig.parameters.values()
        named |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return frozenset(named), False
        fn = _forwarded_to(fn, sig, node if node is not None else OmegaConf.create({}))
        if fn is None:
            break
    return frozenset(named), True


def file_keys(node: DictConfig) -> frozenset[str]:
    """The keys the model file itself brings: ``name`` and the options of the registered builder of that name (for
    ``model=mlp``: ``dropout``, ``hidden``). Behind ``**kwargs`` that cannot be followed they are left out, so a
    torchvision or timm constructor set on top of a model file does not receive that file's options."""
    name = node.get("name")
    if name not in list_models():
        return frozenset({"name"})
    return frozenset({"name"}) | (accepted_keys(get_model_builder(str(name)))[0] - {"input_shape", "num_classes"})


def _is_hydra_key(key: str) -> bool:
    return key.startswith("_") and key.endswith("_")


def model_name(node: DictConfig) -> str:
    """What tables call the model: the registry name of a registered builder (or the ``name`` given to
    :func:`~mia_bench.models.create_model`), else the constructor's name."""
    target = str(node.get("_target_", ""))
    if target == BUILDER:
        return str(node.get("name", ""))
    try:
        registered = registered_name(get_object(target))
    except Exception:  # not importable here: the name it was given
        registered = None
    return registered or target.rsplit(".", 1)[-1]


def build_model(node: DictConfig, input_shape, num_classes: int) -> Classifier:
    """The model of a ``model`` config node for data of ``input_shape`` with ``num_classes`` classes (the rule of the
    module docstring decides which keys the constructor gets)."""
    target = get_object(str(node._target_))
    named, open_kwargs = accepted_keys(target, node)
    own = file_keys(node)

    def takes(key: str) -> bool:
        return _is_hydra_key(key) or key in named or (open_kwargs and key not in own)

    kept = [k for k in node if takes(k)]
    unknown = [k for k in node if not takes(k) and k not in own]
    if unknown:  # a key the user added (a typo, or a constructor's argument that does not exist): never ignored
        raise ValueError(f"model: {node._target_} takes no {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(k for k in named if k not in ('input_shape', 'num_classes')))}")
    _warn(str(node._target_), [k for k in node if not takes(k) and k != "name"])
    extra = {}
    if "input_shape" in named:
        extra["input_shape"] = list(input_shape)
    if "num_classes" in named or open_kwargs:
        extra["num_classes"] = int(num_classes)
    call = OmegaConf.create({k: node[k] for k in kept})
    model = instantiate(call, **{k: v for k, v in extra.items() if k not in call})
    if not isinstance(model, nn.Module):
        raise ValueError(f"model._target_={node._target_} returned a {type(model).__name__}, not an nn.Module")
    return model if isinstance(model, Classifier) else WrappedClassifier(model, num_classes)

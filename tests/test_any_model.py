"""Any nn.Module as the model: a torchvision constructor, a timm-like factory, the user's own class (with MID on
top), and a throwaway model added as the README's "Adding a model" says: its builder and its YAML, nothing else."""

from __future__ import annotations

import logging
import shutil
import sys
import textwrap

import pytest
import torch
import torchvision
from hydra.utils import get_object
from omegaconf import OmegaConf
from torch import nn

from mia_bench.config import CONFIG_DIR, compose
from mia_bench.models import Classifier, list_models
from mia_bench.models.adapter import WrappedClassifier, accepted_keys, build_model, model_name
from tests.conftest import TINY


class TwoLayer(nn.Module):
    """A user's own model: takes the number of classes but not the input shape, flattens its input itself."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.out(self.body(x))


def test_a_torchvision_constructor_becomes_a_classifier_with_features_and_head(caplog):
    node = OmegaConf.create({"_target_": "torchvision.models.resnet18", "name": "mlp", "hidden": [256]})
    with caplog.at_level(logging.WARNING):
        model = build_model(node, (3, 32, 32), 10)
    assert "resnet18 does not take hidden; left out" in caplog.text  # the mlp file's option; name only names it
    assert isinstance(model, WrappedClassifier) and model.feature_dim == 512 and model.head.out_features == 10
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    reference = torchvision.models.resnet18(num_classes=10).eval()
    reference.load_state_dict({k.removeprefix("body."): v for k, v in model.state_dict().items()
                               if k.startswith("body.")} | {"fc.weight": model.head.weight,
                                                           "fc.bias": model.head.bias})
    torch.testing.assert_close(model(x), reference(x))     # the split changes nothing: features -> head = forward
    assert model.forward_features(x).shape == (2, 512)
    assert model_name(node) == "resnet18"


class Factory(nn.Module):
    """What a timm-like factory builds: takes everything through **kwargs, keeps what it knows."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.fc = nn.Linear(3 * 4 * 4, kwargs.get("num_classes", 1000))

    def forward(self, x):
        return self.fc(x.flatten(1))


def timm_like(model_name: str, pretrained: bool = False, **kwargs):
    """timm.create_model's shape: a name, then **kwargs that go to a class not known before the call."""
    return Factory(model_name=model_name, **kwargs)


def _built(node, shape=(3, 4, 4), num_classes=10):
    return build_model(OmegaConf.create(node), shape, num_classes)


def test_the_keys_a_constructor_gets_are_read_from_its_signature(caplog):
    """The rule of mia_bench/models/adapter.py, one constructor of each kind, over the default model file (mlp:
    name, dropout, hidden)."""
    mlp = {"name": "mlp", "dropout": 0.0, "hidden": [256, 256]}
    # torchvision: **kwargs followed to the class of the return annotation (MobileNetV2 takes dropout and num_classes)
    assert accepted_keys(torchvision.models.mobilenet_v2)[1] is False
    with caplog.at_level(logging.WARNING):
        tv = _built({"_target_": "torchvision.models.mobilenet_v2", **mlp, "width_mult": 0.25}, (3, 32, 32), 7)
    assert tv.head.out_features == 7 and tv.body.classifier[0].p == 0.0  # the file's dropout reached it (not 0.2)
    assert "mobilenet_v2 does not take hidden; left out" in caplog.text
    # a timm-like factory: **kwargs that cannot be followed get num_classes and the user's keys, not the file's
    assert accepted_keys(timm_like) == (frozenset({"model_name", "pretrained"}), True)
    model = _built({"_target_": "tests.test_any_model.timm_like", **mlp, "model_name": "x", "drop_rate": 0.1})
    assert model.body.kwargs == {"model_name": "x", "num_classes": 10, "drop_rate": 0.1}
    # a plain class: what it names, and input_shape / num_classes only when it names them
    assert isinstance(_built({"_target_": "tests.test_any_model.TwoLayer", **mlp, "width": 8}), WrappedClassifier)
    plain = _built({"_target_": "tests.test_any_model.TwoLayer", "width": 8}, num_classes=4)
    assert plain.head.out_features == 4 and plain.body.body[1].out_features == 8
    # Hydra's own keys pass through to instantiate
    conv = _built({"_target_": "tests.test_any_model.TwoLayer", "_convert_": "all", "width": 8})
    assert isinstance(conv, WrappedClassifier)


class Broken(nn.Module):
    """A constructor whose own TypeError reads like the one the old adapter retried on."""

    calls: list[dict] = []

    def __init__(self, num_classes: int, **kwargs) -> None:
        Broken.calls.append(kwargs)
        raise TypeError("__init__() got an unexpected keyword argument 'width'")


def test_a_constructor_error_is_raised_once_not_retried():
    """No retry on the text of an exception: a TypeError from inside the constructor is the user's to see."""
    calls = get_object("tests.test_any_model.Broken").calls  # the module as Hydra imports it
    calls.clear()
    with pytest.raises(Exception, match="unexpected keyword argument 'width'"):
        _built({"_target_": "tests.test_any_model.Broken", "name": "mlp", "width": 3})
    assert calls == [{"width": 3}]


def test_a_module_without_a_matching_output_layer_is_refused_with_what_it_needs():
    with pytest.raises(ValueError, match="no nn.Linear output layer"):
        WrappedClassifier(nn.Sequential(nn.Flatten(), nn.ReLU()), 10)
    with pytest.raises(ValueError, match="has 1000 outputs but the dataset has 10 classes"):
        WrappedClassifier(torchvision.models.resnet18(), 10)


@pytest.mark.slow
def test_the_users_own_module_trains_in_a_cell_with_mid_and_is_named_in_the_table(compose_cfg):
    from mia_bench.pipeline import run

    cfg = compose_cfg([*TINY, "attack=loss", "defense=mid", "model._target_=tests.test_any_model.TwoLayer",
                       "train.epochs=15", "+model.width=16"])
    records = run(cfg, {"dataset": "digits", "model": "mlp", "defense": "mid"})
    assert records[0]["model"] == "TwoLayer" and 0.3 < records[0]["test_acc_mean"] <= 1.0
    assert issubclass(WrappedClassifier, Classifier)


THROWAWAY_BUILDER = '''
"""A throwaway model: its builder is all the code it has."""
import math

from torch import nn


def tiny_mlp(input_shape, num_classes, width=64, dropout=0.0):
    """Flatten -> Linear -> ReLU -> Dropout -> Linear (the head, found as the last nn.Linear)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, num_classes))
'''

THROWAWAY_YAML = """\
# A throwaway MLP: one hidden layer.
_target_: mia_tiny_model.tiny_mlp
name: tiny_mlp
width: 64                # hidden units
dropout: 0.0             # before the head (the dropout defense raises it)
"""


@pytest.mark.slow
def test_a_model_added_as_its_builder_and_its_yaml_trains(tmp_path, monkeypatch):
    """The README's "Adding a model": a builder on the Python path and conf/model/<name>.yaml naming it by _target_
    (no registration, no other file) make model=<name> a model the real pipeline trains and names in its table."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "mia_tiny_model.py").write_text(textwrap.dedent(THROWAWAY_BUILDER))
    monkeypatch.syspath_prepend(str(code))
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "model" / "tiny_mlp.yaml").write_text(THROWAWAY_YAML)
    try:
        cfg = compose(["model=tiny_mlp", "num_models=2", "train.epochs=1", "evaluation.targets=1",
                       "evaluation.n_bootstrap=0", "attack=[loss]", "cache.enabled=false", "logger=none",
                       "progress=false", "figures=false", "trainer.enable_progress_bar=false",
                       f"paths.output_dir={tmp_path}/out", f"data.root={tmp_path}/data"], config_dir=conf)
        assert cfg.model._target_ == "mia_tiny_model.tiny_mlp"
        from mia_bench.pipeline import run

        records = run(cfg, {})
    finally:
        sys.modules.pop("mia_tiny_model", None)
    assert records and records[0]["model"] == "tiny_mlp" and records[0]["attack"] == "loss"
    assert 0.2 < records[0]["test_acc_mean"] <= 1.0  # digits has 10 classes: chance is 0.1
    assert "tiny_mlp" not in list_models()  # nothing was registered

"""Any nn.Module as the model: a torchvision constructor, or the user's own class, with MID on top."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from mia_bench.models import Classifier
from mia_bench.models.adapter import WrappedClassifier, build_model, model_name
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
    assert "does not take name" in caplog.text and "does not take hidden" in caplog.text  # the mlp defaults
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

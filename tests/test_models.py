"""Model zoo: registry, common Classifier shape, norm / dropout arguments, configs (fast: tiny batches)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from torch import nn

from mia_bench.models import (
    Classifier,
    build_model,
    create_model,
    get_model_builder,
    list_models,
    model_name,
    register_model,
    registered_name,
)
from mia_bench.models import registry as registry_mod
from tests.conftest import CONF

CONF_DIR = CONF / "model"
EXPECTED = ["cnn", "fastnet", "lenet", "mid_cnn", "mlp", "mobilenet_v2", "resnet18", "vgg11", "vgg16", "wrn28_2"]
CONV = [n for n in EXPECTED if n != "mlp"]
NORMED = ["cnn", "vgg11", "vgg16", "resnet18", "wrn28_2", "mobilenet_v2"]
SMALL = ["mlp", "lenet", "cnn"]  # cheap enough for every input shape
NUM_CLASSES = 7

# (model, input shape): tabular only for mlp; 1x8x8 and 3x32x32 for every model; the larger/other shapes
# only for the small models (kept out for the big ones to stay fast; test_big_inputs_smoke covers them).
CASES = (
    [("mlp", (20,))]
    + [(n, s) for n in EXPECTED for s in [(1, 8, 8), (3, 32, 32)]]
    + [(n, s) for n in SMALL for s in [(1, 28, 28), (3, 96, 96)]]
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(shape, batch=2):
    return torch.randn(batch, *shape)


def test_registered_names():
    assert list_models() == EXPECTED


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_shapes_and_head_decomposition(name, shape):
    model = create_model(name, shape, NUM_CLASSES).eval()
    assert isinstance(model, Classifier)
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == model.feature_dim and model.head.out_features == NUM_CLASSES
    x = _x(shape)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert feats.shape == (2, model.feature_dim)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.head(feats))


@pytest.mark.parametrize("name", [n for n in CONV if n not in SMALL])
def test_big_inputs_smoke(name):
    """The big models also run on 1x28x28 (MNIST) and 3x96x96 (STL-10) inputs (batch 1, no grad)."""
    for shape in [(1, 28, 28), (3, 96, 96)]:
        model = create_model(name, shape, NUM_CLASSES).eval()
        with torch.no_grad():
            assert model(_x(shape, batch=1)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", EXPECTED)
def test_dropout_takes_effect_in_train_mode(name):
    shape = (20,) if name == "mlp" else (1, 8, 8)
    x = _x(shape, batch=4)
    model = create_model(name, shape, NUM_CLASSES, dropout=0.5)
    assert model.dropout.p == 0.5
    model.train()
    assert not torch.allclose(model(x), model(x)), "dropout=0.5 should make train-mode passes differ"
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    # without dropout, train-mode passes are deterministic (BatchNorm uses batch statistics either way)
    plain = create_model(name, shape, NUM_CLASSES).train()
    assert plain.dropout.p == 0.0
    torch.testing.assert_close(plain(x), plain(x))


def test_mlp_dropout_between_hidden_layers():
    model = create_model("mlp", (20,), 3, hidden=[16, 8, 4], dropout=0.25)
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.25] * 3  # two between hidden layers + the one before the head
    model.set_dropout(0.1)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1] * 3
    assert model.feature_dim == 4
    linear = create_model("mlp", (2, 3), 3, hidden=[])
    assert linear.feature_dim == 6 and linear(torch.randn(5, 2, 3)).shape == (5, 3)


@pytest.mark.parametrize("name", NORMED)
@pytest.mark.parametrize("norm", ["group", "none"])
def test_norm_without_batchnorm(name, norm):
    model = create_model(name, (1, 8, 8), NUM_CLASSES, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    n_group = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert (n_group > 0) == (norm == "group")
    model.train()
    assert model(_x((1, 8, 8))).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", NORMED)
def test_default_norm_is_batch(name):
    model = create_model(name, (1, 8, 8), NUM_CLASSES)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", EXPECTED)
def test_gradient_flows(name):
    shape = (20,) if name == "mlp" else (3, 32, 32)
    model = create_model(name, shape, NUM_CLASSES).train()
    y = torch.randint(0, NUM_CLASSES, (2,))
    nn.functional.cross_entropy(model(_x(shape)), y).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # fastnet freezes its whitening
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    first = params[0][1]  # the input layer: gradient reached the bottom of the network
    assert first.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name,low,high,exact",
    [("resnet18", 11.1e6, 11.3e6, 11_173_962), ("wrn28_2", 1.44e6, 1.50e6, 1_467_610)],
)
def test_parameter_counts(name, low, high, exact):
    n = create_model(name, (3, 32, 32), 10).num_parameters()
    assert low <= n <= high
    assert n == exact
    # GroupNorm has the same affine parameters as BatchNorm
    assert create_model(name, (3, 32, 32), 10, norm="group").num_parameters() == exact


def test_resnet18_is_cifar_variant():
    model = create_model("resnet18", (3, 32, 32), 10)
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.feature_dim == 512


def test_mobilenet_adaptation_and_width():
    model = create_model("mobilenet_v2", (1, 32, 32), 10)
    assert model.features[0][0].in_channels == 1 and model.features[0][0].stride == (1, 1)
    strides = [m.stride[0] for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert strides.count(2) == 3  # ImageNet model: 4 stride-2 depthwise convs + stride-2 stem
    with torch.no_grad():
        fmap = model.features(torch.randn(1, 1, 32, 32))
    assert fmap.shape[-2:] == (4, 4)
    half = create_model("mobilenet_v2", (3, 32, 32), 10, width_mult=0.5)
    assert half.num_parameters() < model.num_parameters()


def test_mid_cnn_is_the_mid_authors_cifar10_network():
    """Their update_leaks/models.py SimpleCNN, written out as there: the same weights give the same logits (layer
    order, strides, LeakyReLU slope, pooling and the channel-major flatten of the 2048 features)."""
    model = create_model("mid_cnn", (3, 32, 32), 10).eval()
    theirs = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.MaxPool2d(2, 2), nn.Flatten(1), nn.Linear(128 * 4 * 4, 10),
    )  # fmt: skip
    ours = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for mine, their in zip(ours, [m for m in theirs if isinstance(m, (nn.Conv2d, nn.Linear))], strict=True):
        their.load_state_dict(mine.state_dict())
    x = _x((3, 32, 32), batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x))
    assert model.feature_dim == 2048 and model.num_parameters() == 96_138
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.modules())


def test_unknown_model_name():
    with pytest.raises(ValueError, match="not_a_model") as err:
        create_model("not_a_model", (3, 32, 32), 10)
    assert "resnet18" in str(err.value)


def test_unknown_kwarg_is_rejected():
    with pytest.raises(TypeError, match="widht") as err:
        create_model("cnn", (3, 32, 32), 10, widht=3)
    assert "channels" in str(err.value) and "dropout" in str(err.value)
    with pytest.raises(TypeError, match="norm"):
        create_model("lenet", (1, 8, 8), 10, norm="group")  # lenet has no normalisation


def test_bad_values():
    with pytest.raises(ValueError, match="layer"):
        create_model("resnet18", (3, 32, 32), 10, norm="layer")
    with pytest.raises(ValueError, match="dropout"):
        create_model("mlp", (20,), 10, dropout=1.5)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        create_model("cnn", (20,), 10)


def test_register_model_rejects_duplicates():
    class Tiny(Classifier):
        def __init__(self, input_shape, num_classes, dropout=0.0):
            super().__init__(num_classes, dropout)
            self._build_head(int(input_shape[0]))

        def forward_features(self, x):
            return x

    def build(input_shape, num_classes, dropout=0.0):
        return Tiny(input_shape, num_classes, dropout)

    try:
        register_model("_tiny_test")(build)
        assert "_tiny_test" in list_models()
        assert create_model("_tiny_test", (5,), 2)(torch.randn(3, 5)).shape == (3, 2)
        with pytest.raises(ValueError, match="already registered"):
            register_model("_tiny_test")(lambda input_shape, num_classes: None)
    finally:
        registry_mod.MODELS._builders.pop("_tiny_test", None)


def test_every_registered_model_has_a_config():
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == EXPECTED


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_names_its_builder(path):
    """A model file's _target_ is the registered builder itself (the registry is sugar over the same function),
    and build_model builds from it what create_model builds from the name: the same parameters from one seed."""
    cfg = OmegaConf.load(path)
    assert cfg.name == path.stem
    assert cfg.dropout == 0.0
    assert get_object(cfg._target_) is get_model_builder(path.stem)
    assert model_name(cfg) == path.stem
    assert all(len(line) <= 120 for line in path.read_text().splitlines())
    torch.manual_seed(0)
    model = build_model(cfg, [3, 32, 32], 10)
    torch.manual_seed(0)
    same = create_model(path.stem, (3, 32, 32), 10)
    assert isinstance(model, Classifier) and type(model) is type(same)
    assert list(model.state_dict()) == list(same.state_dict())
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in model.state_dict().items())
    if "norm" in cfg:
        assert cfg.norm == "batch"
    # a DP-SGD run overrides the norm from the command line
    if path.stem in NORMED:
        dp = build_model(OmegaConf.merge(cfg, {"norm": "group", "dropout": 0.2}), [1, 8, 8], 10)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in dp.modules())
        assert dp.dropout.p == 0.2


def test_the_registry_by_name_still_builds_from_a_config():
    """``_target_: mia_bench.models.create_model`` with ``name`` (the files' old form) builds the same model; its
    **kwargs are followed to the named builder, so a key that builder does not take is refused, naming it (a typo
    must not train a different model silently)."""
    node = OmegaConf.create({"_target_": "mia_bench.models.create_model", "name": "cnn", "channels": [4, 8],
                             "norm": "group"})
    torch.manual_seed(0)
    model = build_model(node, [1, 8, 8], 3)
    torch.manual_seed(0)
    same = create_model("cnn", (1, 8, 8), 3, channels=[4, 8], norm="group")
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in model.state_dict().items())
    assert model_name(node) == "cnn" and registered_name(get_model_builder("cnn")) == "cnn"
    assert registered_name(create_model) is None
    with pytest.raises(ValueError, match="takes no hidden; it takes .*channels"):
        build_model(OmegaConf.merge(node, {"hidden": [3]}), [1, 8, 8], 3)


def test_fastnet_whitening_layer_whitens_the_training_patches():
    """Initialised from the records, the 2x2 layer maps their patches to unit-variance, uncorrelated channels (the
    first half of its filters; the second half is their negative)."""
    x = torch.randn(800, 3, 16, 16) * torch.tensor([1.0, 3.0, 0.3])[None, :, None, None] + 0.5
    x[:, 1] += 0.8 * x[:, 0]  # correlated channels
    model = create_model("fastnet", (3, 16, 16), NUM_CLASSES, width=8)
    model.init_from_data(x)
    with torch.no_grad():
        out = model.whiten(x) - model.whiten.bias[None, :, None, None]
    half = out[:, : out.shape[1] // 2].transpose(0, 1).reshape(out.shape[1] // 2, -1)
    cov = half @ half.T / half.shape[1]
    assert torch.allclose(cov, torch.eye(len(cov)), atol=0.05)
    torch.testing.assert_close(out[:, out.shape[1] // 2 :], -out[:, : out.shape[1] // 2])
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad

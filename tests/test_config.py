"""The config tree: `+group=x` for every group (derived from the defaults lists), the attack bundles found from the
attack files (a new attack is its class and its YAML), composing from Python, and the tree inside the package."""

from __future__ import annotations

import shutil

import pytest
from omegaconf import OmegaConf

from mia_bench.config import (
    CONFIG_DIR,
    attack_configs,
    build_attack,
    compose,
    default_groups,
    normalize_overrides,
    register_bundles,
)
from tests.conftest import ROOT, TINY


def test_plus_spelling_is_accepted_for_default_groups():
    argv = ["+defense=none", "+dataset=digits", "+analysis=dynamics", "+extra=1", "++seed=3", "model=mlp", "-m",
            "+hydra/launcher=local", "+hydra/sweeper=basic"]
    assert normalize_overrides(argv) == [
        "defense=none",
        "dataset=digits",
        "analysis=dynamics",
        "+extra=1",  # not a group in the defaults list: Hydra needs the + to add a new key
        "++seed=3",
        "model=mlp",
        "-m",
        "hydra/launcher=local",
        "hydra/sweeper=basic",
    ]


def test_groups_come_from_the_defaults_lists():
    primary = OmegaConf.load(CONFIG_DIR / "config.yaml").defaults
    listed = {next(iter(d)) for d in primary if isinstance(d, dict) or OmegaConf.is_dict(d)}
    assert listed <= default_groups()
    assert {"dataset", "model", "defense", "attack", "analysis", "experiment", "hydra/launcher"} <= default_groups()
    assert "seed" not in default_groups() and "data" not in default_groups()


@pytest.mark.parametrize("spelling", ["", "+"])
@pytest.mark.parametrize("override, check", [
    ("dataset=synthetic", lambda c: c.dataset.name == "synthetic"),
    ("model=lenet", lambda c: c.model.name == "lenet"),
    ("defense=adamixup", lambda c: c.defense.name == "adamixup" and "adamixup" in c.callbacks),
    ("attack=lira", lambda c: list(c.attack) == ["lira_online", "lira_offline", "lira_online_fixed_var",
                                                  "lira_offline_fixed_var"]),
    ("analysis=dynamics", lambda c: "dynamics" in c.analysis),
    ("train=cifar", lambda c: c.train.epochs == 100),
    ("trainer=cpu", lambda c: c.trainer.accelerator == "cpu"),
    ("logger=tensorboard", lambda c: c.logger._target_.endswith("TensorBoardLogger")),
    ("paths=default", lambda c: "output_dir" in c.paths),
    ("experiment=mid_cifar10", lambda c: c.defense.name == "mid" and c.dataset.name == "cifar10"),
    ("hydra/launcher=local", lambda c: c.hydra.launcher._target_.endswith("JoblibLauncher")),
])
def test_every_group_composes_with_both_spellings(spelling, override, check):
    from mia_bench.gpu_pool import register_resolvers

    register_resolvers()
    assert check(compose([spelling + override], return_hydra_config=True))


def test_compose_leaves_a_running_hydra_alone():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        compose(["+defense=dropout"])
        assert GlobalHydra.instance().is_initialized()  # the caller's Hydra is still there
    assert not GlobalHydra.instance().is_initialized()


def test_the_tree_is_a_package_that_hydra_finds_by_module_name():
    """`pkg://mia_bench.conf` (what a wheel install offers) composes the same config, attack bundles included."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="mia_bench.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=["attack=fast"])
    assert list(cfg.attack) == [a for a in sorted(attack_configs()) if a != "shadow_model"]
    assert (ROOT / "conf").resolve() == CONFIG_DIR  # the top-level conf/ users look for is the package's tree


def test_build_attack_takes_the_config_file_and_overrides():
    lira = build_attack("lira_offline", estimator="mean")
    assert lira.online is False and lira.estimator == "mean" and lira.name == "lira_offline"
    with pytest.raises(ValueError, match="unknown attack 'nope'.*loss"):
        build_attack("nope")


MY_ATTACK = '''
from mia_bench.attacks.base import Attack


class NegLossAttack(Attack):
    """Higher score for a lower loss: the LOSS attack written again, as a user would write their own attack."""

    name = "my_loss"

    def score(self, signals, target, reference):
        return -signals.loss[target, :, 0]
'''


def test_a_new_attack_is_its_class_and_its_yaml(tmp_path, monkeypatch):
    """README 'Adding an attack': write the class and conf/attack/<name>.yaml; attack=all then runs it."""
    from mia_bench.pipeline import run

    (tmp_path / "my_attacks.py").write_text(MY_ATTACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (conf / "attack" / "my_loss.yaml").write_text(
        "# My attack.\nmy_loss:\n  _target_: my_attacks.NegLossAttack   # the class\n")
    register_bundles(conf)
    try:
        cfg = compose([*TINY, "attack=all", "logger=none", f"paths.output_dir={tmp_path / 'run'}"], config_dir=conf)
        assert "my_loss" in cfg.attack and "loss" in cfg.attack
        cfg.attack = {k: cfg.attack[k] for k in ("loss", "my_loss")}  # keep the run short
        records = {r["attack"]: r for r in run(cfg)}
    finally:
        register_bundles()  # the package's own tree again
    assert records["my_loss"]["auc_mean"] == records["loss"]["auc_mean"]  # the same score as the LOSS attack
    assert "my_loss" not in compose(["attack=all"]).attack

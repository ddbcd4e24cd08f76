"""The config tree: `+group=x` for every group (derived from the defaults lists), the attack bundles found from the
attack files (a new attack is its class and its YAML, a variant the file it starts from plus what it changes),
explicit registration, composing from Python, and the tree inside the package."""

from __future__ import annotations

import os
import shutil

import pytest
from omegaconf import OmegaConf

from mia_bench.config import (
    CONFIG_DIR,
    attack_configs,
    attack_names,
    build_attack,
    compose,
    default_groups,
    normalize_overrides,
    register,
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

    register()  # Hydra's own API composes nothing of ours: the bundles and resolvers are registered first
    with initialize_config_module(config_module="mia_bench.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=["attack=fast"])
    assert list(cfg.attack) == [a for a in sorted(attack_configs()) if a != "shadow_model"]
    assert (ROOT / "conf").resolve() == CONFIG_DIR  # the top-level conf/ users look for is the package's tree


def test_nothing_is_registered_on_import_and_register_can_be_called_again():
    """Importing mia_bench.config registers nothing; register() does it all and may be called any number of
    times (compose calls it, the command line calls it before Hydra composes)."""
    import subprocess
    import sys

    code = (
        "from hydra.core.config_store import ConfigStore\n"
        "from omegaconf import OmegaConf\n"
        "import mia_bench.config as c\n"
        "def seen(): return (OmegaConf.has_resolver('mia_bench.pid'), 'all.yaml' in ConfigStore.instance().repo.get("
        "'attack', {}))\n"
        "print(seen()); c.register(); c.register(); print(seen())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(False,", "False)", "(True,", "True)"]
    register()
    register()
    assert list(compose(["attack=all"]).attack) == attack_names()


def test_attack_files_say_whether_they_are_an_attack_or_a_bundle(tmp_path):
    """Every attack file is one attack (# @package attack.<name>) or a bundle (# @package attack); `all` holds
    every attack exactly once and no bundle, each as attack_configs gives it; a file that is neither is an error."""
    names = attack_names()
    assert "lira" not in names and "threshold" not in names and len(names) == len(set(names)) == 12
    assert compose(["attack=all"]).attack == attack_configs()
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (conf / "attack" / "unmarked.yaml").write_text("defaults:\n  - loss\n  - _self_\n")
    with pytest.raises(ValueError, match=r"unmarked\.yaml: begin it with '# @package attack\.unmarked'"):
        compose(["attack=loss"], config_dir=conf)


def test_an_attack_variant_is_the_file_it_starts_from_plus_the_keys_it_changes(tmp_path):
    """README 'Adding an attack': a LiRA variant of a few lines (lira_online plus one changed key) composes,
    joins attack=all, and builds a LiRA with the changed key and every other key inherited."""
    from hydra.utils import instantiate

    from mia_bench.attacks.lira import LiRA

    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (conf / "attack" / "lira_mean.yaml").write_text(
        "# @package attack.lira_mean\n"
        "defaults:\n"
        "  - lira_online@_here_\n"
        "  - _self_\n"
        "estimator: mean\n"
    )
    online = attack_configs()["lira_online"]
    cfg = compose(["attack=lira_mean"], config_dir=conf)
    assert list(cfg.attack) == ["lira_mean"]
    assert OmegaConf.to_container(cfg.attack.lira_mean) == {**OmegaConf.to_container(online), "estimator": "mean"}
    assert attack_configs(conf)["lira_mean"] == cfg.attack.lira_mean
    every = compose(["attack=all"], config_dir=conf).attack
    assert list(every) == sorted([*attack_configs(), "lira_mean"])
    assert "lira_mean" in compose(["attack=fast"], config_dir=conf).attack
    lira = instantiate(cfg.attack.lira_mean)
    assert isinstance(lira, LiRA) and lira.estimator == "mean"  # the changed key
    assert lira.online is True and lira.fix_variance is False and lira.std_eps == online.std_eps  # inherited
    assert lira.offline_statistic == online.offline_statistic and lira.fixed_std == online.fixed_std
    assert "lira_mean" not in compose(["attack=all"]).attack  # the package's own tree is untouched


def test_build_attack_takes_the_config_file_and_overrides():
    lira = build_attack("lira_offline", estimator="mean")
    assert lira.online is False and lira.estimator == "mean" and lira.name == "lira_offline"
    with pytest.raises(ValueError, match="unknown attack 'nope'.*loss"):
        build_attack("nope")


MY_CODE = '''
import torch

from mia_bench.attacks.base import Attack
from mia_bench.data.base import ArrayData, RawDataset
from mia_bench.training.module import ClassifierModule


class NegLossAttack(Attack):
    """Higher score for a lower loss: the LOSS attack written again, as a user would write their own attack."""

    name = "my_loss"

    def score(self, signals, target, reference):
        return -signals.loss[target, :, 0]


class L1Module(ClassifierModule):
    """A defense that changes the loss: cross-entropy plus an L1 penalty on the weights."""

    def __init__(self, *, l1: float = 1e-4, **base):
        super().__init__(**base)
        self.l1 = l1
        self.defense_info["l1"] = l1

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss + self.l1 * sum(p.abs().sum() for p in self.model.parameters())


def blobs(num_records: int = 400, seed: int = 0) -> RawDataset:
    """Two Gaussian blobs in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_records) % 2
    x = torch.randn(num_records, 8, generator=g) + 1.5 * y[:, None]
    return RawDataset(name="blobs", train=ArrayData(x, y), test=None, num_classes=2)
'''

YAMLS = {
    "attack/my_loss.yaml": "# @package attack.my_loss\n_target_: my_code.NegLossAttack\n",
    "defense/my_l1.yaml": (
        "# @package _global_\n"
        "defense:\n  name: my_l1\n  predict: null\n"
        "train:\n  module:\n    _target_: my_code.L1Module\n    l1: 0.001   # penalty weight\n"
    ),
    "dataset/blobs.yaml": (
        "name: blobs\nloader:\n  _target_: my_code.blobs\n"
        "population_size: null\ntest_size: 100   # records\npublic_size: 50   # records\n"
        "train_augment: {crop_padding: 0, hflip: false}\nquery_augment: {shift: 0, hflip: false}\n"
    ),
}


def test_a_new_attack_defense_and_dataset_are_their_code_and_their_yaml(tmp_path, monkeypatch):
    """README 'Adding an attack, a defense, a dataset': the code (here the user's own module) and one YAML each;
    attack=all then runs the new attack, and the new defense and dataset are options of their groups."""
    from mia_bench.pipeline import run

    (tmp_path / "my_code.py").write_text(MY_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for rel, text in YAMLS.items():
        (conf / rel).write_text(text)
    overrides = [*TINY, "+dataset=blobs", "+defense=my_l1", "attack=all", "logger=none",
                 f"paths.output_dir={tmp_path / 'run'}"]
    cfg = compose(overrides, config_dir=conf)  # registers conf's own bundles while it composes
    assert "my_loss" in cfg.attack and "loss" in cfg.attack
    cfg.attack = {k: cfg.attack[k] for k in ("loss", "my_loss")}  # keep the run short
    records = {r["attack"]: r for r in run(cfg, {"dataset": "blobs", "defense": "my_l1"})}
    assert records["my_loss"]["auc_mean"] == records["loss"]["auc_mean"]  # the same score as the LOSS attack
    assert records["loss"]["defense/l1"] == 0.001 and records["loss"]["n_records"] == 250
    assert "my_loss" not in compose(["attack=all"]).attack


def test_config_lines_are_short():
    """Lines a reader does not scroll, in every file of the tree. Comments say what a key means, its unit or range,
    or why it has its value; a key whose name and value say it all has none."""
    long = [f"{path.relative_to(CONFIG_DIR)}:{no}" for path in sorted(CONFIG_DIR.rglob("*.yaml"))
            for no, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 120]
    assert long == []


@pytest.mark.slow
def test_hydra_job_chdir_does_not_move_the_cache_or_the_data(tmp_path):
    """With hydra.job.chdir=true every run works inside its own folder; the cache (and data) must still be the one
    where the command started, or each run would retrain everything in a private cache."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MIA_BENCH_CACHE", "MIA_BENCH_DATA")}
    cmd = [sys.executable, "-m", "mia_bench", "hydra.job.chdir=true", "num_models=4", "train.epochs=2",
           "evaluation.targets=2", "attack=loss", "evaluation.n_bootstrap=0", "logger=none",
           "trainer.enable_progress_bar=false", "hydra.run.dir=run"]
    done = subprocess.run(cmd, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "run" / "cache").exists()
    assert (tmp_path / "run" / "metrics.json").exists()


def test_the_command_line_entry_point_imports_without_torch():
    """Shell completion and --help start without torch (about 1.5 s of imports)."""
    import subprocess
    import sys

    code = "import sys, mia_bench.__main__; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_console_leaves_lightning_chatter_and_third_party_warnings_to_the_log_file():
    import logging

    from mia_bench.console import console_filter as _console_filter

    def record(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert not _console_filter(record("lightning.pytorch.utilities.rank_zero", logging.INFO, "GPU available: False"))
    assert _console_filter(record("lightning.pytorch", logging.WARNING, "a real problem"))
    assert not _console_filter(record("py.warnings", logging.WARNING, "/x/site-packages/lightning/a.py:1: deprecated"))
    assert _console_filter(record("py.warnings", logging.WARNING, "/work/mine.py:3: UserWarning: check this"))
    assert _console_filter(record("mia_bench.pipeline", logging.INFO, "wrote outputs"))


def test_runs_are_named_mia_bench_and_multirun_console_lines_carry_their_job():
    import logging

    from mia_bench.config import compose
    from mia_bench.console import console_filter as _console_filter
    from mia_bench.console import quiet_console

    assert compose([], return_hydra_config=True).hydra.job.name == "mia_bench"  # mia_bench.log, --help header
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        quiet_console("job 3")
        line = handler.format(logging.LogRecord("mia_bench.pipeline", logging.INFO, __file__, 1, "wrote", None, None))
        assert "[job 3][mia_bench.pipeline][INFO] - wrote" in line and _console_filter in handler.filters
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)

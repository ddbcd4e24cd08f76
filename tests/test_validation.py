"""Bad options, keys and values refused before anything runs, with the name that was meant."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mia_bench.config import check_overrides, compose
from tests.conftest import ROOT


@pytest.mark.parametrize("overrides,needle", [
    (["+num_model=8"], "num_model: no such key; did you mean num_models?"),
    (["num_model=8"], "did you mean num_models?"),
    (["+evaluation.n_bootstraps=5"], "no such key in evaluation; did you mean n_bootstrap?"),
    (["+dataset.foo=1"], "dataset.foo: no such key in dataset"),
    (["attack=[loss,rmiaa]"], "attack=rmiaa: no such option; did you mean rmia? the options are confidence"),
    (["defense=dropuot"], "defense=dropuot: no such option; did you mean dropout?"),
])
def test_misspelt_keys_and_options_are_refused_naming_the_closest(overrides, needle):
    with pytest.raises(ValueError, match=needle.replace("?", r"\?").replace("[", r"\[")):
        compose(overrides)


def test_keys_under_a_constructor_and_sweeps_stay_open():
    """A constructor checks its own arguments, so keys may be added under a node with a _target_ (and callbacks)."""
    cfg = compose(["+model.width=4", "+trainer.gradient_clip_val=1.0",
                   "+train.module.optimizer.amsgrad=true", "+callbacks.x={_target_:lightning.pytorch.Callback}"])
    assert cfg.model.width == 4 and cfg.trainer.gradient_clip_val == 1.0
    check_overrides(["defense=none,dropout", "seed=0,1", "hydra/launcher=gpus", "jobs_per_gpu=2",
                     "'attack=[loss],[rmia]'".strip("'"), "+analysis=dynamics", "analysis.dynamics.every=2"])
    with pytest.raises(ValueError, match="defense=dropuot"):  # a typo inside a sweep
        check_overrides(["defense=none,dropuot"])


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mia_bench", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    return res, time.perf_counter() - t0


@pytest.mark.slow
def test_the_command_line_refuses_in_one_line_with_status_2_before_the_heavy_imports():
    """A misspelt key, a typo in a list, a bad value and a malformed override: exit 2, one error line, well before
    torch and Lightning would have loaded (measured here: about 0.4 s; torch alone takes 2 s)."""
    for args, needle in [(["+num_model=8"], "did you mean num_models"), (["attack=[loss,rmiaa]"], "did you mean rmia"),
                         (["num_models=3"], "even number of models"), (["attack=[loss"], "OverrideParseException")]:
        res, seconds = _cli(*args)
        assert res.returncode == 2, (args, res.stderr[-800:])
        errors = [line for line in res.stderr.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1 and needle in errors[0], res.stderr[-800:]
        assert seconds < 5, (args, seconds)


@pytest.mark.slow
def test_help_says_what_the_tool_does_with_examples_and_the_companion_commands():
    res, _ = _cli("--help")
    assert res.returncode == 0
    out = res.stdout
    for needle in ("how much do trained models leak", "defense: adamixup", "+key=value adds a", "Examples:",
                   "python -m mia_bench.report", "python -m mia_bench.cache", "--hydra-help"):
        assert needle in out, needle
    assert "powered by Hydra" not in out and "== Config ==" not in out

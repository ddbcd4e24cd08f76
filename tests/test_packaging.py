"""The package as users get it from `pip install .` (not editable): the config tree ships in the wheel, and
`python -m mia_bench` runs a cell from another directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_a_wheel_installed_into_a_fresh_venv_runs_a_cell_from_another_directory(tmp_path):
    # Built from a copy of the sources: setuptools leaves a build/ folder next to the sources it builds.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "mia_bench", src / "mia_bench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
             str(src)]
    res = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    [wheel] = wheels.glob("mia_bench-*.whl")

    # A fresh venv with the wheel, not the checkout. Its dependencies (torch alone is gigabytes) come from this
    # environment through a .pth line: a path listed there is added to sys.path as is, so the checkout's editable
    # install (itself a .pth in that folder) is not seen.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([py, "-c", "import mia_bench.config as c; print(c.CONFIG_DIR)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert where.startswith(str(env_dir)), where  # the installed package, not the checkout
    run = [py, "-m", "mia_bench", "num_models=4", "train.epochs=2", "evaluation.targets=2", "attack=[loss,rmia]",
           "evaluation.n_bootstrap=0", "logger=none", "trainer.enable_progress_bar=false", "hydra.run.dir=out"]
    res = subprocess.run(run, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    records = json.loads((elsewhere / "out" / "metrics.json").read_text())
    assert [r["attack"] for r in records] == ["loss", "rmia"] and records[0]["dataset"] == "digits"

"""Faults and what the tool does about them (README: Failure modes): signals, full disks, unwritable caches, shared
caches and outputs, concurrent runs. Each test fails on the version before the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

CELL = ["num_models=8", "train.epochs=100", "train.engine=sequential", "evaluation.targets=2", "attack=[loss]",
        "evaluation.n_bootstrap=20", "logger=none", "trainer.enable_progress_bar=false"]


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIA_BENCH_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "mia_bench", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stored(tmp_path: Path) -> int:
    return len(list((tmp_path / "cache" / "models").glob("*/manifest.json")))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_exits_non_zero_says_what_was_kept_and_the_rerun_resumes(tmp_path, sig):
    proc = _start(tmp_path, *CELL, "hydra.run.dir=run1")
    deadline = time.time() + 120
    while _stored(tmp_path) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:])
    kept = _stored(tmp_path)
    assert f"interrupted by {signal.Signals(sig).name} while training" in out, out[-2000:]
    assert f"of 8 are stored in the cache {tmp_path / 'cache'}; run the same command again" in out
    assert "python -m mia_bench" in out
    assert "Traceback" not in out
    assert not (tmp_path / "run1" / "metrics.json").exists()
    proc = _start(tmp_path, *CELL, "hydra.run.dir=run2")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    records = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert records[0]["models_from_cache"] == kept >= 1

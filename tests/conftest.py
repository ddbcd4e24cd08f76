"""Shared fixtures: composing the real config tree without the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mia_bench.config import CONFIG_DIR, compose

CONF = CONFIG_DIR  # the config tree (mia_bench/conf; conf/ at the repository's top level links to it)

ROOT = Path(__file__).resolve().parent.parent

# A tiny cell: a few models on digits for a few epochs, every output written, a few seconds on 2 cores.
TINY = [
    "num_models=4",
    "train.epochs=3",
    "evaluation.targets=2",
    "evaluation.n_bootstrap=20",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "figures=false",  # about 1 s per cell; the tests of the figures ask for them (figures=true)
]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test, as the CLI's default (cpu_threads: 1): on a shared 2-core machine two threads
    made tiny Lightning fits about 13x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    """Every test gets its own empty model/signals cache (``cache.dir`` defaults to $MIA_BENCH_CACHE, which CLI
    subprocesses inherit): no test writes into the repository or reuses another test's models."""
    monkeypatch.setenv("MIA_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides) -> the config the CLI would build, with outputs under tmp_path."""

    def _compose(overrides=(), output_dir: Path | None = None):
        return compose([*overrides, f"paths.output_dir={output_dir or tmp_path}", f"data.root={tmp_path / 'data'}"])

    return _compose

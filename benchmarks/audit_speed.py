"""mia_bench.audit against the same cell from the command line: 8 reference MLPs trained on the default cell's
digits population for 20 epochs, the same attacks, cache off, timed side by side in one run (the command line's
time includes its start: importing torch and Lightning).

    python benchmarks/audit_speed.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mia_bench  # noqa: E402
from mia_bench.config import compose  # noqa: E402
from mia_bench.pipeline import load_data  # noqa: E402

SETTINGS = ["train.epochs=20", "cache.enabled=false", "logger=none", "progress=false", "figures=false",
            "trainer.enable_progress_bar=false"]
ATTACKS = ["loss", "lira_online", "lira_offline", "rmia", "rmia_offline"]


def target_model(x: torch.Tensor, y: torch.Tensor, members: np.ndarray) -> torch.nn.Module:
    """A model trained outside mia_bench on the members, as a user would bring it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[members]), y[members]).backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    args = parser.parse_args()
    _, splits = load_data(compose([]).dataset, 0)
    x, y = splits.population.x, splits.population.y
    members = np.random.default_rng(0).random(len(y)) < 0.5
    target = target_model(x, y, members)
    best = {"command line": float("inf"), "mia_bench.audit": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mia_bench", "num_models=8", f"attack=[{','.join(ATTACKS)}]",
                            *SETTINGS, f"hydra.run.dir={tmp}/cli{r}"], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            best["command line"] = min(best["command line"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            mia_bench.audit(target, x.numpy(), y.numpy(), members, num_reference=8, attacks=ATTACKS,
                            overrides=SETTINGS, output_dir=f"{tmp}/audit{r}")
            best["mia_bench.audit"] = min(best["mia_bench.audit"], time.perf_counter() - t0)
    cli = best["command line"]
    print(f"\n8 reference MLPs, {len(y)} records, 20 epochs; best of {args.repeats}:")
    for side, t in best.items():
        print(f"  {side:<18}{t:7.1f} s  ({t / cli:.2f}x the command line)")


if __name__ == "__main__":
    main()

"""Kill runs at random points, rerun them, and check that the results equal an uninterrupted run's.

    python benchmarks/kill_resume.py [--trials 6] [--seed 0] [cell overrides ...]

One uninterrupted reference run (cache off), then ``--trials`` times: a fresh cache, a run killed with SIGTERM,
SIGINT or SIGKILL (in turn) after a random delay (training or attacking), its exit status, then the same command
again, whose metrics.json is compared field by field with the reference (timings aside). Prints one line per trial.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_metrics import compare, load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CELL = ["num_models=8", "train.epochs=40", "train.ensemble_size=2", "evaluation.targets=4", "attack=all",
        "logger=none", "trainer.enable_progress_bar=false"]


def start(workdir: Path, cache: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIA_BENCH_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "mia_bench", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args, cell = parser.parse_known_args()
    cell = cell or CELL
    rng = random.Random(args.seed)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ref = start(tmp, tmp / "unused", [*cell, "cache.enabled=false", "hydra.run.dir=reference"])
        ref.communicate()
        duration = time.perf_counter() - t0
        print(f"reference run: exit {ref.returncode}, {duration:.1f} s")
        for trial in range(args.trials):
            sig, delay = signals[trial % 3], rng.uniform(3.0, duration)
            cache = tmp / f"cache{trial}"
            proc = start(tmp, cache, [*cell, f"hydra.run.dir=killed{trial}"])
            time.sleep(delay)
            stage = "finished before the signal"
            if proc.poll() is None:
                proc.send_signal(sig)
                stage = "signalled"
            out, _ = proc.communicate()
            if (tmp / f"killed{trial}" / "metrics.json").exists():
                stage += ", after its outputs were complete"
            said = next((line.split(" - ", 1)[-1] for line in out.splitlines() if "interrupted by" in line), "")
            again = start(tmp, cache, [*cell, f"hydra.run.dir=rerun{trial}"])
            again.communicate()
            diffs = compare(load(tmp / "reference"), load(tmp / f"rerun{trial}"))
            # A signal must give 128 + n (or kill), unless it came after the run had written all its outputs.
            failures += bool(diffs) or again.returncode != 0 or (proc.returncode == 0 and "complete" not in stage)
            print(f"trial {trial}: {signal.Signals(sig).name} after {delay:.1f} s ({stage}): exit {proc.returncode}; "
                  f"rerun exit {again.returncode}, {'identical' if not diffs else f'{len(diffs)} fields differ'}"
                  + (f"; said: {said}" if said else ""))
            for line in diffs[:5]:
                print("   ", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check: how fast this machine trains reference models through mia_bench, in under 5 minutes on a GPU,
with no download (CIFAR-shaped generated data).

    python benchmarks/gpu_check.py              # a GPU: 25k records per model, bf16, cnn/resnet18/wrn28_2/fastnet
    python benchmarks/gpu_check.py --tiny       # any machine, tiny sizes (the test suite runs this on the CPU)

For each model it trains K models for one epoch one at a time and in the ensemble path, and prints models per
minute and the peak GPU memory of each, then runs the ``gpus`` launcher with two jobs sharing one GPU, and projects
the wall time of a 64-model LiRA audit of CIFAR-10 (45k population, so 22.5k records per model) from the faster
path's throughput, with each model's recipe (``train=cifar``: 100 epochs; fastnet with ``train=fast``: 10).
``--out FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mia_bench.config import compose
from mia_bench.data.splits import make_masks
from mia_bench.pipeline import load_data
from mia_bench.training.train import Recipe, train_models

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("cnn", "resnet18", "wrn28_2", "fastnet")
AUDIT_MODELS, AUDIT_RECORDS = 64, 22_500  # LiRA's CIFAR-10 audit: 64 models, each on half of 45k records


def cell(model: str, records: int, side: int, gpu: bool, tmp: str) -> list[str]:
    """A cell of generated CIFAR-shaped data where every model trains on ``records`` records for one epoch."""
    fast = model == "fastnet"
    return [
        "dataset=synthetic", f"dataset.loader.num_records={2 * records + 200}",
        f"dataset.loader.input_shape=[3,{side},{side}]",
        f"dataset.population_size={2 * records}", "dataset.test_size=100", "dataset.public_size=100",
        "dataset.train_augment.crop_padding=2", "dataset.train_augment.hflip=true", f"model={model}",
        f"train={'fast' if fast else 'cifar'}", "train.epochs=1", f"train.batch_size={1024 if fast else 256}",
        f"trainer={'gpu' if gpu else 'cpu'}", f"trainer.precision={'bf16-mixed' if gpu else '32-true'}",
        "logger=none", "cache.enabled=false", "trainer.enable_progress_bar=false", f"paths.output_dir={tmp}",
    ]


def timed(recipe: Recipe, splits, masks, engine: str, gpu: bool) -> tuple[float, float | None]:
    """Seconds to train the models of ``masks`` with ``engine``, and the peak GPU memory in GiB."""
    recipe.train.engine = engine
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_models(recipe, splits, masks)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, (torch.cuda.max_memory_allocated() / 2**30 if gpu else None)


def measure(model: str, k: int, records: int, side: int, gpu: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(cell(model, records, side, gpu, tmp))
        recipe = Recipe.from_config(cfg)
        _, splits = load_data(cfg.dataset, cfg.seed)
        masks = make_masks(len(splits.population), k, "paired", 0)
        timed(recipe, splits, masks[:1], "sequential", gpu)  # warm-up: CUDA context, cuDNN autotuning
        row = {"model": model, "models": k, "records": records, "epochs_per_run": int(recipe.train.epochs),
               "recipe_epochs": 10 if model == "fastnet" else 100}
        for engine in ("sequential", "ensemble"):
            try:
                seconds, peak = timed(recipe, splits, masks, engine, gpu)
                row[engine] = {"seconds": seconds, "models_per_minute": 60 * k / seconds, "peak_gib": peak}
            except torch.cuda.OutOfMemoryError as err:
                row[engine] = {"error": f"out of memory ({err.__class__.__name__})"}
                torch.cuda.empty_cache()
    return row


def launcher_check(gpu: bool) -> dict:
    """Two tiny jobs through ``hydra/launcher=gpus`` with two jobs per GPU, from a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mia_bench", "-m", "hydra/launcher=gpus",
               "jobs_per_gpu=2", "seed=0,1", "num_models=4", "evaluation.targets=1",
               "train.epochs=1", "attack=[loss]", "evaluation.n_bootstrap=0", "logger=none", "cache.enabled=false",
               "trainer.enable_progress_bar=false", f"trainer={'gpu' if gpu else 'cpu'}",
               f"hydra.sweep.dir={tmp}/sweep"]
        env = {**os.environ, "MIA_BENCH_GPU_LOCKS": f"{tmp}/locks", "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        jobs = len(list(Path(tmp, "sweep").glob("*/metrics.json")))
        return {"returncode": res.returncode, "jobs_done": jobs, "seconds": time.perf_counter() - t0,
                "leases": (res.stdout + res.stderr).count("leased GPU"),
                "tail": (res.stdout + res.stderr)[-1500:] if res.returncode else ""}


def projection(row: dict) -> float | None:
    """Hours for a 64-model LiRA audit of CIFAR-10 with this model's recipe, from the faster path's throughput."""
    rates = [row[e]["models_per_minute"] for e in ("sequential", "ensemble") if "models_per_minute" in row[e]]
    if not rates:
        return None
    epoch_minutes = 1 / max(rates) / row["epochs_per_run"] * AUDIT_RECORDS / row["records"]
    return AUDIT_MODELS * row["recipe_epochs"] * epoch_minutes / 60


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (any machine; what the test suite runs)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    parser.add_argument("--k", type=int, default=None, help="models per timing (default 8 on a GPU, 2 tiny)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mia_bench").setLevel(logging.WARNING)
    gpu = torch.cuda.is_available() and not args.tiny
    records, side, k = (25_000, 32, args.k or 8) if gpu else (64, 16, args.k or 2)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {k} models per timing, {records} records each, one epoch, "
          f"{'bf16' if gpu else 'float32'}; torch {torch.__version__}")
    rows = [measure(m, k, records, side, gpu) for m in args.models.split(",")]
    print("\n| model | one at a time: models/min | peak GiB | ensemble: models/min | peak GiB | "
          "LiRA-64 CIFAR-10 audit, projected hours |\n|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for engine in ("sequential", "ensemble"):
            r = row[engine]
            cells += [r.get("error") or f"{r['models_per_minute']:.1f}",
                      "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"]
        hours = projection(row)
        row["audit_hours"] = hours
        print(f"| {row['model']} | " + " | ".join(cells) + f" | {'-' if hours is None else f'{hours:.2f}'} |")
    launch = launcher_check(gpu)
    print(f"\ngpus launcher, 2 jobs per GPU: exit {launch['returncode']}, {launch['jobs_done']} of 2 jobs done, "
          f"{launch['leases']} GPU leases, {launch['seconds']:.1f} s")
    if launch["returncode"]:
        print(launch["tail"])
    result = {"device": device, "gpu": gpu, "rows": rows, "launcher": launch}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

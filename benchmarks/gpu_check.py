"""The GPU check: how fast this machine trains reference models through mia_bench, and a real CIFAR-10 cell end to
end, in under 8 minutes on a GPU, with no download.

    python benchmarks/gpu_check.py              # a GPU: 25k records per model, bf16, cnn/resnet18/wrn28_2/fastnet
    python benchmarks/gpu_check.py --cifar10 PATH   # also the real cell, on a local CIFAR-10 copy (folder or tarball)
    python benchmarks/gpu_check.py --tiny       # any machine, tiny sizes (the test suite runs this on the CPU)

For each model it trains K models for one epoch one at a time and in the ensemble path, and prints models per
minute and the peak GPU memory of each, then runs the ``gpus`` launcher with two jobs sharing one GPU, and projects
the wall time of a 64-model LiRA audit of CIFAR-10 (45k population, so 22.5k records per model) from the faster
path's throughput, with each model's recipe (``train=cifar``: 100 epochs; fastnet with ``train=fast``: 10).

With ``--cifar10 PATH`` it first runs ``experiment=fast_cifar10`` on that copy with the whole train split as the
population (no public split: 50k records, so 25k per model): two models (their test accuracy and seconds per model,
the JPEGs decoded once), then, last, the K=64 LiRA/RMIA cell end to end (training, queries, attacks: its wall time),
reusing the two models from the cache. ``--budget`` (seconds) bounds the whole check: the timing rows stop early
enough to leave the 64-model cell its share, and that cell takes fewer models only where the measured rate says 64
would not fit (the table says so). ``--out FILE`` writes the figures as JSON after every stage.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's mia_bench, installed or not (the GPU machine has a bare copy)

from mia_bench.config import compose  # noqa: E402
from mia_bench.data.splits import make_masks  # noqa: E402
from mia_bench.pipeline import load_data  # noqa: E402
from mia_bench.training.train import Recipe, train_models  # noqa: E402

MODELS = ("fastnet", "cnn", "resnet18", "wrn28_2")  # fastnet first: the real cell's model
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
            except Exception as err:  # a path that fails on this device is a finding, not the end of the check
                row[engine] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
                torch.cuda.empty_cache() if gpu else None
    return row


class Budget:
    """Seconds left of the check's ``--budget``, so each stage can see whether it still fits."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.perf_counter() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.perf_counter()


def child_env(tmp: str) -> dict:
    """The environment of a mia_bench subprocess: this checkout first on the path, whatever PYTHONPATH held."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "MIA_BENCH_GPU_LOCKS": f"{tmp}/locks", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def real_cell_args(path: str, gpu: bool, tmp: str, tiny: bool) -> list[str]:
    """``experiment=fast_cifar10`` on a local copy, the whole train split as the population (no public split)."""
    args = ["experiment=fast_cifar10", f"dataset.loader.path={path}", "dataset.public_size=0",
            f"data.root={tmp}/data", f"cache.dir={tmp}/cache", "logger=none", "progress=false",
            "trainer.enable_progress_bar=false", "figures=false"]
    if tiny or not gpu:  # the same flow on a CPU: tiny population, one epoch, float32
        args += ["trainer=cpu", "trainer.precision=32-true", "dataset.population_size=200", "train.epochs=1",
                 "train.batch_size=64", "signals.dtype=float32"]
    return args


def run_cell(args: list[str], tmp: str, name: str, timeout: float) -> dict:
    """One ``python -m mia_bench`` run: its wall time, exit status and the utility and attack figures it wrote."""
    out = Path(tmp, name)
    cmd = [sys.executable, "-m", "mia_bench", *args, f"hydra.run.dir={out}"]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=child_env(tmp),
                             timeout=None if timeout == float("inf") else max(timeout, 1))
        code, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as err:
        code, text = "timeout", f"stopped after {timeout:.0f} s\n{(err.stdout or b'')[-3000:]!r}"
    row = {"seconds": time.perf_counter() - t0, "returncode": code}
    metrics = out / "metrics.json"
    if code == 0 and metrics.is_file():
        rows = json.loads(metrics.read_text())
        first = rows[0]
        row.update({k: first[k] for k in ("num_models", "test_acc_mean", "test_acc_std", "train_acc_mean",
                                          "train_seconds", "models_from_cache", "n_records", "n_targets")})
        row["attacks"] = {r["attack"]: {"auc": r["auc_mean"], "tpr_at_1pct_fpr": r["tpr_at_fpr_0.01_mean"],
                                        "tpr_at_0.1pct_fpr": r["tpr_at_fpr_0.001_mean"],
                                        "attack_accuracy": r["attack_accuracy_mean"]} for r in rows}
        row["decoded"] = "decoding the images" in text
    else:
        row["tail"] = text[-3000:]
    return row


def real_cell(path: str, gpu: bool, tiny: bool, tmp: str, budget: Budget, rate: float | None,
              engine: list[str] = ()) -> dict:
    """Two fast models on 25k records each, then (``rate``: None) the K=64 LiRA/RMIA cell; see the module doc."""
    args = real_cell_args(path, gpu, tmp, tiny)
    if rate is None:
        two = [*args, "num_models=2", "attack=[loss]", "evaluation.n_bootstrap=0", "evaluation.targets=1"]
        first = run_cell(two, tmp, "two", budget.left())
        engine = []
        if first["returncode"] != 0:  # the ensemble path has not run on this device before: try one at a time
            engine = ["train.engine=sequential"]
            first = {**run_cell([*two, *engine], tmp, "two_sequential", budget.left()), "ensemble_failed": first}
        again = run_cell([*two, *engine], tmp, "two_again", budget.left())  # all from the cache: the data's cost
        return {"two_models": first, "rerun": again, "engine": engine}
    # the models beyond the two already stored, at the measured seconds per model; 30 s for start, data, attacks
    most = 4 if tiny else 64
    left = budget.left()
    k = most if left == float("inf") else max(2, min(most, 2 + 2 * int((left - 30) * rate / 2)))
    cell = [*args, *engine, f"num_models={k}", "attack=[loss,lira_online,rmia]", f"evaluation.targets={min(8, k)}"]
    return {"cell": run_cell(cell, tmp, "k64", budget.left()), "planned_models": k}


def launcher_check(gpu: bool) -> dict:
    """Two tiny jobs through ``hydra/launcher=gpus`` with two jobs per GPU, from a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mia_bench", "-m", "hydra/launcher=gpus",
               "jobs_per_gpu=2", "seed=0,1", "num_models=4", "evaluation.targets=1",
               "train.epochs=1", "attack=[loss]", "evaluation.n_bootstrap=0", "logger=none", "cache.enabled=false",
               "trainer.enable_progress_bar=false", f"trainer={'gpu' if gpu else 'cpu'}",
               f"hydra.sweep.dir={tmp}/sweep"]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=child_env(tmp), timeout=600)
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


def print_rows(rows: list[dict]) -> None:
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


def print_real(real: dict, decode_s: float) -> None:
    two, again = real["two_models"], real["rerun"]
    if two["returncode"] != 0:
        print(f"\nreal CIFAR-10 cell, 2 models: FAILED ({two['returncode']})\n{two.get('tail', '')}")
        return
    print(f"\nreal CIFAR-10 (local JPEG copy), fastnet, train=fast, {two['n_records'] // 2} records per model: "
          f"test acc {100 * two['test_acc_mean']:.2f} +- {100 * two['test_acc_std']:.2f}%, train acc "
          f"{100 * two['train_acc_mean']:.2f}%, {two['train_seconds'] / 2:.1f} s of training per model "
          f"(2 trained together), run {two['seconds']:.1f} s; decoding the JPEGs once {decode_s:.1f} s, "
          f"a rerun from the cache {again['seconds']:.1f} s (decoded again: {again.get('decoded')})")


def print_cell(cell: dict, planned: int, most: int) -> None:
    if cell["returncode"] != 0:
        print(f"\nK={planned} LiRA/RMIA cell: FAILED ({cell['returncode']})\n{cell.get('tail', '')}")
        return
    print(f"\nK={cell['num_models']} LiRA/RMIA cell on real CIFAR-10, end to end: {cell['seconds']:.1f} s "
          f"({cell['train_seconds']:.1f} s training {cell['num_models'] - cell['models_from_cache']} models, "
          f"{cell['models_from_cache']} from the cache); test acc {100 * cell['test_acc_mean']:.2f}%"
          + ("" if planned == most else f" -- fewer than {most}: the measured rate said {most} would not fit"))
    print("| attack | AUC | TPR@1%FPR (%) | TPR@0.1%FPR (%) | attack acc (%) |\n|---|---|---|---|---|")
    for name, a in cell["attacks"].items():
        print(f"| {name} | {a['auc']:.4f} | {100 * a['tpr_at_1pct_fpr']:.2f} | {100 * a['tpr_at_0.1pct_fpr']:.2f} | "
              f"{100 * a['attack_accuracy']:.2f} |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (any machine; what the test suite runs)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    parser.add_argument("--k", type=int, default=None, help="models per timing (default 8 on a GPU, 2 tiny)")
    parser.add_argument("--cifar10", default=None, help="a local CIFAR-10 copy (folder or tarball): the real cell")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default: no bound)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mia_bench").setLevel(logging.WARNING)
    budget = Budget(args.budget)
    gpu = torch.cuda.is_available() and not args.tiny
    records, side, k = (25_000, 32, args.k or 8) if gpu else (64, 16, args.k or 2)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {k} models per timing, {records} records each, one epoch, "
          f"{'bf16' if gpu else 'float32'}; torch {torch.__version__}", flush=True)
    result: dict = {"device": device, "gpu": gpu, "torch": torch.__version__, "rows": [], "skipped": []}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        reserve = 0.0
        if args.cifar10:
            from mia_bench.data.vision import cifar10

            t0 = time.perf_counter()
            cifar10(f"{tmp}/data", download=False, path=args.cifar10)  # decoded once, for every run after it
            result["decode_seconds"] = time.perf_counter() - t0
            result["real"] = real_cell(args.cifar10, gpu, args.tiny, tmp, budget, None)
            print_real(result["real"], result["decode_seconds"])
            save()
            reserve = 0.6 * budget.left() if args.budget else 0.0  # the 64-model cell's share of what is left
        for m in args.models.split(","):
            if budget.left() < reserve + 45:
                result["skipped"].append(m)
                continue
            result["rows"].append(measure(m, k, records, side, gpu))
            save()
        print_rows(result["rows"])
        if result["skipped"]:
            print(f"not timed (budget): {', '.join(result['skipped'])}")
        if budget.left() > reserve + 25:
            launch = result["launcher"] = launcher_check(gpu)
            print(f"\ngpus launcher, 2 jobs per GPU: exit {launch['returncode']}, {launch['jobs_done']} of 2 jobs "
                  f"done, {launch['leases']} GPU leases, {launch['seconds']:.1f} s", flush=True)
            if launch["returncode"]:
                print(launch["tail"])
            save()
        if args.cifar10 and result["real"]["two_models"]["returncode"] == 0:
            two, again = result["real"]["two_models"], result["real"]["rerun"]
            per_model = max((two["seconds"] - again["seconds"]) / 2, 1e-3)
            torch.cuda.empty_cache() if gpu else None
            result["k64"] = real_cell(args.cifar10, gpu, args.tiny, tmp, budget, 1 / per_model,
                                      result["real"]["engine"])
            print_cell(result["k64"]["cell"], result["k64"]["planned_models"], 4 if args.tiny else 64)
            save()
    return result


if __name__ == "__main__":
    main()

"""Training speed: the K models of a cell through mia_bench's Lightning path against a plain PyTorch loop doing
the same work (same model, optimizer, batches, epochs, augmentation), timed side by side in one process and
reported as a ratio (the machine is shared and noisy, so absolute times mean little).

    python benchmarks/bench_training.py [--models 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mia_bench.augment import random_crop_flip
from mia_bench.config import compose
from mia_bench.data.splits import make_masks, model_seed
from mia_bench.pipeline import load_data
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.train import Recipe, build_module, train_models

CELLS = {
    "default (digits, mlp, 60 epochs)": [],
    "CIFAR-shaped synthetic (3x32x32, cnn, 3 epochs)": [
        "dataset=synthetic",
        "dataset.loader.num_records=2500",
        "dataset.loader.input_shape=[3,32,32]",
        "dataset.train_augment.crop_padding=4",
        "dataset.train_augment.hflip=true",
        "model=cnn",
        "train.epochs=3",
        "train.batch_size=128",
    ],
}


def plain_loop(cfg, splits, masks, indices) -> None:
    """What a researcher would write by hand: the same modules, a bare loop over pre-batched tensors."""
    aug = cfg.dataset.train_augment
    for k in indices:
        seed = model_seed(cfg.seed, k)
        torch.manual_seed(seed)
        module = build_module(Recipe.from_config(cfg), splits)
        model = module.model
        opt = instantiate(cfg.train.module.optimizer)(model.parameters())
        member = torch.from_numpy(np.flatnonzero(masks[k]))
        loader = TensorBatchLoader(
            splits.population.x[member], splits.population.y[member], cfg.train.batch_size, seed=seed
        )
        model.train()
        for _ in range(cfg.train.epochs):
            for x, y in loader:
                x = random_crop_flip(x, aug.crop_padding, aug.hflip)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=4, help="models trained per timing (K)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating repeats; the best of each is kept"
    )
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CELLS.items():
            cfg = compose([
                *overrides,
                f"paths.output_dir={tmp}",
                "logger=none",
                "trainer.enable_progress_bar=false",
                f"num_models={args.models}",
                "trainer.accelerator=cpu",
            ])
            torch.set_num_threads(int(cfg.cpu_threads or torch.get_num_threads()))
            _, splits = load_data(cfg.dataset, cfg.seed)
            masks = make_masks(len(splits.population), cfg.num_models, "paired", cfg.seed)
            idx = list(range(cfg.num_models))
            best_l, best_p = float("inf"), float("inf")
            for _ in range(args.repeats):  # alternate so that machine noise hits both sides alike
                t0 = time.perf_counter()
                train_models(Recipe.from_config(cfg), splits, masks, idx)
                best_l = min(best_l, time.perf_counter() - t0)
                t0 = time.perf_counter()
                plain_loop(cfg, splits, masks, idx)
                best_p = min(best_p, time.perf_counter() - t0)
            rows.append((name, best_l, best_p))
    print(
        f"\nTraining {args.models} models per cell, best of {args.repeats} alternating repeats, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'cell':<50} {'lightning s':>12} {'plain s':>9} {'speed vs plain':>15}")
    for name, tl, tp in rows:
        print(f"{name:<50} {tl:>12.2f} {tp:>9.2f} {tp / tl:>14.2f}x")


if __name__ == "__main__":
    main()

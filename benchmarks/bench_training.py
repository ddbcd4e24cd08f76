"""Training speed: the K models of a cell three ways, timed side by side in one process and reported as ratios
(the machine is shared and noisy, so absolute times mean little):

* a plain PyTorch loop doing the same work (same models, optimizer, batches, epochs, augmentation), one model
  after another: what a researcher would write by hand; for a CNN cell twice, in the default NCHW layout and in
  channels_last (NHWC), and the ratios are to the faster of the two;
* the same loop as the smallest LightningModule and a bare ``Trainer``: Lightning's own per-step cost, the floor
  under any Lightning path that trains one model at a time;
* mia_bench's Lightning path one model at a time (``train.engine=sequential``);
* mia_bench's ensemble path (``train.engine=ensemble``): the models of the cell trained together;
* for MLP cells, the ceiling of any ensemble: the same models as stacked weight tensors, each on its own batches,
  stepped by a hand-written loop with nothing else in it (batched products, cross-entropy, backward, foreach Adam).

    python benchmarks/bench_training.py [--repeats 2] [--threads N]

``--threads`` sets torch's CPU threads for every side (default: the config's ``cpu_threads``, 1). A plain loop
over small models gains nothing from a second thread; the ensemble's larger batched products do.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mia_bench.augment import random_crop_flip
from mia_bench.config import compose
from mia_bench.data.splits import make_masks, model_seed
from mia_bench.pipeline import load_data
from mia_bench.training.cuda_probe import keep_cuda_probe_cheap
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.train import Recipe, build_module, train_models

CELLS = {
    "default: 16 MLPs on digits, 60 epochs": ["num_models=16"],
    "8 cnn on CIFAR-shaped data (2500 x 3x32x32), 3 epochs": [
        "num_models=8",
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


def model_and_batches(cfg, splits, masks, k: int, channels_last: bool = False):
    """Model ``k`` as the cell builds it (its seed) and its own member batches, for the hand-written sides, with its
    weights in the layout asked for (the module would choose NHWC for a CNN by itself)."""
    seed = model_seed(cfg.seed, k)
    torch.manual_seed(seed)
    model = build_module(Recipe.from_config(cfg), splits).model
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    member = torch.from_numpy(np.flatnonzero(masks[k]))
    return model, TensorBatchLoader(
        splits.population.x[member], splits.population.y[member], cfg.train.batch_size, seed=seed
    )


def convolutional(cfg, splits) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in build_module(Recipe.from_config(cfg), splits).model.modules())


def plain_loop(cfg, splits, masks, channels_last: bool = False) -> bool:
    """The same modules, a bare loop over pre-batched tensors, one model after another (``channels_last``: NHWC
    weights and batches, only for a model with convolutions; False where it does not apply)."""
    if channels_last and not convolutional(cfg, splits):
        return False
    aug = cfg.dataset.train_augment
    for k in range(cfg.num_models):
        model, loader = model_and_batches(cfg, splits, masks, k, channels_last)
        opt = instantiate(cfg.train.module.optimizer)(model.parameters())
        model.train()
        for _ in range(cfg.train.epochs):
            for x, y in loader:
                x = random_crop_flip(x, aug.crop_padding, aug.hflip)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return True


class BareModule(pl.LightningModule):
    """The least a LightningModule can do: augment, forward, cross-entropy, the recipe's optimizer."""

    def __init__(self, model, optimizer, aug) -> None:
        super().__init__()
        self.model, self.optimizer, self.aug = model, optimizer, aug

    def training_step(self, batch, batch_idx):
        x = random_crop_flip(batch[0], self.aug.crop_padding, self.aug.hflip)
        if x.dim() == 4 and next(self.model.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(self.model(x), batch[1])

    def configure_optimizers(self):
        return self.optimizer(self.model.parameters())


def bare_lightning(cfg, splits, masks) -> None:
    """The plain loop's work through a bare Lightning fit, one model after another, in the layout the module would
    choose (NHWC for a CNN)."""
    layout = convolutional(cfg, splits)
    for k in range(cfg.num_models):
        model, loader = model_and_batches(cfg, splits, masks, k, layout)
        trainer = pl.Trainer(max_epochs=cfg.train.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(BareModule(model, instantiate(cfg.train.module.optimizer), cfg.dataset.train_augment), loader)


def stacked_ceiling(cfg, splits, masks) -> bool:
    """The cell's models as stacked tensors in a bare loop: what an ensemble costs with no framework, no per-model
    Python and no vmap. Only for MLPs (Linear and ReLU layers) without augmentation; False where it does not apply."""
    aug = cfg.dataset.train_augment
    if cfg.model.get("name") != "mlp" or cfg.model.get("dropout") or aug.crop_padding or aug.hflip:
        return False
    built = [model_and_batches(cfg, splits, masks, k) for k in range(cfg.num_models)]
    layers = [[m for m in model.modules() if isinstance(m, torch.nn.Linear)] for model, _ in built]  # body, head
    depth = range(len(layers[0]))
    weights = [torch.stack([ls[i].weight.detach().t() for ls in layers]).requires_grad_() for i in depth]
    biases = [torch.stack([ls[i].bias.detach()[None] for ls in layers]).requires_grad_() for i in depth]
    opt = instantiate(cfg.train.module.optimizer)(weights + biases, foreach=True)
    loaders = [loader for _, loader in built]
    for _ in range(cfg.train.epochs):
        for batches in zip(*loaders, strict=True):  # paired masks: every model has as many records
            h, y = torch.stack([x.flatten(1) for x, _ in batches]), torch.stack([y for _, y in batches])
            for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
                h = torch.baddbmm(b, h, w)
                h = h.relu() if i < len(weights) - 1 else h
            loss = F.cross_entropy(h.flatten(0, 1), y.flatten(), reduction="none").view(len(y), -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return True


def cell_work(cfg, splits, masks) -> tuple[int, float]:
    """(records trained on by the cell, all models and epochs; training FLOPs per record, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, loader = model_and_batches(cfg, splits, masks, 0)
    x, y = next(iter(loader))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(masks.sum()) * int(cfg.train.epochs), counter.get_total_flops() / len(x)


def lightning(engine: str):
    def train(cfg, splits, masks) -> None:
        recipe = Recipe.from_config(cfg)
        recipe.train.engine = engine
        train_models(recipe, splits, masks)

    return train


SIDES = {"plain loop": plain_loop, "plain, channels_last": lambda *a: plain_loop(*a, channels_last=True),
         "bare Lightning (floor)": bare_lightning,
         "Lightning, one at a time": lightning("sequential"), "Lightning, ensemble": lightning("ensemble"),
         "stacked, no framework": stacked_ceiling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: cpu_threads)")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mia_bench").setLevel(logging.WARNING)
    keep_cuda_probe_cheap()  # every side with the cheap probe, not only the ones that go through train_models
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CELLS.items():
            cfg = compose([*overrides, f"paths.output_dir={tmp}", "logger=none", "trainer.enable_progress_bar=false",
                           "trainer.accelerator=cpu", "cache.enabled=false"])
            torch.set_num_threads(args.threads or int(cfg.cpu_threads or torch.get_num_threads()))
            _, splits = load_data(cfg.dataset, cfg.seed)
            masks = make_masks(len(splits.population), cfg.num_models, "paired", cfg.seed)
            best = dict.fromkeys(SIDES, float("inf"))
            for _ in range(args.repeats):  # alternate so that machine noise hits every side alike
                for side, train in SIDES.items():
                    t0 = time.perf_counter()
                    applies = train(cfg, splits, masks) is not False
                    best[side] = min(best[side], time.perf_counter() - t0) if applies else float("nan")
            rows.append((name, best, cell_work(cfg, splits, masks) if convolutional(cfg, splits) else None))
    print(f"\nBest of {args.repeats} alternating repeats, {torch.get_num_threads()} torch thread(s); "
          "speed relative to the faster plain loop (higher is faster)")
    print(f"{'cell':<56}" + "".join(f"{side:>26}" for side in SIDES))
    for name, best, _ in rows:
        base = min(t for t in (best["plain loop"], best["plain, channels_last"]) if t == t)
        cells = "".join(f"{f'{t:.2f} s ({base / t:.2f}x)' if t == t else 'n/a':>26}" for t in best.values())
        print(f"{name:<56}{cells}")
    for name, best, work in rows:
        if work is None:
            continue
        records, flops = work
        print(f"\n{name}: records/s and GFLOP/s (training forward and backward, counted by torch's FlopCounterMode)")
        for side, t in best.items():
            if t == t:
                print(f"  {side:<28}{records / t:>9.0f} records/s {records * flops / t / 1e9:>7.1f} GFLOP/s")

if __name__ == "__main__":
    main()

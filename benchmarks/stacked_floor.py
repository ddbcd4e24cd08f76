"""The ceiling for any ensemble of the default cell's MLPs on this machine: a hand-written stacked training step
with nothing else in it (batched products, cross-entropy, backward, foreach Adam; no data handling, no framework),
timed for the default's 16 models x 660 steps with 1 and with 2 torch threads, next to the same step for one model
at a time. Compare with ``make bench``'s plain loop: no ensemble path can beat the stacked step's time.

    python benchmarks/stacked_floor.py [--threads 1 2] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

MODELS, BATCH, STEPS = 16, 64, 660  # the default cell: 16 MLPs, 650 member records in batches of 64, 60 epochs
DIMS = [64, 256, 256, 10]  # digits (8x8) -> hidden [256, 256] -> 10 classes


def timed_step(k: int, repeats: int) -> float:
    """Seconds per training step of ``k`` stacked MLPs (k=1: a single model, with addmm as nn.Linear does)."""
    weights = [(torch.randn(k, i, o) * 0.05).requires_grad_() for i, o in zip(DIMS, DIMS[1:], strict=False)]
    biases = [torch.zeros(k, 1, o, requires_grad=True) for o in DIMS[1:]]
    opt = torch.optim.Adam(weights + biases, lr=1e-3, foreach=True)
    x, y = torch.randn(k, BATCH, DIMS[0]), torch.randint(0, DIMS[-1], (k, BATCH))

    def step() -> None:
        h = x
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b, h, w) if k > 1 else torch.addmm(b[0], h[0], w[0])[None]
            h = h.relu() if i < len(weights) - 1 else h
        loss = F.cross_entropy(h.flatten(0, 1), y.flatten(), reduction="none").view(k, BATCH).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to time")
    parser.add_argument("--repeats", type=int, default=300, help="timed steps of the stack (x16 for one model)")
    args = parser.parse_args()
    print(f"{MODELS} MLPs {DIMS}, batch {BATCH}, {STEPS} steps each (the default cell's training work)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        stacked = timed_step(MODELS, args.repeats) * STEPS
        single = timed_step(1, args.repeats * MODELS) * STEPS * MODELS
        print(f"{threads} thread(s): stacked {stacked:.2f} s, one model at a time {single:.2f} s "
              f"({single / stacked:.2f}x)")


if __name__ == "__main__":
    main()

"""What a cache key covers: the recipe, the data, the source code, and each model's own index, seed and mask.

Other tools have been reported to reuse a stale cache silently after the target changed, so a model's key covers
the resolved recipe (:func:`describe_recipe`), the model's index, seed and the exact bytes of its membership mask, a
fingerprint of the data tensors actually used (:func:`data_fingerprint`: data edited on disk is a miss), the cache
format, ``mia_bench.__version__`` and a digest of the source that trains and queries models (:func:`code_digest`:
in a development checkout the version does not change when the code does).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

#: Parts of the config that determine a trained model (each model's mask, index and seed are added per model).
RECIPE_KEYS = ("dataset", "model", "train", "trainer", "defense", "callbacks", "seed")
#: Trainer settings that do not change the trained weights (display, logging, where it runs).
#: The device is left out on purpose: shards trained on GPUs serve an attack stage on a CPU node.
TRAINER_KEYS_IGNORED = (
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "default_root_dir",
    "enable_checkpointing",
    "accelerator",
    "devices",
    "num_nodes",
)
#: Training settings that choose how models are computed, not which: one at a time or together, the same models.
TRAIN_KEYS_IGNORED = ("engine", "ensemble_size")
#: Inference-time defense settings that choose how outputs are computed, not which (records per forward pass).
PREDICT_KEYS_IGNORED = ("chunk_size",)
#: Dataset-loader settings that locate data rather than define it (the data fingerprint covers the content).
LOADER_KEYS_IGNORED = ("root", "path", "download")
#: Source that determines a trained model, what it records while training, or its signals (package-relative).
#: Attack, report, cache and CLI code is left out: changing an attack must keep reusing the models.
CODE_PARTS = ("augment.py", "signals.py", "registry.py", "data", "models", "training", "defenses", "dynamics")


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form (sorted keys, no whitespace), 24 hex characters."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def array_digest(a: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (numpy or torch; no copy for a contiguous CPU array)."""
    if hasattr(a, "detach"):  # a torch tensor (not imported here: the cache's command line starts without torch)
        a = a.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()


def data_fingerprint(**splits: Any) -> str:
    """Digest of the splits a run trains and scores on (objects with ``x`` and ``y``, or None): catches data that
    changed on disk under the same config. A split that is the same object as an earlier one (the audit set outside
    the null test) is hashed once; CIFAR-10's 600 MB take about a second."""
    seen: dict[int, str] = {}
    parts = {}
    for name, data in sorted(splits.items()):
        if data is None:
            parts[name] = None
            continue
        if id(data) not in seen:
            seen[id(data)] = array_digest(data.x) + array_digest(data.y)
        parts[name] = seen[id(data)]
    return digest(parts)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the package source in :data:`CODE_PARTS`: an edited training or defense module must not be served
    models trained by the old code (the version string only changes at releases)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for part in CODE_PARTS:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def describe_recipe(cfg: DictConfig, recorded: dict | None = None) -> dict:
    """The parts of the config that determine a trained model (:data:`RECIPE_KEYS`): logged, stored in cache
    manifests, hashed into model keys.

    Left out because they do not change a model: attacks, evaluation, signals, logger, paths, cpu_threads,
    num_models (masks are prefix-stable; each model's mask bytes are in its key), membership (enters through the
    mask bytes), the trainer's display/logging/device settings, the inference-time defense's pass size, the data
    location, and ``dataset.query_augment``.
    ``recorded``: what analyses record while a model trains (the pipeline asks each analysis), which joins the
    recipe, together with the query augmentations, only when something is recorded."""
    out = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
        for k in RECIPE_KEYS
        if k in cfg
    }
    if recorded:
        out["analysis"] = recorded
    if isinstance(out.get("trainer"), dict):
        out["trainer"] = {k: v for k, v in out["trainer"].items() if k not in TRAINER_KEYS_IGNORED}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in TRAIN_KEYS_IGNORED}
    defense = out.get("defense")
    if isinstance(defense, dict) and isinstance(defense.get("predict"), dict):
        defense["predict"] = {k: v for k, v in defense["predict"].items() if k not in PREDICT_KEYS_IGNORED}
    dataset = out.get("dataset")
    if isinstance(dataset, dict):
        if isinstance(dataset.get("loader"), dict):
            dataset["loader"] = {k: v for k, v in dataset["loader"].items() if k not in LOADER_KEYS_IGNORED}
        if not recorded:
            dataset.pop("query_augment", None)
    return out

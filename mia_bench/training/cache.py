"""What the model/signals cache stores and under which keys (the files themselves: :mod:`mia_bench.cache`).

Why: training K models dominates a cell's cost, and a sweep over attacks (or a rerun after an interruption) must
not retrain them. DESIGN.md's pitfall: other tools silently reuse a stale cache after the target changed, so a
model's key covers the resolved recipe (:func:`mia_bench.training.train.describe_recipe`: dataset, model, train,
trainer settings that change training, defense, callbacks, seed, analysis), the model's index, seed and the exact
bytes of its membership mask, a fingerprint of the data tensors actually used (so data edited on disk is a miss),
the cache format, ``mia_bench.__version__`` and a digest of the source code that trains and queries models
(:func:`code_digest`: in a development checkout the version does not change when the code does). Masks are
prefix-stable (``make_masks`` gives model k the same mask for any K > k), so asking for more models trains only the
new ones. A signals entry is keyed by its models' keys, the scored records, their masks, the query augmentations
and the dtype: a run that changes only the attack reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import lightning
import numpy as np
import torch
from omegaconf import DictConfig

from mia_bench import __version__
from mia_bench.cache import FORMAT, Cache, digest
from mia_bench.data.base import ArrayData

log = logging.getLogger(__name__)


def array_digest(a: np.ndarray | torch.Tensor) -> str:
    """sha256 of an array's dtype, shape and bytes (no copy for a contiguous CPU array)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()


# Source that determines a trained model, its recorded artifacts or its signals. Attack, report and CLI code is left
# out: changing an attack must keep reusing the models.
CODE_PARTS = ("augment.py", "signals.py", "data", "models", "training", "defenses", "dynamics", "analysis")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the package source in :data:`CODE_PARTS`: an edited training or defense module must not be
    served models trained by the old code (the version string only changes at releases)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for part in CODE_PARTS:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            if f.name == "cache.py":  # the cache's own code does not change what a model is
                continue
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def data_fingerprint(**splits: ArrayData | None) -> str:
    """Digest of the tensors a run trains and scores on: catches data that changed on disk under the same config.

    Hashes each split's ``x`` and ``y`` bytes (CIFAR-10's 600 MB take about a second); a split that is the same
    object as an earlier one (the audit set outside the null test) is hashed once."""
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


# ------------------------------------------------------------------------------------------------ run context
class RunCache:
    """The cache bound to one run's config and data: computes its keys and stores/loads its models and signals."""

    def __init__(self, store: Cache, recipe: dict, fingerprint: str, signals: bool = True) -> None:
        self.store = store
        self.recipe = recipe
        self.fingerprint = fingerprint
        self.cache_signals = bool(signals)
        self.recipe_digest = digest(recipe)

    # ---------------------------------------------------------------------------------------------- models
    def model_key(self, k: int, seed: int, mask: np.ndarray) -> str:
        """Key of model k: recipe, data, version, and the model's own index, seed and mask bytes."""
        return digest(
            {
                "format": FORMAT,
                "version": __version__,
                "code": code_digest(),
                "recipe": self.recipe_digest,
                "data": self.fingerprint,
                "k": int(k),
                "seed": int(seed),
                "mask": array_digest(np.asarray(mask, dtype=bool)),
            }
        )

    def lock(self, key: str, blocking: bool = False):
        """Context manager: the advisory lock on building model ``key`` (:meth:`mia_bench.cache.Cache.lock`)."""
        return self.store.lock("models", key, blocking)

    def describe(self, what: str) -> str:
        """A line for ``python -m mia_bench.cache list``: what the entry is and the recipe it came from."""
        r = self.recipe
        dataset = (r.get("dataset") or {}).get("name", "?")
        model = (r.get("model") or {}).get("name", "?")
        defense = (r.get("defense") or {}).get("name", "?")
        epochs = (r.get("train") or {}).get("epochs", "?")
        return f"{what}: {dataset}/{model}/{defense} seed={r.get('seed')} epochs={epochs}"

    def load_model(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], dict] | None:
        """``(state_dict, artifacts, meta)`` of a cached model (tensors on the CPU), or None on a miss."""
        entry = self.store.get("models", key)
        if entry is None:
            return None
        try:
            state = torch.load(entry.file("model.pt"), map_location="cpu", weights_only=True)
            with np.load(entry.file("artifacts.npz"), allow_pickle=False) as f:
                artifacts = {name: f[name] for name in f.files}
        except Exception as err:  # noqa: BLE001 - any unreadable entry is rebuilt, never fatal
            self.store.invalidate("models", key, f"unreadable ({type(err).__name__}: {err})")
            return None
        return state, artifacts, entry.meta

    def save_model(
        self, key: str, k: int, state_dict: dict[str, torch.Tensor], artifacts: dict[str, np.ndarray], meta: dict
    ) -> bool:
        state = {name: t.detach().cpu() for name, t in state_dict.items()}
        arrays = {name: np.asarray(a) for name, a in (artifacts or {}).items()}
        return self.store.put(
            "models",
            key,
            {"model.pt": lambda f: torch.save(state, f), "artifacts.npz": lambda f: np.savez(f, **arrays)},
            self.describe(f"model {k}"),
            {
                "index": int(k),
                "recipe": self.recipe,
                "torch": torch.__version__,
                "lightning": lightning.__version__,
                **meta,
            },
        )

    # --------------------------------------------------------------------------------------------- signals
    def signals_key(
        self, model_keys: Iterable[str], audit: ArrayData, audit_masks: np.ndarray, queries: list, dtype: np.dtype
    ) -> str:
        """Key of the signals and utility of a set of models: the models' keys in order, the scored records
        (bytes), their ground-truth masks, the query augmentations and the stored dtype."""
        return digest(
            {
                "format": FORMAT,
                "version": __version__,
                "models": list(model_keys),
                "audit": data_fingerprint(audit=audit),
                "audit_masks": array_digest(np.asarray(audit_masks, dtype=bool)),
                "queries": [list(map(int, q)) for q in queries],
                "dtype": np.dtype(dtype).str,
            }
        )

    def load_signals(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of a cached signals entry (logits, labels, masks, test_acc, train_acc), or None."""
        if not self.cache_signals:
            return None
        entry = self.store.get("signals", key)
        if entry is None:
            return None
        try:
            with np.load(entry.file("signals.npz"), allow_pickle=False) as f:
                return {name: f[name] for name in f.files}
        except Exception as err:  # noqa: BLE001
            self.store.invalidate("signals", key, f"unreadable ({type(err).__name__}: {err})")
            return None

    def save_signals(self, key: str, arrays: dict[str, np.ndarray]) -> bool:
        if not self.cache_signals:
            return False
        return self.store.put(
            "signals",
            key,
            {"signals.npz": lambda f: np.savez(f, **arrays)},
            self.describe(f"signals {list(arrays['logits'].shape)}"),
            {"shape": list(arrays["logits"].shape), "recipe": self.recipe},
        )


def open_cache(cfg: DictConfig, **splits: ArrayData | None) -> RunCache | None:
    """The run's cache (``cache.enabled``, ``cache.dir``, ``cache.signals``), or None when it is off.

    ``splits``: the data the run trains and scores on (train pool, audit, test, public), fingerprinted once."""
    from mia_bench.training.train import describe_recipe  # train.py imports this module

    node = cfg.get("cache") or {}
    if not node.get("enabled", False):
        return None
    directory = node.get("dir")
    if not directory:
        raise ValueError(f"cache.dir={directory!r}: expected a folder path (or cache.enabled=false)")
    return RunCache(Cache(directory), describe_recipe(cfg), data_fingerprint(**splits), node.get("signals", True))


__all__ = ["RunCache", "array_digest", "data_fingerprint", "open_cache"]

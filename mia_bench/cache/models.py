"""The cache bound to one run: model and signals entries under keys of that run's recipe and data.

Training K models dominates a cell's cost, and a sweep over attacks (or a rerun after an interruption) must not
retrain them. Masks are prefix-stable (model k has the same mask for any K > k), so asking for more models trains
only the new ones. A signals entry is keyed by its models' keys, the scored records, their masks, the query
augmentations and the dtype: a run that changes only the attack neither trains nor queries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import lightning
import numpy as np
import torch
from omegaconf import DictConfig

from mia_bench import __version__
from mia_bench.cache.keys import array_digest, code_digest, data_fingerprint, digest
from mia_bench.cache.store import FORMAT, EntryStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelCache:
    """Stores and loads the models and signals of one run (``recipe``: :func:`~mia_bench.cache.keys.describe_recipe`;
    ``fingerprint``: :func:`~mia_bench.cache.keys.data_fingerprint` of its splits)."""

    def __init__(self, store: EntryStore, recipe: dict, fingerprint: str, signals: bool = True) -> None:
        self.store = store
        self.recipe = recipe
        self.fingerprint = fingerprint
        self.cache_signals = bool(signals)
        self.recipe_digest = digest(recipe)
        self.code = code_digest(recipe)  # the code these models use: ~50 ms first in a process, ~1 ms after
        self.keys: dict[int, str] = {}  # model index -> key, for the models this run asked for

    # ---------------------------------------------------------------------------------------------- models
    def model_key(self, k: int, seed: int, mask: np.ndarray) -> str:
        """Key of model k: recipe, data, the code its recipe uses, version, and the model's own index, seed and
        mask bytes."""
        self.keys[int(k)] = key = digest(
            {
                "format": FORMAT,
                "version": __version__,
                "code": self.code,
                "recipe": self.recipe_digest,
                "data": self.fingerprint,
                "k": int(k),
                "seed": int(seed),
                "mask": array_digest(np.asarray(mask, dtype=bool)),
            }
        )
        return key

    def obtain_all(self, keys: dict[int, str], obtain: Callable[[int], T]) -> dict[int, T]:
        """``obtain(k)`` (load model k or train and store it) for every k, each under the lock of its key.

        Parallel jobs sharing the cache (a multirun over attacks) split the work: a model another job is building
        is skipped and obtained at the end, waiting for that job if it is still at it (by then it is usually
        stored, and ``obtain`` loads it)."""
        done: dict[int, T] = {}
        deferred = []
        for k, key in keys.items():
            with self.store.lock("models", key, blocking=False) as mine:
                if mine:
                    done[k] = obtain(k)
                else:
                    deferred.append(k)
        for k in deferred:
            with self.store.lock("models", keys[k], blocking=True):
                done[k] = obtain(k)
        return {k: done[k] for k in keys}

    def stored_models(self) -> list[int]:
        """The models this run asked for that are complete entries in the cache now (what a rerun reuses)."""
        return sorted(k for k, key in self.keys.items() if self.store.has("models", key))

    @contextmanager
    def claim(self, keys: dict[int, str]) -> Iterator[set[int]]:
        """Hold the build locks of the models in ``keys`` that no other job is building, for the block; yields
        their indices (the others are being built elsewhere: obtain them later with :meth:`obtain_all`)."""
        with ExitStack() as stack:
            mine = {k for k, key in keys.items() if stack.enter_context(self.store.lock("models", key, False))}
            yield mine

    def describe(self, what: str) -> str:
        """A line for ``python -m mia_bench.cache list``: what the entry is and the recipe it came from."""
        r = self.recipe
        names = [(r.get(part) or {}).get("name", "?") for part in ("dataset", "model", "defense")]
        epochs = (r.get("train") or {}).get("epochs", "?")
        return f"{what}: {'/'.join(map(str, names))} seed={r.get('seed')} epochs={epochs}"

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
            {"index": int(k), "recipe": self.recipe, "torch": torch.__version__, "lightning": lightning.__version__,
             **meta},
        )

    def invalidate_model(self, key: str, reason: str) -> None:
        """Remove a stored model that cannot be used (e.g. its structure no longer fits the code)."""
        self.store.invalidate("models", key, reason)

    # --------------------------------------------------------------------------------------------- signals
    def signals_key(
        self, model_keys: Iterable[str], audit: Any, audit_masks: np.ndarray, queries: Sequence, dtype: np.dtype
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


def open_cache(node: DictConfig | dict | None, recipe: dict, **splits: Any) -> ModelCache | None:
    """The run's cache from its ``cache`` config node (``enabled``, ``dir``, ``signals``), or None when it is off.

    ``splits``: the data the run trains and scores on (train pool, audit, test, public), fingerprinted once."""
    node = node or {}
    if not node.get("enabled", False):
        return None
    directory = node.get("dir")
    if not directory:
        raise ValueError(f"cache.dir={directory!r}: expected a folder path (or cache.enabled=false)")
    from mia_bench.paths import anchored  # a relative cache.dir=... override stays where the command started

    return ModelCache(EntryStore(anchored(directory)), recipe, data_fingerprint(**splits), node.get("signals", True))

"""The model/signals cache: everything on disk about trained models and their signals.

* :mod:`~mia_bench.cache.keys`: what a key covers (recipe, data, code, version; per model: index, seed, mask);
* :mod:`~mia_bench.cache.store`: entries on disk (layout, atomic writes, integrity, locks, listing);
* :mod:`~mia_bench.cache.models`: the cache bound to one run, which the trainer asks for a model and gives one back
  (imports torch; the other two do not, so ``python -m mia_bench.cache list|prune`` starts at once).
"""

from mia_bench.cache.keys import array_digest, data_fingerprint, describe_recipe, digest
from mia_bench.cache.store import Entry, EntryInfo, EntryStore, default_dir

__all__ = [
    "Entry", "EntryInfo", "EntryStore", "array_digest", "data_fingerprint", "default_dir", "describe_recipe",
    "digest",
]

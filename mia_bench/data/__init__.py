"""Datasets: the registry of loaders and the array types they return.

Importing this package imports every loader module (``offline``, ``vision``, ``archives``, ``user``), so all
datasets are registered.
"""

from mia_bench.data import archives, offline, user, vision  # noqa: F401  (registers the loaders)
from mia_bench.data.base import ArrayData, DatasetUnavailableError, RawDataset
from mia_bench.data.registry import DATASETS, list_datasets, load_dataset, register_dataset

__all__ = [
    "ArrayData",
    "DATASETS",
    "DatasetUnavailableError",
    "RawDataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

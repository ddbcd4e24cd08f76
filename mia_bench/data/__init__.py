"""Datasets: the registry of loaders and the array types they return."""

from mia_bench.data.base import ArrayData, DatasetUnavailableError, RawDataset
from mia_bench.data.datasets import DATASETS, list_datasets, load_dataset, register_dataset

__all__ = [
    "ArrayData",
    "DATASETS",
    "DatasetUnavailableError",
    "RawDataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

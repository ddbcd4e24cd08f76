"""The dataset registry: ``DATASETS`` maps names to loader functions, which register themselves with
``@register_dataset("name")`` in the module for their source and return a
:class:`~mia_bench.data.base.RawDataset` (float32 inputs normalised with FIXED per-dataset constants, int64
labels in ``0..C-1``, the official test split or ``None``); :func:`load_dataset` builds one by name for the
Python API (``load_dataset("cifar10", root="data")``), while Hydra configs name the loader function itself.
"""

from __future__ import annotations

from collections.abc import Callable

from mia_bench.data.base import RawDataset
from mia_bench.registry import Registry

__all__ = ["DATASETS", "register_dataset", "list_datasets", "load_dataset"]

DATASETS: Registry[Callable[..., RawDataset]] = Registry("dataset")
register_dataset = DATASETS.register


def list_datasets() -> list[str]:
    """Sorted names of all registered datasets."""
    return DATASETS.names()


def load_dataset(name: str, **kwargs) -> RawDataset:
    """Build the registered dataset ``name`` with the loader's keyword arguments.

    Unknown names raise ``ValueError`` listing the registered ones; arguments the loader does not take
    raise ``TypeError`` listing the ones it does. OmegaConf containers are converted to plain Python
    lists/dicts first.
    """
    fn = DATASETS.get(name)
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    DATASETS.check_kwargs(name, kwargs)
    raw = fn(**kwargs)
    raw.name = name
    return raw


def _plain(value):
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value

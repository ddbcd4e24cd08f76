"""Which experiment logger a config selects (``logger=csv | tensorboard | wandb | none``) and one per model."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig


def logger_kind(node: DictConfig | None) -> str | None:
    """``wandb``, ``tensorboard``, ``csv``, the class name in lower case for another logger, or None for none."""
    if not node:
        return None
    name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    return {"WandbLogger": "wandb", "TensorBoardLogger": "tensorboard", "CSVLogger": "csv"}.get(name, name.lower())


def model_logger(node: DictConfig | None, k: int):
    """The logger of model k (False for none): CSV and TensorBoard write a version folder per model; W&B logs every
    model into the cell's single run under a ``model<k>/`` prefix."""
    kind = logger_kind(node)
    if kind is None:
        return False
    if kind == "wandb":
        return instantiate(node, prefix=f"model{k}")
    return instantiate(node, version=f"model_{k}")

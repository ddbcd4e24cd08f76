"""Which experiment logger a config selects (``logger=csv | tensorboard | wandb | none``) and one per model."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def logger_kind(node: DictConfig | None) -> str | None:
    """``wandb``, ``tensorboard``, ``csv``, the class name in lower case for another logger, or None for none."""
    if not node:
        return None
    name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    return {"WandbLogger": "wandb", "TensorBoardLogger": "tensorboard", "CSVLogger": "csv"}.get(name, name.lower())


def flat_hparams(nodes: Mapping, prefix: str = "") -> dict:
    """Config nodes as one flat ``{"train/module/optimizer/lr": 0.1, ...}`` dict of numbers, strings and booleans
    (lists and None as text), the form every logger's ``log_hyperparams`` accepts."""
    out: dict = {}
    for key, value in nodes.items():
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}/"))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def model_logger(node: DictConfig | None, k: int, hparams: Mapping | None = None):
    """The logger of model k (False for none): CSV and TensorBoard write a version folder per model (with the
    recipe's hyper-parameters: hparams.yaml, TensorBoard's HPARAMS tab); W&B logs every model into the cell's single
    run under a ``model<k>/`` prefix (the run's config holds the whole resolved config already)."""
    kind = logger_kind(node)
    if kind is None:
        return False
    if kind == "wandb":
        return instantiate(node, prefix=f"model{k}")
    logger = instantiate(node, version=f"model_{k}")
    if hparams:
        logger.log_hyperparams({**hparams, "model_index": k})
    return logger

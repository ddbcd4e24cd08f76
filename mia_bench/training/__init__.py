"""Training the K models of a cell: the classifier LightningModule, tensor batching, and the loop over models."""

from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule
from mia_bench.training.train import TrainedModel, train_models

__all__ = ["ClassifierModule", "TensorBatchLoader", "TrainedModel", "train_models"]

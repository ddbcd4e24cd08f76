"""Training the K models of a cell: the classifier LightningModule, tensor batching, the loop over models, and the
query path that reads a trained model's outputs."""

from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule
from mia_bench.training.train import Recipe, TrainedModel, train_models

__all__ = ["ClassifierModule", "Recipe", "TensorBatchLoader", "TrainedModel", "train_models"]

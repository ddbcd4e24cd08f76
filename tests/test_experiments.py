"""The seed papers' experiment configs run end to end.

Their real targets (CIFAR-10, ResNet-18/VGG-16 on a GPU for 100+ epochs) cannot run here, so each experiment is
run with only the data swapped for CIFAR-shaped synthetic records, one short epoch, two models and the CPU: the
model, defense, training recipe and their hyper-parameters are the experiment's own, so a broken key, a
defense/model mismatch (e.g. DP-SGD and BatchNorm) or a shape error would fail here rather than on a GPU.
"""

from __future__ import annotations

import json

import pytest

from mia_bench.pipeline import run

CIFAR_SHAPED = [
    "dataset=synthetic",
    "dataset.loader.input_shape=[3,32,32]",
    "dataset.loader.num_records=128",
    "dataset.public_size=40",
    "dataset.test_size=16",
    "num_models=2",
    "train.epochs=2",
    "train.batch_size=32",
    "evaluation.targets=1",
    "evaluation.n_bootstrap=0",
    "attack=[loss,confidence]",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "logger=none",
]

# experiment -> (its model, its defense, extra shortening: Mixup Inference's 30 ResNet-18 passes per query
# took ten minutes on 2 cores)
PAPERS = {
    "adamixup_cifar10": ("resnet18", "adamixup", []),
    "mixup_inference_cifar10": ("resnet18", "mixup_inference", ["defense.predict.n_samples=2"]),
    "mia_pruning_cifar10": ("vgg16", "mia_pruning", []),
    "mid_cifar10": ("mid_cnn", "mid", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_experiment_runs_end_to_end_on_cifar_shaped_data(compose_cfg, name, tmp_path):
    model, defense, shorter = PAPERS[name]
    paper = compose_cfg([f"experiment={name}"])
    assert paper.dataset.name == "cifar10"
    cfg = compose_cfg([f"experiment={name}", *CIFAR_SHAPED, *shorter])
    # The experiment keeps its model, defense and recipe; only the data and the length changed.
    assert cfg.model.name == paper.model.name == model
    assert cfg.defense.name == paper.defense.name == defense
    assert cfg.train.module._target_ == paper.train.module._target_
    assert cfg.train.module.optimizer == paper.train.module.optimizer
    records = run(cfg, {"experiment": name})
    assert {r["attack"] for r in records} == {"loss", "confidence"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved[0]["defense"] == defense and 0.0 <= saved[0]["test_acc_mean"] <= 1.0

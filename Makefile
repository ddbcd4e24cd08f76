# Common tasks. Set-up once with `pip install -e ".[dev]"` (see README).
PY ?= python

.PHONY: install run test test-fast lint bench gpu-check privacy-table privacy-table-mnist privacy-table-mnist-full clean

install:            ## install the package and the test tools (editable)
	$(PY) -m pip install -e ".[dev]"

run:                ## the offline default cell (digits, MLP, no defense, every attack)
	$(PY) -m mia_bench

test:               ## the whole test suite (about 4 min on 2 CPU cores)
	$(PY) -m pytest

test-fast:          ## the fast tier: every module, no multi-cell runs or subprocesses (< 2 min on 2 cores)
	$(PY) -m pytest -m "not slow"

lint:               ## ruff
	$(PY) -m ruff check mia_bench tests benchmarks

bench:              ## training speed (plain loop vs Lightning vs ensemble) and interval speed (batched vs scipy), as ratios
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/interval_speed.py

# a local CIFAR-10 copy (folder or tarball) adds the real cell; none: the timings on generated data alone
CIFAR10 ?=
GPU_BUDGET ?= 450
gpu-check:          ## models/min and GPU memory (one at a time vs ensemble), launcher, real CIFAR-10 K=64 cell (< 8 min)
	$(PY) benchmarks/gpu_check.py --budget $(GPU_BUDGET) $(if $(CIFAR10),--cifar10 $(CIFAR10)) --out gpu_check.json

DEFENSES = none,dropout,label_smoothing,weight_decay,early_stopping,mixup,adamixup,mixup_inference,mia_pruning,advreg,mia_pruning_advreg,dpsgd,mid,sam
TABLE_ATTACKS = attack=[loss,lira_online,rmia]
MNIST ?= ../shared/data/MNIST/raw

privacy-table:      ## every defense on the offline default, then the privacy-utility table (~10 min on 2 cores)
	$(PY) -m mia_bench -m defense=$(DEFENSES) '$(TABLE_ATTACKS)' hydra.sweep.dir=multirun_outputs/privacy_utility_digits
	$(PY) -m mia_bench.report multirun_outputs/privacy_utility_digits --order $(DEFENSES)

privacy-table-mnist: ## every defense on the MNIST test split (IDX files in $(MNIST)); 4000-record population, K=16, no crops (~30 min)
	$(PY) -m mia_bench -m defense=$(DEFENSES) '$(TABLE_ATTACKS)' dataset=idx dataset.loader.path=$(MNIST) \
		dataset.population_size=4000 num_models=16 train.epochs=30 dataset.train_augment.crop_padding=0 \
		hydra.sweep.dir=multirun_outputs/privacy_utility_mnist
	$(PY) -m mia_bench.report multirun_outputs/privacy_utility_mnist --order $(DEFENSES)

# dpsgd first: the longest jobs start first so that the parallel workers finish close together
MNIST_FULL_DEFENSES = mixup_inference,dpsgd,none,sam,mia_pruning,adamixup,mid
privacy-table-mnist-full: ## none, the seed defenses and DP-SGD on the full MNIST (IDX files in $(MNIST)); 20000-record population, LeNet, K=16 (~2 h on 2 cores)
	$(PY) -m mia_bench -m hydra/launcher=local defense=$(MNIST_FULL_DEFENSES) '$(TABLE_ATTACKS)' dataset=idx \
		dataset.loader.path=$(MNIST) dataset.population_size=20000 model=lenet num_models=16 train.epochs=30 \
		dataset.train_augment.crop_padding=0 hydra.sweep.dir=multirun_outputs/privacy_utility_mnist_full
	$(PY) -m mia_bench.report multirun_outputs/privacy_utility_mnist_full --order none,adamixup,mixup_inference,mia_pruning,mid,sam,dpsgd

clean:              ## remove run outputs (keeps datasets)
	rm -rf outputs multirun_outputs/*/ .pytest_cache

SWEEP_DEMO = multirun_outputs/sweep_demo
.PHONY: sweep-demo
sweep-demo:         ## 4 defenses x every attack on digits (K=8), jobs in parallel (one per core), then the report (~6 min)
	$(PY) -m mia_bench -m hydra/launcher=local defense=none,dropout,mixup_inference,advreg attack=all num_models=8 \
		trainer.enable_progress_bar=false hydra.sweep.dir=$(SWEEP_DEMO)
	$(PY) -m mia_bench.report $(SWEEP_DEMO) --order none,dropout,mixup_inference,advreg

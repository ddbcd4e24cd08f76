# Common tasks. Set-up once with `pip install -e ".[dev]"` (see README).
PY ?= python

.PHONY: install run test lint bench clean

install:            ## install the package and the test tools (editable)
	$(PY) -m pip install -e ".[dev]"

run:                ## the offline default cell (digits, MLP, no defense, every attack)
	$(PY) -m mia_bench

test:               ## the test suite (< 10 min on 2 CPU cores)
	$(PY) -m pytest

lint:               ## ruff
	$(PY) -m ruff check mia_bench tests benchmarks

bench:              ## training speed of the Lightning path against a plain PyTorch loop, as ratios
	$(PY) benchmarks/bench_training.py

clean:              ## remove run outputs (keeps datasets)
	rm -rf outputs multirun_outputs/*/ .pytest_cache

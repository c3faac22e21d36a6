# `make train` and `make test` set everything up on a fresh machine: a virtual environment,
# the pinned requirements, and this package in editable mode. Re-running skips what is done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup train evaluate predict export bench dashboard check-data browse-data test test-fast clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

## Train the default configuration (synthetic data, UNet on resnet18, CPU is fine). Extra overrides: ARGS="model=fcn"
train: setup
	$(PY) train.py $(ARGS)

## Score a checkpoint: make evaluate ARGS="ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"
evaluate: setup
	$(PY) evaluate.py $(ARGS)

## Masks for images: make predict ARGS="ckpt_path=... input=path/to/images output=path/to/masks"
predict: setup
	$(PY) predict.py $(ARGS)

## ONNX and torch.export files, checked against PyTorch: make export ARGS="ckpt_path=..."
export: setup
	$(PY) export.py $(ARGS)

## Throughput and memory (Lightning vs a bare loop, inference): make bench ARGS="model=fcn batch_sizes=[8,16]"
bench: setup
	$(PY) -m segkit.bench $(ARGS)

## A local dashboard of every run under logs/ (runs trained with logger=tensorboard): http://localhost:6006
dashboard: setup
	$(VENV)/bin/tensorboard --logdir logs --port 6006

## Scan a dataset and report problems: make check-data ARGS="data=membrane data.root=../shared/datasets/isbi2012-membrane"
check-data: setup
	$(PY) -m segkit.data.check $(ARGS)

## A PNG of augmented samples with their masks: make browse-data ARGS="data=membrane data.root=..."
browse-data: setup
	$(PY) -m segkit.data.browse $(ARGS)

## The whole test suite, offline (W&B offline, no downloads).
test: setup
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

## Everything but the end-to-end runs of the entry scripts.
test-fast: setup
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) logs .pytest_cache src/*.egg-info

# `make train` and `make test` set everything up on a fresh machine: a virtual environment with the exact versions
# of constraints.txt, and this package in editable mode with all its optional groups. Re-running skips what is done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The optional groups of pyproject.toml that `make setup` installs (export, sweeps, tensorboard, mlflow, dev: all
# but mlflow-ui, MLflow's UI, which `make mlflow` installs on first use).
EXTRAS ?= all
# A throw-away environment for `make check-install`.
CHECK_VENV ?= .venv-check
ARGS ?=
# `make mlflow`: the store logger=mlflow writes by default, and the port of the UI.
MLFLOW_STORE ?= logs/mlflow/mlflow.db
MLFLOW_PORT ?= 5000

.PHONY: setup train evaluate predict export bench bench-large bench-gpu dashboard mlflow check-data browse-data summarize-sweep test test-fast \
	lint check-install constraints clean

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip check
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
	$(PY) bench.py $(ARGS)

## predict.py on a generated large image, windowed and in memory: make bench-large ARGS="--size 20000" (docs/large-images.md)
bench-large: setup
	$(PY) bench_large.py $(ARGS)

## The first-GPU suite, under 10 minutes: 3 models x fp32/bf16/channels_last/compile at 512x512, FLOPs and MFU, a real
## run's loading share -> gpu_bench.json + gpu_bench.md (docs/performance.md). Without CUDA it says so and exits 0.
bench-gpu: setup
	$(PY) bench.py target=gpu $(ARGS)

## TensorBoard over every run under logs/, opening on their scores and losses (docs/dashboard.md): http://localhost:6006
dashboard: setup
	$(PY) dashboard.py --logdir logs --port 6006 $(ARGS)

## MLflow's UI over the runs logged with logger=mlflow (docs/dashboard.md): a sortable table of runs, params and
## scores. The first call installs the UI (the optional group mlflow-ui, pinned by constraints.txt). No telemetry.
mlflow: setup
	$(PY) -c "import importlib.metadata as m; m.version('mlflow')" 2>/dev/null || \
		$(PY) -m pip install -c constraints.txt -e ".[mlflow-ui]"
	@echo "The runs table: http://localhost:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning"
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(MLFLOW_STORE)) \
		--port $(MLFLOW_PORT) --workers 1 $(ARGS)

## Scan a dataset and report problems: make check-data ARGS="data=membrane data.root=../shared/datasets/isbi2012-membrane"
check-data: setup
	$(PY) check_data.py $(ARGS)

## A PNG of augmented samples with their masks: make browse-data ARGS="data=membrane data.root=..."
browse-data: setup
	$(PY) browse_data.py $(ARGS)

## Compare the jobs of a sweep: make summarize-sweep ARGS="logs/train/multiruns/<stamp>"
summarize-sweep: setup
	$(PY) summarize_sweep.py $(ARGS)

# pytest-xdist: a worker per core (each on one thread), a test file's tests in one worker (its fixtures built once),
# the files in the order tests/conftest.py gives them (those that train most first), not xdist's (most tests first).
# TEST_WORKERS=0 runs in this process (what a debugger wants).
TEST_WORKERS ?= auto
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

## The whole test suite, offline (W&B offline, no downloads): about 5 minutes on 2 cores (docs/testing.md).
test: setup
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(XDIST) $(ARGS)

## Everything but the tests that run a training (marked slow).
test-fast: setup
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(XDIST) -m "not slow" $(ARGS)

## Lint and format check (ruff, configured in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## A fresh environment from the package's own metadata plus constraints.txt: the core install must import every
## module and entry script, then each optional group its own modules; `pip check` after each step.
check-install:
	rm -rf $(CHECK_VENV)
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install -q -c constraints.txt -e .
	$(CHECK_VENV)/bin/python -m pip check
	$(CHECK_VENV)/bin/python tests/helpers/import_all.py
	$(CHECK_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[export,sweeps,tensorboard,mlflow]"
	$(CHECK_VENV)/bin/python -m pip check
	$(CHECK_VENV)/bin/python tests/helpers/import_all.py --extras export,sweeps,tensorboard,mlflow
	rm -rf $(CHECK_VENV)

## Re-lock: after changing pyproject.toml's dependencies, install them into .venv, then write its exact set (MLflow's
## UI included, so that `make mlflow` installs a pinned set too).
constraints: setup
	$(PY) -m pip install -e ".[$(EXTRAS),mlflow-ui]"
	$(PY) -m pip check
	{ echo "# The exact, fully resolved environment every machine installs (make setup, make check-install)."; \
	  echo "# Generated by \`make constraints\` from .venv; edit pyproject.toml, never this file."; \
	  $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(CHECK_VENV) logs .pytest_cache src/*.egg-info

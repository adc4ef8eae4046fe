# Quick start:  make run   (embedded default config, results/)   make test   (whole suite)
# Local runs use profiles/local; a cluster uses profiles/slurm (README, "Cluster use").
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CORES  ?= all
GPUS   ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
# training jobs sharing each GPU (small CIFAR nets leave most of an H100 idle): make run JOBS_PER_GPU=4
# runs up to GPUS x 4 at once; unset: KDPIPE_JOBS_PER_GPU from the environment, else 1 (README, "Cluster use")
ifdef JOBS_PER_GPU
export KDPIPE_JOBS_PER_GPU := $(JOBS_PER_GPU)
endif
STAMP   = $(VENV)/.installed
# tests run in parallel worker processes (a worker that takes tests of a module builds its fixtures)
TEST_WORKERS ?= 2

.PHONY: run test lint dry-run plan clean-results install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --resources gpu=$(or $(GPUS),0)
	$(BIN)/snakemake --report results/report.html

dry-run: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) -n

# jobs by rule with estimated GPU-hours:  make plan CONFIG=config/paper.yaml [DEVICE=cpu]
CONFIG ?= config/config.yaml
DEVICE ?= h200
plan: $(STAMP)
	$(BIN)/python -m kdpipe plan --configfile $(CONFIG) --device $(DEVICE)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal tests

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check --select F,E9,E501 kdpipe scripts bench tests
	$(BIN)/ruff format --check kdpipe scripts bench tests

clean-results:
	rm -rf results .snakemake

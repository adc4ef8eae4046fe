# Quick start:  make run   (embedded default config, results/)   make test   (whole suite)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CORES  ?= all
STAMP   = $(VENV)/.installed

.PHONY: run test dry-run clean-results install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) results/summary.csv

dry-run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) -n results/summary.csv

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean-results:
	rm -rf results .snakemake

# Each target does its own set-up on a fresh machine (only Python 3.11+, pip and git needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test run bench campaign clean

$(BIN)/build-aug: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/build-aug

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

run: setup
	$(BIN)/build-aug --copies 5
	$(BIN)/train --store data/aug.zarr

campaign: setup
	$(BIN)/python tests/campaign.py --json campaign.json

bench: setup
	$(BIN)/python bench/bench_codecs.py --store data/aug.zarr

clean:
	rm -rf $(VENV) preview
